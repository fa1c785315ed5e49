"""Load a CLIP from any source as ``(model, preprocess, tokenizer)`` (one contract, as in CLIP_benchmark).

Sources, all built through open_clip:

- an open_clip architecture and a pretrained tag (``ViT-B-32``, ``openai``), or an ``hf-hub:`` name;
- clipprobe's own architectures (``clipprobe-tiny``, ``clipprobe-small``), randomly initialised without a tag;
- a local state dict (``.pt``/``.pth``/``.bin``/``.safetensors``), including clipprobe's training export
  ``{"state_dict", "clipprobe": {"arch", "step", "samples_seen"}}`` (its architecture, step and samples seen
  are read from it);
- a Lightning ``.ckpt`` of clipprobe's ``CLIPModule`` (state dict keys ``model.*``, ``hyper_parameters.model_name``
  and ``checkpoint["clipprobe"]``);
- an open_clip export folder (``open_clip_config.json`` and weights, built through open_clip's ``local-dir:``
  schema), such as clipprobe's training exports ``<run>/checkpoints/step=XXXXXXXX/``, whose ``clipprobe.json``
  records the architecture, step and samples seen (:mod:`clipprobe.models.export`);
- a glob of such files and folders, or a training run's folder (a training progression), see
  :func:`expand_checkpoints`.

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
import json
import logging
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
import zlib
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
# An open_clip export folder, as open_clip's ``local-dir:`` schema reads it (open_clip/factory.py).
EXPORT_CONFIG = "open_clip_config.json"  # {"model_cfg": ..., "preprocess_cfg": ...}
EXPORT_WEIGHTS = "open_clip_pytorch_model.bin"  # the state dict clipprobe writes
EXPORT_INFO = "clipprobe.json"  # clipprobe's metadata: arch, step, samples_seen, epoch, run
# The weights file open_clip picks in a folder, in its order of preference (open_clip.factory._find_checkpoint_in_dir).
EXPORT_WEIGHT_NAMES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)  # fmt: skip


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
        info = read_checkpoint(pretrained, trust_pickle)
        return _pick_export_arch(name, info) if info.path.is_dir() else _pick_arch(name, info)
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
    if path.is_dir():
        return _load_export_dir(name, info, device, trust_pickle)
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


def _load_export_dir(name: str | None, info: CheckpointInfo, device: str | torch.device,
                     trust_pickle: bool) -> LoadedModel:  # fmt: skip
    """An open_clip export folder, built by open_clip itself from the folder (``local-dir:``), as any tool would."""
    import open_clip

    arch = _pick_export_arch(name, info)
    source = f"{open_clip.factory.LOCAL_DIR_PREFIX}{info.path.resolve()}"
    with _open_clip_errors(arch, None), _mismatch_errors(info.path, arch):
        model, _, preprocess = open_clip.create_model_and_transforms(
            source, device=device, weights_only=not trust_pickle
        )
        tokenizer = open_clip.get_tokenizer(source)
    return LoadedModel(model, preprocess, tokenizer, arch, str(info.path), info.step, info.samples_seen)


def _pick_export_arch(name: str | None, info: CheckpointInfo) -> str:
    """The architecture label of an export folder: its recorded one, else ``name``, else ``local-dir:<folder>``.

    The folder's own ``open_clip_config.json`` defines the model, so ``name`` is only checked against the record.
    """
    if name and info.arch and name.replace("/", "-") != info.arch.replace("/", "-"):
        raise UserError(
            f"checkpoint {info.path} was trained as {info.arch} but --model says {name}; drop --model or fix it"
        )
    return info.arch or name or f"local-dir:{info.path.resolve()}"


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
    detail = _damage(path, error)
    return UserError(f"checkpoint {path} is truncated or not a torch checkpoint ({detail}); copy it again")


def _damage(path: Path, error: Exception) -> str:
    """A short description of what is wrong with a file that torch.load failed on."""
    message = str(error)
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
    elif "central directory" in detail and _starts_as_zip(path):
        detail = "the zip archive is cut short: no central directory at its end"
    return _clip(detail or type(error).__name__)


def _starts_as_zip(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
    return False


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
    if not isinstance(ckpt, dict):  # a list, a lone tensor...: checked here, before any model is built
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict (a mapping of weight "
                        "names to tensors); pass a model's weights file")  # fmt: skip
    meta = ckpt.get("clipprobe")
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


def is_export_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an open_clip export folder (it holds ``open_clip_config.json``)."""
    return (Path(path) / EXPORT_CONFIG).is_file()


def export_weights_file(folder: str | os.PathLike) -> Path | None:
    """The weights file open_clip loads from an export folder (its order of preference), or None."""
    folder = Path(folder)
    for name in EXPORT_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth"))
    found.sort(key=lambda p: p.suffix != ".safetensors")
    return found[0] if found else None


def _info_from_export_dir(path: Path, trust_pickle: bool = False) -> CheckpointInfo:
    try:
        config = json.loads((path / EXPORT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{EXPORT_CONFIG} is not readable JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ValueError(f"{EXPORT_CONFIG} has no 'model_cfg'")
    weights = export_weights_file(path)
    if weights is None:
        raise ValueError(f"no weights file ({', '.join(EXPORT_WEIGHT_NAMES[:3])}, ...) beside {EXPORT_CONFIG}")
    if weights.suffix != ".safetensors":
        _torch_load(weights, trust_pickle)  # a damaged or untrusted weights file: the same one-line errors as files
    meta: Any = {}
    if (path / EXPORT_INFO).is_file():
        try:
            meta = json.loads((path / EXPORT_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{EXPORT_INFO} is not readable JSON: {e}") from None
    meta = meta if isinstance(meta, dict) else {}
    return CheckpointInfo(path, meta.get("arch"), _int(meta.get("step")), _int(meta.get("samples_seen")))


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> CheckpointInfo:
    """Read what a checkpoint file or export folder records (architecture, step, samples seen).

    Args:
        path: the checkpoint file, or an open_clip export folder.
        trust_pickle: unpickle it fully (runs code stored in it); by default only weights and plain data load.

    Raises:
        UserError: the file is missing, has an unknown suffix, cannot be read, or holds Python objects beyond
            weights (without ``trust_pickle``); the folder is not an open_clip export.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not is_export_dir(path):
            raise UserError(
                f"checkpoint folder {path} holds no {EXPORT_CONFIG}; pass a checkpoint file or an export folder "
                "(a run's folder goes to --checkpoints)"
            )
        try:
            return _info_from_export_dir(path, trust_pickle)
        except UserError:
            raise
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise UserError(f"export folder {path} is unreadable ({_clip(reason)}); is it a complete export?") from None
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
LAST_STEM = "last"  # ``last.ckpt`` (and the ``last.pt`` of older runs): the newest step checkpoint again


def step_in_name(name: str) -> int | None:
    """The step a checkpoint's name gives (``step=00000100.ckpt``, ``epoch=0-step_100.pt``), or None."""
    m = _STEP_IN_NAME.search(name)
    return int(m.group(1)) if m else None


def checkpoint_step(path: Path, trust_pickle: bool = False) -> int | None:
    """The training step a checkpoint records, else one in its name (``step=100``, ``step_000100``).

    ``trust_pickle`` is as for :func:`read_checkpoint`.
    """
    step = read_checkpoint(path, trust_pickle).step
    return step if step is not None else step_in_name(path.name)


def expand_checkpoints(pattern: str, trust_pickle: bool = False) -> list[Path]:
    """The checkpoints of a glob (``**`` allowed) or of a training run's folder, ordered by training step, then by
    name; each checkpoint once.

    A run's folder (or its ``checkpoints/`` folder) gives every checkpoint file and export folder in it. A file
    inside an export folder stands for the folder. Within one folder, one checkpoint saved in several forms counts
    once: ``step=N/`` (export) before ``step=N.pt`` before ``step=N.ckpt``; and ``last.*`` (a copy of the newest
    step) only when no other checkpoint there has its step.

    Args:
        pattern: the glob, or a folder.
        trust_pickle: unpickle the files fully (runs code stored in them); see :func:`load_model`.

    Raises:
        UserError: nothing matches, or a match cannot be read (or holds Python objects beyond weights).
    """
    folder = Path(pattern).expanduser()
    if folder.is_dir() and not glob.has_magic(pattern):
        if is_export_dir(folder):
            return [folder]
        folder = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
        paths = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and _is_checkpoint(p)]
        if not paths:
            raise UserError(
                f"no checkpoints ({', '.join(CHECKPOINT_SUFFIXES)} files or export folders) in {folder}; "
                "is it a training run's folder?"
            )
    else:
        matches = [Path(p) for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))]
        paths = list(dict.fromkeys(_export_of(p) or p for p in matches if _export_of(p) or _is_checkpoint(p)))
        if not paths:
            raise UserError(
                f"no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) or export folders match '{pattern}'; "
                "check the glob"
            )
    paths = _one_per_stem(paths)
    steps = {p: checkpoint_step(p, trust_pickle) for p in paths}
    paths = _without_repeated_last(paths, steps)

    def natural(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]

    # Known steps first in step order; files without one after them, in natural name order.
    return sorted(paths, key=lambda p: (steps[p] is None, steps[p] or 0, natural(p)))


def _is_checkpoint(path: Path) -> bool:
    return (path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES)) or (path.is_dir() and is_export_dir(path))


def _export_of(path: Path) -> Path | None:
    """The export folder ``path`` is or lies in, or None."""
    if path.is_dir():
        return path if is_export_dir(path) else None
    return path.parent if is_export_dir(path.parent) else None


_FORM_ORDER = {"": 0, ".pt": 1, ".pth": 1, ".bin": 1, ".safetensors": 1, ".ckpt": 2}  # export folder first


def _one_per_stem(paths: list[Path]) -> list[Path]:
    """One checkpoint per (folder, name without suffix): the export folder, else the state dict, else the .ckpt."""
    best: dict[tuple[Path, str], Path] = {}
    for p in paths:
        suffix = "" if p.is_dir() else p.suffix.lower()
        key = (p.parent, p.name if p.is_dir() else p.stem)
        if key not in best or _FORM_ORDER.get(suffix, 1) < _FORM_ORDER.get(_suffix(best[key]), 1):
            best[key] = p
    return [p for p in paths if best[(p.parent, p.name if p.is_dir() else p.stem)] == p]


def _suffix(path: Path) -> str:
    return "" if path.is_dir() else path.suffix.lower()


def _without_repeated_last(paths: list[Path], steps: dict[Path, int | None]) -> list[Path]:
    """Drop ``last.*`` where another checkpoint of its folder has its step (the same weights, saved twice)."""
    named = {(p.parent, steps[p]) for p in paths if _stem(p) != LAST_STEM and steps[p] is not None}
    return [p for p in paths if not (_stem(p) == LAST_STEM and (p.parent, steps[p]) in named)]


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a checkpoint file cannot be resumed from, or None when it is intact.

    Checks every member of the zip archive against its CRC-32 (torch's loader does not), then unpickles it
    weights-only on CPU (memory-mapped: the tensors are not read again). A file that safe loading refuses for
    holding Python objects is not damaged: it counts as intact here.

    Args:
        path: a torch checkpoint file (``.ckpt``, ``.pt``).

    Returns:
        A short reason (``the file is empty``, ``the zip archive is cut short: ...``, ``member archive/data/3 fails
        its CRC-32 check``), or None.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        member = ""
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    member = info.filename
                    with archive.open(info) as f:
                        while f.read(1 << 24):
                            pass
        except zipfile.BadZipFile as e:
            if member and "CRC" in str(e):
                return _clip(f"member {member} fails its CRC-32 check")
            return _clip(f"member {member} is damaged ({e})" if member else f"not a readable zip archive ({e})")
        except (OSError, EOFError, zlib.error) as e:
            return _clip(f"member {member} cannot be read ({e})")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and _refusal(str(e)):
            return None  # well formed; it holds objects beyond weights (Lightning decides whether to load them)
        return _damage(path, e)
    return None


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
