"""Untrusted checkpoints: ``.pt``/``.ckpt`` files load weights-only, so a pickle that carries code never runs
unless the caller opts in with ``trust_pickle``; damaged files and refused files are distinct one-line errors;
clipprobe's own exports and Lightning checkpoints load under the safe default."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from clipprobe.cli import main
from clipprobe.errors import UserError
from clipprobe.models.load import check_source, expand_checkpoints, load_model, read_checkpoint

ARCH = "clipprobe-tiny"


class ExecPayload:
    """Unpickles as ``exec(code)``: the code creates ``marker`` (a stand-in for anything an attacker runs)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class SystemPayload:
    """Unpickles as ``os.system("touch marker")``: a shell command, from a module torch blocks outright."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


# name -> (payload class, torch.save options, the text the refusal names): the zip format with pickle protocol 2
# (torch's default), the legacy non-zip format (cannot be memory-mapped), and protocol 4 (opcodes torch's safe
# unpickler does not implement).
VARIANTS: dict[str, tuple[type, dict[str, Any], str]] = {
    "exec": (ExecPayload, {}, "global exec"),
    "os.system": (SystemPayload, {}, "global posix.system" if os.name == "posix" else "global"),
    "legacy-format": (ExecPayload, {"_use_new_zipfile_serialization": False}, "global exec"),
    "protocol-4": (ExecPayload, {"pickle_protocol": 4}, "pickle opcode"),
}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return load_model(ARCH).model.state_dict()


def save_evil(path: Path, weights: dict[str, torch.Tensor], payload: object, **save_kwargs: Any) -> Path:
    """A clipprobe export (``.pt``) or Lightning checkpoint (``.ckpt``) with ``payload`` hidden in its metadata."""
    meta = {"arch": ARCH, "step": 3, "samples_seen": 96, "note": payload}
    if path.suffix == ".ckpt":
        ckpt = {"state_dict": {f"model.{k}": v for k, v in weights.items()}, "clipprobe": {"arch": ARCH, "step": 3},
                "hyper_parameters": {"model_name": ARCH, "note": payload}, "global_step": 3}  # fmt: skip
    else:
        ckpt = {"state_dict": weights, "clipprobe": meta}
    torch.save(ckpt, path, **save_kwargs)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_malicious_pickle_is_refused_and_never_runs(weights, tmp_path, variant, suffix):
    payload_cls, save_kwargs, named = VARIANTS[variant]
    marker = tmp_path / "PWNED"
    evil = save_evil(tmp_path / f"evil{suffix}", weights, payload_cls(marker), **save_kwargs)
    for load in (
        lambda: load_model(None, str(evil)),
        lambda: load_model(ARCH, str(evil)),
        lambda: check_source(ARCH, str(evil)),
        lambda: read_checkpoint(evil),
        lambda: expand_checkpoints(str(tmp_path / "*")),
    ):
        with pytest.raises(UserError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and str(evil) in message and named in message, message
        assert "pass --trust_pickle if you trust this file" in message
        assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_trust_pickle_unpickles_fully(weights, tmp_path, suffix):
    """The opt-in loads the file, and so runs its payload: proof that the test above would see one run."""
    marker = tmp_path / "PWNED"
    evil = save_evil(tmp_path / f"evil{suffix}", weights, ExecPayload(marker))
    assert check_source(None, str(evil), trust_pickle=True) == ARCH
    assert marker.exists()
    marker.unlink()
    loaded = load_model(None, str(evil), trust_pickle=True)
    assert marker.exists() and loaded.name == ARCH and loaded.step == 3
    assert [p.name for p in expand_checkpoints(str(tmp_path / "evil*"), trust_pickle=True)] == [evil.name]


def test_harmless_custom_object_is_refused_by_class_name(weights, tmp_path):
    """Not only code: any class outside torch's allow-list needs the opt-in (old checkpoints with a Namespace)."""
    old = tmp_path / "old.pt"
    torch.save({"state_dict": weights, "clipprobe": {"arch": ARCH}, "args": argparse.Namespace(lr=0.1)}, old)
    with pytest.raises(UserError, match=r"argparse\.Namespace.*pass --trust_pickle"):
        load_model(None, str(old))
    assert load_model(None, str(old), trust_pickle=True).name == ARCH


def test_cli_eval_exits_2_with_one_line_and_runs_nothing(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    save_evil(tmp_path / "evil.pt", weights, ExecPayload(marker))
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--device", "cpu", "--progress", "false", "--model", ARCH, "--pretrained", "evil.pt",
              "--probes", "tor", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("clipprobe: error: checkpoint evil.pt") and err.count("\n") == 1
    assert "--trust_pickle" in err
    assert not marker.exists() and not out.exists()


def _damaged(kind: str, weights: dict[str, torch.Tensor], path: Path) -> Path:
    if kind in ("garbage", "empty"):
        path.write_bytes(b"not a torch file" if kind == "garbage" else b"")
        return path
    legacy = kind.startswith("legacy")
    torch.save({"state_dict": weights, "clipprobe": {"arch": ARCH}}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    cut = {
        "zip-cut": len(data) // 2,  # no zip directory
        "legacy-cut-in-data": len(data) // 2,
        "legacy-cut-at-end": len(data) - 10,
        # In the legacy format the pickle comes first: cut inside a global's name (which then reads as one the
        # safe unpickler does not allow), inside an argument list, and inside a string.
        "legacy-cut-in-global": data.index(b"_rebuild_tensor") + 5,
        "legacy-cut-in-args": data.index(b"_rebuild_tensor") + 20,
        "legacy-cut-in-string": data.index(b"clipprobe") + 3,
    }[kind]
    path.write_bytes(data[:cut])
    return path


DAMAGE = ["garbage", "empty", "zip-cut", "legacy-cut-in-data", "legacy-cut-at-end", "legacy-cut-in-global",
          "legacy-cut-in-args", "legacy-cut-in-string"]  # fmt: skip


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_damaged_file_is_a_different_one_line_error(weights, tmp_path, kind, suffix):
    path = _damaged(kind, weights, tmp_path / f"w{suffix}")
    for trust_pickle in (False, True):
        with pytest.raises(UserError, match="is truncated or not a torch checkpoint") as err:
            load_model(ARCH, str(path), trust_pickle=trust_pickle)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        assert "trust_pickle" not in str(err.value)


@pytest.fixture
def weights_only_loads(monkeypatch) -> list[bool]:
    """Record ``weights_only`` of every torch.load call (ours and open_clip's), to show the safe path was taken."""
    calls: list[bool] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only") is True)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.timeout(300)
@pytest.mark.usefixtures("one_thread")
def test_own_training_checkpoints_load_weights_only(tmp_path, corpus, weights_only_loads):
    """A real ``clipprobe fit`` run's Lightning checkpoints (hyper-parameters, loop, callback, optimizer and
    scheduler states) and its exports hold nothing outside torch's default allow-list."""
    run = tmp_path / "run"
    main(["fit", "--config", str(Path(__file__).parents[1] / "configs" / "fit" / "tiny-synthetic.yaml"),
          "--model.model_name", ARCH, "--model.compile", "false", "--data.train_data", corpus, "--data.val_data",
          "null", "--data.batch_size", "8", "--data.num_workers", "0", "--data.shuffle_buffer", "16",
          "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
          "--trainer.strategy", "auto", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.logger", "false", "--trainer.callbacks", "clipprobe.training.fit.StepTimer",
          "--trainer.default_root_dir", str(run), "--checkpoint.every_n_train_steps", "2"])  # fmt: skip
    ckpts = run / "checkpoints"
    files = [ckpts / "step=00000002.ckpt", ckpts / "last.ckpt", ckpts / "step=00000002" / "open_clip_pytorch_model.bin"]
    assert all(p.is_file() for p in files), sorted(ckpts.rglob("*"))
    weights_only_loads.clear()  # training itself is not under test
    for path in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == [], path
    for path in (files[0], files[1], ckpts / "step=00000002"):
        loaded = load_model(None, str(path))
        assert loaded.name == ARCH and loaded.step == 2 and loaded.samples_seen == 16
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert {"hyper_parameters", "callbacks", "optimizer_states", "lr_schedulers", "loops"} <= set(ckpt)
    assert weights_only_loads and all(weights_only_loads)


def test_probe_callback_state_is_plain_data(tmp_path):
    """The bias-probe callback's resume state (not in the run above: it needs probe sets) is a list of ints."""
    from clipprobe.training.callbacks import BiasProbeCallback

    callback = BiasProbeCallback(probes=["tor"], probe_sets=[])
    callback.done = {0, 1000}
    torch.save({"callbacks": {"BiasProbeCallback": callback.state_dict()}}, tmp_path / "cb.ckpt")
    assert torch.load(tmp_path / "cb.ckpt", weights_only=True)["callbacks"]["BiasProbeCallback"] == {"done": [0, 1000]}
