"""load_model from every source; checkpoint series in step order; one-line errors (exit 2)."""

from __future__ import annotations

import pytest
import torch

from clipprobe.cli import main
from clipprobe.errors import UserError
from clipprobe.models.load import expand_checkpoints, load_model, read_checkpoint

TEXTS = ["a cat and a dog", "pizza"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("clipprobe-tiny")


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    """A plain state dict, a training export, a Lightning-style checkpoint and a safetensors file."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpts")
    sd = tiny.model.state_dict()
    torch.save(sd, d / "plain.pt")
    meta = {"arch": "clipprobe-tiny", "step": 40, "samples_seen": 1280, "epoch": 0}
    torch.save({"state_dict": sd, "clipprobe": meta}, d / "export.pt")
    lightning = {
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "hyper_parameters": {"model_name": "clipprobe-tiny", "lr": 1e-3},
        "clipprobe": {"arch": "clipprobe-tiny", "step": 7, "samples_seen": 224},
        "global_step": 7,
        "optimizer_states": [],
    }
    torch.save(lightning, d / "last.ckpt")
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "w.safetensors", metadata={"arch": "clipprobe-tiny"})
    return d


def text_embeddings(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model.encode_text(loaded.tokenizer(TEXTS))


def test_random_tiny(tiny):
    assert tiny.name == "clipprobe-tiny" and tiny.pretrained is None and tiny.step is None
    assert not tiny.model.training
    pixels = tiny.preprocess(__import__("PIL.Image").Image.new("RGB", (100, 80)))
    assert pixels.shape == (3, 64, 64)
    assert text_embeddings(tiny).shape == (2, 64)


@pytest.mark.parametrize(
    "name, file, step, seen",
    [
        ("clipprobe-tiny", "plain.pt", None, None),
        (None, "export.pt", 40, 1280),
        ("clipprobe-tiny", "export.pt", 40, 1280),
        (None, "last.ckpt", 7, 224),
        (None, "w.safetensors", None, None),
    ],
)
def test_checkpoint_files_give_the_same_model(tiny, files, name, file, step, seen):
    loaded = load_model(name, str(files / file))
    assert loaded.name == "clipprobe-tiny" and loaded.checkpoint == str(files / file)
    assert (loaded.step, loaded.samples_seen) == (step, seen)
    torch.testing.assert_close(text_embeddings(loaded), text_embeddings(tiny))


def test_series_sorted_by_step(tiny, tmp_path):
    sd = tiny.model.state_dict()
    for step in (300, 20, 1000, 100):  # names sort differently from steps
        meta = {"arch": "clipprobe-tiny", "step": step, "samples_seen": step * 64, "epoch": 0}
        torch.save({"state_dict": sd, "clipprobe": meta}, tmp_path / f"export_{step}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    series = expand_checkpoints(str(tmp_path / "*"))
    assert [read_checkpoint(p).step for p in series] == [20, 100, 300, 1000]
    with pytest.raises(UserError, match="no checkpoint files"):
        expand_checkpoints(str(tmp_path / "*.ckpt"))


def test_step_from_file_name_when_the_file_has_none(tiny, tmp_path):
    sd = tiny.model.state_dict()
    for step in (5, 50, 15):
        torch.save(sd, tmp_path / f"epoch=0-step={step}.pt")
    assert [p.name for p in expand_checkpoints(str(tmp_path / "*.pt"))] == [
        "epoch=0-step=5.pt",
        "epoch=0-step=15.pt",
        "epoch=0-step=50.pt",
    ]


@pytest.mark.parametrize(
    "name, pretrained, message",
    [
        ("ViT-Q-99", None, "unknown model architecture 'ViT-Q-99'.*clipprobe models"),
        ("ViT-B-32", "no_such_tag", "unknown pretrained tag 'no_such_tag' for ViT-B-32"),
        ("clipprobe-tiny", "openai", "unknown pretrained tag 'openai'"),
        ("clipprobe-tiny", "missing/model.pt", "does not exist"),
        (None, "plain.pt", "does not record its architecture"),
        ("clipprobe-small", "export.pt", "trained as clipprobe-tiny but --model says clipprobe-small"),
        ("clipprobe-small", "plain.pt", "does not fit architecture clipprobe-small"),
        ("clipprobe-tiny", "garbage.pt", "is truncated or not a torch checkpoint"),
        (None, "weights.npz", "unknown suffix"),
    ],
)
def test_bad_sources_are_one_line_user_errors(files, name, pretrained, message, monkeypatch):
    monkeypatch.chdir(files)
    (files / "garbage.pt").write_bytes(b"not a torch file")
    (files / "weights.npz").write_bytes(b"")
    with pytest.raises(UserError, match=message) as err:
        load_model(name, pretrained)
    assert "\n" not in str(err.value)


def test_download_failure_is_a_user_error(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known while requesting https://huggingface.co/...")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(UserError, match=r"could not download weights for ViT-B-32 \(openai\).*--pretrained PATH"):
        load_model("ViT-B-32", "openai")


def test_models_command_lists_architectures(capsys):
    assert main(["models", "--filter", "clipprobe"]) == 0
    assert capsys.readouterr().out.split() == [
        "clipprobe-small",
        "clipprobe-tiny",
        "clipprobe-tiny-bidir",
        "clipprobe-tiny-bidir-first",
        "clipprobe-tiny-last",
    ]
    main(["models", "--filter", "ViT-B-16-SigLIP", "--pretrained"])
    assert "ViT-B-16-SigLIP  webli" in capsys.readouterr().out.splitlines()


def test_missing_package_is_a_user_error(monkeypatch):
    import open_clip

    def needs_transformers(*args, **kwargs):
        raise RuntimeError("Please `pip install transformers` to use pre-trained HuggingFace models")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", needs_transformers)
    with pytest.raises(UserError, match="needs the package 'transformers'; pip install transformers"):
        load_model("clipprobe-tiny")
