"""Exports (clipprobe.models.export): folders that plain open_clip loads in an interpreter that never imports
clipprobe, written atomically; `clipprobe eval` on export folders, old .pt exports, and a run's folder (its series
once per step, with the probe settings of the run's own BiasProbeCallback, reproducing its probes.jsonl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clipprobe.cli import main
from clipprobe.errors import UserError
from clipprobe.evaluation.jobs import ProbeSettings, run_probe_settings
from clipprobe.evaluation.records import read_records
from clipprobe.models import create_random_model
from clipprobe.models.export import export_folder, export_model
from clipprobe.models.load import check_source, expand_checkpoints, load_model, read_checkpoint

ROOT = Path(__file__).parents[1]
ARCH = "clipprobe-tiny"

PLAIN_OPEN_CLIP = """
import sys

import open_clip
import torch
from PIL import Image

folder, inputs, out = sys.argv[1:]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
given = torch.load(inputs)
model.eval()
with torch.no_grad():
    image = model.encode_image(given["images"])
    text = model.encode_text(tokenizer(given["texts"]))
pixels = preprocess(Image.open(given["png"]))
clipprobe = sorted(m for m in sys.modules if m.split(".")[0] == "clipprobe")
torch.save({"image": image, "text": text, "pixels": pixels, "clipprobe_modules": clipprobe,
            "knows_clipprobe_configs": "clipprobe-tiny" in open_clip.list_models()}, out)
"""


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_random_model(ARCH).eval()


def embeddings(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def test_export_loads_in_plain_open_clip_in_a_fresh_interpreter(tmp_path: Path, model: torch.nn.Module) -> None:
    """``open_clip.create_model_and_transforms("local-dir:...")`` in ``python -I`` without clipprobe: the same
    embeddings and preprocessing as the model exported, and clipprobe never imported (its configs unknown)."""
    import open_clip
    from PIL import Image

    folder = export_folder(model, tmp_path / "step=00000007", ARCH, step=7, samples_seen=700, epoch=1, run=tmp_path)
    images = torch.randn(3, 3, 64, 64)
    texts = ["a dog", "a cat and a car", "an apple to the left of a bus"]
    png = tmp_path / "scene.png"
    Image.fromarray((torch.rand(80, 120, 3) * 255).to(torch.uint8).numpy()).save(png)
    torch.save({"images": images, "texts": texts, "png": str(png)}, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", PLAIN_OPEN_CLIP, str(folder), str(tmp_path / "inputs.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plain = torch.load(tmp_path / "out.pt")
    assert plain["clipprobe_modules"] == [] and not plain["knows_clipprobe_configs"]
    image, text = embeddings(model, images, open_clip.get_tokenizer(ARCH)(texts))
    assert torch.allclose(plain["image"], image, atol=1e-6) and torch.allclose(plain["text"], text, atol=1e-6)
    loaded = load_model(None, str(folder))  # and clipprobe's own loader: the same preprocessing
    assert torch.equal(plain["pixels"], loaded.preprocess(Image.open(png)))
    assert json.loads((folder / "clipprobe.json").read_text()) == {
        "format": 1, "arch": ARCH, "step": 7, "samples_seen": 700, "epoch": 1, "run": str(tmp_path.resolve()),
    }  # fmt: skip


def test_export_is_written_whole_or_not_at_all(tmp_path: Path, model: torch.nn.Module,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import clipprobe.models.export as export

    folder = export_folder(model, tmp_path / "step=00000001", ARCH, step=1)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.torch, "save", disk_full)
    with pytest.raises(OSError):
        export_folder(model, folder, ARCH, step=2)
    with pytest.raises(OSError):
        export_folder(model, tmp_path / "step=00000002", ARCH, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=00000001"]  # no new folder, no temporary left
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_eval_reads_export_folders_and_old_pt_files(tmp_path: Path, model: torch.nn.Module) -> None:
    import open_clip

    folder = export_folder(model, tmp_path / "step=00000005", ARCH, step=5, samples_seen=50)
    old = export_model(model, tmp_path / "old.pt", ARCH, step=4, samples_seen=40)
    images, tokens = torch.randn(2, 3, 64, 64), open_clip.get_tokenizer(ARCH)(["a dog", "a car and a cup"])
    want = embeddings(model, images, tokens)
    for source, step, seen in ((folder, 5, 50), (old, 4, 40)):
        loaded = load_model(None, str(source))
        assert (loaded.name, loaded.step, loaded.samples_seen, loaded.checkpoint) == (ARCH, step, seen, str(source))
        got = embeddings(loaded.model, images, loaded.tokenizer(["a dog", "a car and a cup"]))
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want, strict=True))
    assert check_source(None, str(folder)) == ARCH
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(folder / "open_clip_pytorch_model.bin")) == []
    with pytest.raises(UserError, match="was trained as clipprobe-tiny but --model says clipprobe-small"):
        check_source("clipprobe-small", str(folder))
    with pytest.raises(UserError, match="holds no open_clip_config.json"):
        read_checkpoint(tmp_path)
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(UserError, match="open_clip_pytorch_model.bin is truncated or not a torch checkpoint"):
        read_checkpoint(folder)


def test_a_series_counts_each_step_once(tmp_path: Path, model: torch.nn.Module) -> None:
    """A run's checkpoints folder, new layout and old: step=N/ before step=N.pt before step=N.ckpt, and last.*
    (the newest step again) left out; the same from the run's folder, a glob, or files inside the exports."""
    ckpts = tmp_path / "run" / "checkpoints"
    for step in (0, 2, 10):
        export_folder(model, ckpts / f"step={step:08d}", ARCH, step=step)
    export_model(model, ckpts / "step=00000002.pt", ARCH, step=2)  # an older run's export beside the new one
    lightning = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                 "clipprobe": {"arch": ARCH, "step": 10}}  # fmt: skip
    torch.save(lightning, ckpts / "step=00000010.ckpt")
    os.link(ckpts / "step=00000010.ckpt", ckpts / "last.ckpt")
    export_model(model, ckpts / "last.pt", ARCH, step=10)
    export_model(model, ckpts / "step=00000012.pt", ARCH, step=12)  # only the old form: kept
    want = [ckpts / "step=00000000", ckpts / "step=00000002", ckpts / "step=00000010", ckpts / "step=00000012.pt"]
    assert expand_checkpoints(str(tmp_path / "run")) == want
    assert expand_checkpoints(str(ckpts)) == want
    assert expand_checkpoints(str(ckpts / "*")) == want
    assert expand_checkpoints(str(ckpts / "*" / "open_clip_pytorch_model.bin")) == want[:3]
    (ckpts / "step=00000012.pt").unlink()
    assert expand_checkpoints(str(ckpts / "last.*")) == [ckpts / "last.pt"]  # alone: kept
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoints"):
        expand_checkpoints(str(tmp_path / "empty"))


def test_run_settings_defaults_are_the_callbacks() -> None:
    """What eval assumes when a run's config.yaml says null is what BiasProbeCallback does."""
    from clipprobe.evaluation.jobs import CALLBACK, CALLBACK_DEFAULTS
    from clipprobe.training.callbacks import BiasProbeCallback

    cb = BiasProbeCallback()
    assert CALLBACK == f"{BiasProbeCallback.__module__}.{BiasProbeCallback.__name__}"
    assert {k: getattr(cb, k) for k in CALLBACK_DEFAULTS} == CALLBACK_DEFAULTS


SMALL = {"image_size": 64, "objects": [2, 3], "scenes_per_layout": 6,
         "names": ["person", "bicycle", "car", "motorcycle", "airplane", "bus"]}  # fmt: skip
TOR = {"tor": {"num_captions": 40}}


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_thread")
def test_eval_of_a_run_reproduces_its_probe_records(tmp_path: Path, corpus: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """4 steps probed by the callback (a 64 px set of 2-3 objects, 40 captions) and checkpointed every 2; eval
    --checkpoints RUN_DIR with eval's defaults evaluates steps 0, 2, 4 once each (not last.ckpt again) with the
    callback's settings, and gets the run's own tor values at every step."""
    from clipprobe.data.generate import ensure_probe_set

    cache = tmp_path / "cache"
    ensure_probe_set("comco", cache, workers=1, **SMALL)
    run = tmp_path / "run"
    recipe = yaml.safe_load((ROOT / "configs/fit/tiny-synthetic.yaml").read_text())
    recipe["trainer"]["callbacks"] = [{"class_path": "clipprobe.training.callbacks.BiasProbeCallback", "init_args": {
        "probes": ["tor"], "probe_sets": ["comco"], "generate": SMALL, "options": TOR, "every_n_steps": 2,
        "cache_dir": str(cache)}}]  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    main(["fit", "--config", str(tmp_path / "recipe.yaml"), "--model.compile", "false", "--data.num_workers", "0",
          "--data.shuffle_buffer", "16", "--data.batch_size", "8", "--data.train_data", corpus,
          "--trainer.accelerator", "cpu", "--trainer.max_steps", "4", "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run),
          "--checkpoint.every_n_train_steps", "2"])  # fmt: skip
    asked = run_probe_settings(str(run), ProbeSettings())  # what eval will run, before it runs (slow if wrong)
    assert (asked.probes, asked.generate, asked.options, asked.vocab, asked.seed) == (["tor"], SMALL, TOR, None, 0)
    assert asked.probe_set == [str(ensure_probe_set("comco", cache, **SMALL))]
    capsys.readouterr()
    out = tmp_path / "results"
    assert main(["eval", "--checkpoints", str(run), "--device", "cpu", "--progress", "false", "--out", str(out)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("clipprobe: eval:")]
    assert said == [f"clipprobe: eval: probes, probe_set, generate, options taken from the run's BiasProbeCallback "
                    f"({run / 'config.yaml'}), as its probes.jsonl was made; pass --probes, --probe_set, --generate, "
                    "--options, --vocab, --seed, --benchmarks or --benchmark_generate to override"]  # fmt: skip
    evaluated = sorted(read_records(sorted(out.glob("*.jsonl"))), key=lambda r: r.step)
    assert [(r.step, r.probe, Path(r.weights["path"]).name) for r in evaluated] == [
        (s, "tor", f"step={s:08d}") for s in (0, 2, 4)
    ]  # fmt: skip
    own = {r.step: r for r in read_records(run / "probes.jsonl")}
    assert sorted(own) == [0, 2, 4]
    for r in evaluated:
        mine = own[r.step]
        assert r.options == mine.options and r.probe_set["manifest_sha256"] == mine.probe_set["manifest_sha256"]
        assert [(m.name, m.count) for m in r.metrics] == [(m.name, m.count) for m in mine.metrics]
        for m, theirs in zip(r.metrics, mine.metrics, strict=True):
            assert m.value == pytest.approx(theirs.value, abs=1e-9, nan_ok=True), (r.step, m.name)
