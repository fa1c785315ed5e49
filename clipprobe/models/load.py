"""Load a CLIP from any source as ``(model, preprocess, tokenizer)`` (one contract, as in CLIP_benchmark).

Sources, all built through open_clip:

- an open_clip architecture and a pretrained tag (``ViT-B-32``, ``openai``), or an ``hf-hub:`` name;
- clipprobe's own architectures (``clipprobe-tiny``, ``clipprobe-small``), randomly initialised without a tag;
- a local state dict (``.pt``/``.pth``/``.bin``/``.safetensors``), including clipprobe's training export
  ``{"state_dict", "clipprobe": {"arch", "step", "samples_seen"}}`` (its architecture, step and samples seen
  are read from it);
- a Lightning ``.ckpt`` of clipprobe's ``CLIPModule`` (state dict keys ``model.*``, ``hyper_parameters.model_name``
  and ``checkpoint["clipprobe"]``);
- a glob of such files (a training progression), see :func:`expand_checkpoints`.

Everything that cannot be had (unknown name or tag, no network, unreadable file) is a one-line
:class:`~clipprobe.errors.UserError`.

Checkpoint files may come from anywhere, and unpickling runs whatever code a pickle names, so ``.pt``/``.ckpt``
files are read with ``torch.load(weights_only=True)``: tensors and plain containers only. clipprobe's own exports
and Lightning checkpoints hold nothing else. A file that holds other Python objects is refused with a one-line
error naming ``--trust_pickle``; full unpickling happens only when the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import logging
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipprobe.errors import UserError

log = logging.getLogger(__name__)

LIST_MODELS_HINT = (
    "list valid names with 'clipprobe models' (or python -c \"import open_clip; print(open_clip.list_models())\")"
)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
CHECKPOINT_SUFFIXES = (*STATE_DICT_SUFFIXES, ".ckpt")


@dataclass
class LoadedModel:
    """A model ready for probing. ``pretrained`` is the tag or the checkpoint path (None = random init);
    ``step`` and ``samples_seen`` are known for clipprobe checkpoints only."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str | None = None
    step: int | None = None
    samples_seen: int | None = None

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint file the weights came from, or None for a tag or random init."""
        return self.pretrained if self.pretrained and is_checkpoint_path(self.pretrained) else None


@dataclass
class CheckpointInfo:
    """What a checkpoint file says about itself; ``state_dict`` is filled for Lightning files only."""

    path: Path
    arch: str | None = None
    step: int | None = None
    samples_seen: int | None = None
    state_dict: dict[str, torch.Tensor] | None = None


def is_checkpoint_path(pretrained: str) -> bool:
    """True if ``pretrained`` names a file (existing, or with a checkpoint suffix) rather than a tag."""
    return os.path.exists(pretrained) or pretrained.endswith(CHECKPOINT_SUFFIXES) or os.sep in pretrained


def load_model(name: str | None, pretrained: str | None = None, device: str | torch.device = "cpu",
               trust_pickle: bool = False) -> LoadedModel:  # fmt: skip
    """Build a model, its eval preprocess and its tokenizer from any source (see the module docstring).

    Args:
        name: open_clip architecture (``ViT-B-32``, ``clipprobe-tiny``, ``hf-hub:org/repo``). May be None
            when ``pretrained`` is a clipprobe checkpoint that records its architecture.
        pretrained: a pretrained tag, a checkpoint path, or None for random initialisation.
        device: where the model goes.
        trust_pickle: Unpickle checkpoint files fully (runs code stored in the file): only for files you trust,
            e.g. old checkpoints that hold custom Python objects.

    Raises:
        UserError: unknown architecture or tag, weights that cannot be downloaded, unreadable checkpoint, or a
            checkpoint that holds Python objects beyond weights (without ``trust_pickle``).
    """
    from clipprobe.models import register_configs

    register_configs()
    if pretrained and is_checkpoint_path(pretrained):
        loaded = _load_file(name, Path(pretrained).expanduser(), device, trust_pickle)
    else:
        loaded = _load_named(check_source(name, pretrained), pretrained or None, device)
    loaded.model.eval()
    return loaded


def check_source(name: str | None, pretrained: str | None = None, trust_pickle: bool = False) -> str:
    """The architecture that ``load_model(name, pretrained)`` will build, checked without building it:
    the name is known, the tag is one of its tags, the file exists and is readable.

    Args:
        name: as for :func:`load_model`.
        pretrained: as for :func:`load_model`.
        trust_pickle: as for :func:`load_model` (unpickle the checkpoint file fully: runs code stored in it).

    Raises:
        UserError: as :func:`load_model` would, before any weights are downloaded.
    """
    import open_clip

    from clipprobe.models import register_configs

    register_configs()
    if pretrained and is_checkpoint_path(pretrained):
        return _pick_arch(name, read_checkpoint(pretrained, trust_pickle))
    if not name:
        raise UserError(f"no model architecture given; pass --model NAME ({LIST_MODELS_HINT})")
    arch = check_architecture(name)
    if pretrained and not name.startswith(open_clip.factory.HF_HUB_PREFIX):
        if not open_clip.get_pretrained_cfg(arch, pretrained):
            tags = open_clip.list_pretrained_tags_by_model(arch)
            known = ", ".join(tags[:6]) + (f", ... ({len(tags)} in all)" if len(tags) > 6 else "")
            known = known or "none (omit --pretrained for random initialisation)"
            raise UserError(
                f"unknown pretrained tag '{pretrained}' for {name}; known tags: {known} (all: 'clipprobe models "
                f"--pretrained --filter {arch}'); or pass a checkpoint file path"
            )
    return name if name.startswith(open_clip.factory.HF_HUB_PREFIX) else arch


# ---------------------------------------------------------------------------------------------
# open_clip names and tags


def _load_named(name: str, tag: str | None, device: str | torch.device) -> LoadedModel:
    import open_clip

    with _open_clip_errors(name, tag):
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag, device=device)
        tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model, preprocess, tokenizer, name, tag)


def check_architecture(name: str) -> str:
    """Return the open_clip config name for ``name`` (``/`` read as ``-``), or raise a UserError naming
    close matches and how to list all valid names."""
    import open_clip

    from clipprobe.models import register_configs

    register_configs()
    if name.startswith(open_clip.factory.HF_HUB_PREFIX):
        return name
    cleaned = name.replace("/", "-")
    known = open_clip.list_models()
    if cleaned not in known:
        close = difflib.get_close_matches(cleaned, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(f"unknown model architecture '{name}'; {hint}{LIST_MODELS_HINT}")
    return cleaned


_NETWORK_WORDS = ("connection", "network", "download", "hub", "resolve", "internet", "timed out", "offline")


@contextlib.contextmanager
def _open_clip_errors(name: str, tag: str | None) -> Iterator[None]:
    """Turn open_clip's failures to fetch weights or configs, or a missing package, into one-line
    UserErrors. open_clip also logs each failure at ERROR level; that would be a second, longer copy
    of the same line, so its logging is held at CRITICAL meanwhile."""
    what = f"{name}" + (f" ({tag})" if tag else "")
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    except ImportError as e:
        raise UserError(f"model {what} needs the missing package '{e.name or e}'; install it with pip") from None
    except (OSError, RuntimeError, ValueError) as e:
        reason = " ".join(str(e).split())
        if m := re.search(r"pip install ([\w.-]+)", reason):
            raise UserError(f"model {what} needs the package '{m.group(1)}'; pip install {m.group(1)}") from None
        if not any(w in reason.lower() for w in _NETWORK_WORDS):
            raise
        raise UserError(
            f"could not download weights for {what}: {_clip(reason)}; "
            "check the network, or download them elsewhere and pass the file with --pretrained PATH"
        ) from None
    finally:
        logging.disable(previous)


def _clip(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def _load_file(name: str | None, path: Path, device: str | torch.device, trust_pickle: bool) -> LoadedModel:
    import open_clip

    info = read_checkpoint(path, trust_pickle)  # refuses an untrusted pickle before open_clip reads the file
    arch = _pick_arch(name, info)
    if info.state_dict is not None:  # Lightning: weights already in memory, prefix stripped
        with _open_clip_errors(arch, None):
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained_text=False)
        with _mismatch_errors(path, arch):
            model.load_state_dict(info.state_dict, strict=True)
        model.to(device)
    else:  # a state dict file: open_clip's own loader (handles "module." prefixes, 3rd-party layouts)
        with _open_clip_errors(arch, None), _mismatch_errors(path, arch):
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=str(path), device=device, weights_only=not trust_pickle
            )
    tokenizer = open_clip.get_tokenizer(arch)
    return LoadedModel(model, preprocess, tokenizer, arch, str(path), info.step, info.samples_seen)


def _pick_arch(name: str | None, info: CheckpointInfo) -> str:
    if not name and not info.arch:
        raise UserError(f"checkpoint {info.path} does not record its architecture; pass it with --model ARCH")
    if name and info.arch and check_architecture(name) != check_architecture(info.arch):
        raise UserError(
            f"checkpoint {info.path} was trained as {info.arch} but --model says {name}; drop --model or fix it"
        )
    return check_architecture(name or info.arch or "")


@contextlib.contextmanager
def _mismatch_errors(path: Path, arch: str) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, AssertionError, KeyError, ValueError, IndexError) as e:  # open_clip's conversions assert
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {path} does not fit architecture {arch} ({_clip(first)}); pass the right --model"
        ) from None


def _torch_load(path: Path, trust_pickle: bool = False) -> Any:
    """torch.load on CPU, weights only (tensors and plain containers) unless ``trust_pickle``.

    Memory-mapped when the file is a zip archive (torch's format since 1.6), so reading metadata stays cheap;
    legacy files cannot be mapped.

    Raises:
        UserError: the file holds objects that safe loading refuses (the fix is ``--trust_pickle``), or it is
            truncated or not a torch checkpoint.
    """
    if trust_pickle:
        log.info("unpickling %s fully (trust_pickle): code stored in it runs", path)
    try:
        with warnings.catch_warnings():
            # A protocol-4 pickle makes the safe unpickler warn, then fail; the one-line error below says it all.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=zipfile.is_zipfile(path))
    except OSError:
        raise  # permissions, I/O: read_checkpoint says "unreadable" with the reason
    except Exception as e:
        # Safe loading runs nothing from the file, so any other failure is the file's: refused or damaged. A full
        # unpickle can also fail inside the file's own objects (a class whose module is not installed): those pass
        # on to read_checkpoint's "unreadable" with the reason.
        if trust_pickle and not isinstance(e, (EOFError, RuntimeError, ValueError, pickle.UnpicklingError)):
            raise
        raise _load_error(path, e, trust_pickle) from None


def _load_error(path: Path, error: Exception, trust_pickle: bool) -> UserError:
    """The one-line UserError for a failed torch.load: refused by safe loading, or a damaged file."""
    message = str(error)
    if not trust_pickle and isinstance(error, pickle.UnpicklingError) and (refused := _refusal(message)):
        return UserError(
            f"checkpoint {path} is refused by safe loading ({refused}): full unpickling could run code stored in "
            "it; pass --trust_pickle if you trust this file"
        )
    detail = message
    if "Weights only load failed" in message:  # torch wraps the unpickler's reason in paragraphs of advice
        m = re.search(r"WeightsUnpickler error:\s*(.+)|(Trying to load unsupported GLOBAL .+)", message)
        detail = (m.group(1) or m.group(2)) if m else ""
    detail = " ".join(detail.split()).split(". ")[0]
    if m := re.search(r"Unsupported operand (\d+)", detail):
        detail = f"invalid pickle opcode {m.group(1)}"
    elif path.stat().st_size == 0:
        detail = "the file is empty"
    elif isinstance(error, EOFError) and not detail:
        detail = "the file ends early"
    detail = detail or type(error).__name__
    return UserError(f"checkpoint {path} is truncated or not a torch checkpoint ({_clip(detail)}); copy it again")


def _refusal(message: str) -> str | None:
    """Why torch's weights-only unpickler refused a well-formed file, or None when the file looks damaged.

    torch raises the same UnpicklingError for both, so its message is read: a global it does not allow, an object
    of a class it does not allow, or a pickle opcode it does not implement (protocols above 2).
    """
    if m := re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", message):
        name = m.group(1)
        # A truncated legacy file can stop inside a global's name ("torch._utils._rebui"): a name missing from a
        # module that is already imported is damage, not an untrusted object. Nothing is imported to check it.
        module, _, attr = name.rpartition(".")
        if module in sys.modules and not hasattr(sys.modules[module], attr):
            return None
        return f"it holds the Python global {name}"
    if m := re.search(r"but got <class '([^']+)'>", message):
        return f"it holds an object of class {m.group(1)}"
    if m := re.search(r"Unsupported operand (\d+)", message):
        op = pickletools.code2op.get(chr(int(m.group(1))))
        return f"it uses pickle opcode {op.name}, from a protocol safe loading does not read" if op else None
    if "unrecognized function" in message or "must be imported to load" in message:
        return "it holds objects beyond tensors and plain containers"
    return None


def _info_from_torch(path: Path, trust_pickle: bool = False) -> CheckpointInfo:
    ckpt = _torch_load(path, trust_pickle)
    meta = ckpt.get("clipprobe") if isinstance(ckpt, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return CheckpointInfo(path, meta.get("arch"), _int(meta.get("step")), _int(meta.get("samples_seen")))


def _info_from_safetensors(path: Path, trust_pickle: bool = False) -> CheckpointInfo:
    del trust_pickle  # safetensors holds no pickle
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return CheckpointInfo(path, meta.get("arch"), _int(meta.get("step")), _int(meta.get("samples_seen")))


def _info_from_lightning(path: Path, trust_pickle: bool = False) -> CheckpointInfo:
    # Lightning checkpoints written by clipprobe's training hold only tensors, numbers, strings and containers
    # (hyper-parameters are a plain dict, callback and optimizer states likewise), so they load weights-only.
    ckpt = _torch_load(path, trust_pickle)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError("no state_dict in the file")
    meta = ckpt.get("clipprobe") or {}
    hparams = ckpt.get("hyper_parameters") or {}
    arch = meta.get("arch") or hparams.get("model_name")
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError("no 'model.*' weights in its state_dict (not a clipprobe CLIPModule checkpoint)")
    step = _int(meta.get("step", ckpt.get("global_step")))
    return CheckpointInfo(path, arch, step, _int(meta.get("samples_seen")), state)


_READERS: dict[str, Callable[[Path, bool], CheckpointInfo]] = {
    ".ckpt": _info_from_lightning,
    ".safetensors": _info_from_safetensors,
    ".pt": _info_from_torch,
    ".pth": _info_from_torch,
    ".bin": _info_from_torch,
}


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> CheckpointInfo:
    """Read what a checkpoint file records (architecture, step, samples seen).

    Args:
        path: the checkpoint file.
        trust_pickle: unpickle it fully (runs code stored in it); by default only weights and plain data load.

    Raises:
        UserError: the file is missing, has an unknown suffix, cannot be read, or holds Python objects beyond
            weights (without ``trust_pickle``).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; check the path given to --pretrained or --checkpoints")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"checkpoint {path} has an unknown suffix; use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    try:
        return reader(path, trust_pickle)
    except UserError:
        raise
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"checkpoint {path} is unreadable ({_clip(reason)}); is it a complete model file?") from None


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


_STEP_IN_NAME = re.compile(r"step[=_-]?(\d+)", re.IGNORECASE)


def checkpoint_step(path: Path, trust_pickle: bool = False) -> int | None:
    """The training step a checkpoint records, else one in its name (``step=100``, ``step_000100``).

    ``trust_pickle`` is as for :func:`read_checkpoint`.
    """
    step = read_checkpoint(path, trust_pickle).step
    if step is None and (m := _STEP_IN_NAME.search(path.name)):
        step = int(m.group(1))
    return step


def expand_checkpoints(pattern: str, trust_pickle: bool = False) -> list[Path]:
    """The checkpoint files matching a glob (``**`` allowed), ordered by training step, then by name.

    Args:
        pattern: the glob.
        trust_pickle: unpickle the files fully (runs code stored in them); see :func:`load_model`.

    Raises:
        UserError: nothing matches, or a match cannot be read (or holds Python objects beyond weights).
    """
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    paths = [Path(p) for p in matches if p.endswith(CHECKPOINT_SUFFIXES) and os.path.isfile(p)]
    if not paths:
        raise UserError(f"no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) match '{pattern}'; check the glob")
    steps = {p: checkpoint_step(p, trust_pickle) for p in paths}

    def natural(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]

    # Known steps first in step order; files without one after them, in natural name order.
    return sorted(paths, key=lambda p: (steps[p] is None, steps[p] or 0, natural(p)))


def models(filter: str = "", pretrained: bool = False) -> None:
    """List the model architectures open_clip can build here (clipprobe's own included).

    Args:
        filter: show only names containing this text (case-insensitive).
        pretrained: also list each architecture's pretrained tags.
    """
    import open_clip

    from clipprobe.models import register_configs

    register_configs()
    for name in open_clip.list_models():
        if filter.lower() not in name.lower():
            continue
        tags = open_clip.list_pretrained_tags_by_model(name) if pretrained else []
        print(f"{name}  {' '.join(tags)}".rstrip())
