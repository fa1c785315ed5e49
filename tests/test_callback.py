"""BiasProbeCallback: cached inputs, the steps it fires at, the keys it logs, records, resume, training
left unchanged, and the history of an offline W&B run read back from the run's own files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from clipprobe.cli import main
from clipprobe.data.generate import ensure_probe_set
from clipprobe.data.probeset import ProbeSet
from clipprobe.data.shards import ShardDataModule
from clipprobe.errors import UserError
from clipprobe.evaluation.records import Record, append_records, read_records
from clipprobe.probes.base import Metric
from clipprobe.training.callbacks import BiasProbeCallback, headline, log_values
from clipprobe.training.module import CLIPModule

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).parents[1]
SMALL = {"image_size": 64, "objects": [2, 3], "scenes_per_layout": 6,
         "names": ["person", "bicycle", "car", "motorcycle", "airplane", "bus"]}  # fmt: skip
TOR = {"tor": {"num_captions": 40}}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A probe-set cache holding the small ComCO set (generated once, as the callback would)."""
    root = tmp_path_factory.mktemp("probesets")
    ensure_probe_set("comco", root, workers=1, **SMALL)
    return str(root)


def probe_callback(cache: str, every: int = 2, **kwargs: object) -> BiasProbeCallback:
    return BiasProbeCallback(["tor", "ior"], ["comco"], every, generate=SMALL, options=TOR, cache_dir=cache, **kwargs)


class ModeCheck(L.Callback):
    """Fails if any module is left in eval mode between training steps."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        assert all(m.training for m in pl_module.modules())


def train(run: Path, corpus: str, callbacks: list[L.Callback], max_steps: int, ckpt: str | None = None,
          logger: object = False) -> CLIPModule:  # fmt: skip
    L.seed_everything(0, verbose=False)
    module = CLIPModule("clipprobe-tiny", warmup_steps=2, schedule_steps=8)
    data = ShardDataModule(corpus, batch_size=8, num_workers=0, shuffle_buffer=16, num_samples=64)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=run, logger=logger,
                        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))  # fmt: skip
    trainer.fit(module, data, ckpt_path=ckpt)
    return module


def test_kept_inputs_survive_refresh_and_embeddings_are_recomputed(cache: str) -> None:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipprobe.probes.encode import CachedEncoder
    from clipprobe.training.module import create_model

    ps = ProbeSet.load(ensure_probe_set("comco", cache, **SMALL))
    model = create_model("clipprobe-tiny")
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer("clipprobe-tiny")
    texts, images = ["a car", "a bus and a car", "a car"], [str(ps.path(s)) for s in ps.scenes[:5]]
    enc = CachedEncoder(model, preprocess, tokenizer, batch_size=2, progress=False, keep_inputs=True)
    first_t, first_i = enc.encode_texts(texts), enc.encode_images(images)
    assert (enc.texts_tokenized, enc.images_prepared) == (2, 5)
    with torch.no_grad():
        model.text_projection.add_(0.5)
        model.visual.proj.add_(0.5)
    enc.refresh()
    again_t, again_i = enc.encode_texts(texts), enc.encode_images(images)
    assert (enc.texts_tokenized, enc.images_prepared) == (2, 5)  # nothing tokenized or preprocessed again
    assert (enc.texts_encoded, enc.images_encoded) == (4, 10)  # but every embedding computed again
    assert not torch.allclose(first_t, again_t) and not torch.allclose(first_i, again_i)
    fresh = CachedEncoder(model, preprocess, tokenizer, progress=False, num_workers=0)
    assert torch.allclose(again_t, fresh.encode_texts(texts), atol=1e-6)
    assert torch.allclose(again_i, fresh.encode_images(images), atol=1e-6)


def _record(step: int, metrics: list[Metric]) -> Record:
    return Record("clipprobe-tiny", {"kind": "run", "run": "/r", "step": step}, "tor", 1, {}, "s", metrics,
                  step=step, samples_seen=8 * step, timing={"seconds": 0.5}, source="callback")  # fmt: skip


def _m(name: str, value: float, family: str = "closest", n: int = 2, key: str | None = "1", variant: str | None = None):
    return Metric(name, family, value, 10, (0.0, 1.0), n, key, variant)


def test_records_are_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "probes.jsonl"
    append_records(path, [_record(0, [_m("n2/share_1", float("nan"), "share")])])
    size = path.stat().st_size
    path.write_text(path.read_text() + '{"step": 2, "cut sh')  # a line cut short by a kill
    append_records(path, [_record(4, [_m("n2/share_1", 0.5, "share")])])
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["metrics"][0]["value"] is None
    assert [r.step for r in read_records(path)] == [0, 4]  # the cut line is skipped, the next one whole
    assert path.read_bytes()[:size] == lines[0].encode() + b"\n"  # appended, never rewritten
    shown = [
        _m("n2/closest_1", 0.6),
        _m("n3/closest_1", float("nan"), n=3),
        _m("equal/n2/closest_1", 0.1, variant="equal"),
    ]
    assert headline([_record(0, shown)]) == "s/tor closest_1 n2=0.60"
    assert log_values([_record(2, [_m("n2/share_1", 0.25, "share"), _m("n2/x", float("nan"))])]) == {
        "probe/s/tor/n2/share_1": 0.25, "probe/seconds": 0.5, "train/samples_seen": 16.0}  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probes": ["nope"]}, "unknown probe"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"probe_sets": ["/no/such/set"]}, "neither a folder nor a kind"),
        ({"generate": {"image_size": 8}}, "image-size"),
    ],
)
def test_bad_config_fails_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        BiasProbeCallback(**{"probes": ["tor", "ior"], "probe_sets": ["comco"], **kwargs})


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs" / "fit").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_configures_the_callback_and_loggers(recipe: Path) -> None:
    import importlib

    import yaml

    trainer = yaml.safe_load(recipe.read_text())["trainer"]
    (probe,) = [c for c in trainer["callbacks"] if c["class_path"] == "clipprobe.training.callbacks.BiasProbeCallback"]
    cb = BiasProbeCallback(**probe["init_args"])  # names, options and generation parameters are checked here
    assert cb.every_n_steps >= 100 and cb.probes and cb.probe_sets
    paths = [lg["class_path"] for lg in trainer["logger"]]
    assert paths == [
        "clipprobe.training.loggers.CSVLogger",
        "clipprobe.training.loggers.WandbLogger",
    ]  # W&B last: --trainer.logger.init_args.mode
    for lg in trainer["logger"]:
        module, _, name = lg["class_path"].rpartition(".")
        assert "save_dir" not in (
            lg.get("init_args") or {}
        )  # null: the run folder, whatever --trainer.default_root_dir
        getattr(importlib.import_module(module), name)


def test_fires_at_configured_steps_and_logs_keys(tmp_path: Path, corpus: str, cache: str) -> None:
    from lightning.pytorch.loggers import CSVLogger

    cb = probe_callback(cache)
    train(tmp_path, corpus, [cb, ModeCheck()], max_steps=5, logger=CSVLogger(tmp_path, name="", version=""))
    assert [h["step"] for h in cb.history] == [0, 2, 4, 5]  # step 0, every 2, and the end
    records = read_records(tmp_path / "probes.jsonl")
    assert [(r.step, r.target, r.probe) for r in records] == [
        (s, "comco", p) for s in (0, 2, 4, 5) for p in ("tor", "ior")]  # fmt: skip
    assert [r.samples_seen for r in records[::2]] == [0, 16, 32, 40]
    for r in records:
        assert r.source == "callback" and r.metrics and r.timing["seconds"] > 0 and r.model == "clipprobe-tiny"
        assert r.weights == {"kind": "run", "run": str(tmp_path.resolve()), "step": r.step}
        assert r.probe_set["manifest_sha256"] and r.options["run_seed"] == 0
    assert records[0].metric("n3/share_1").family == "share" and records[1].metric("n3/large").key == "large"
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    key = "probe/comco/tor/n2/share_1_all"
    assert [int(r["step"]) for r in rows if r.get(key)] == [0, 2, 4, 5]
    assert [float(r[key]) for r in rows if r.get(key)] == [h["metrics"][key] for h in cb.history]
    assert all(r.get("probe/seconds") for r in rows if r.get(key))
    assert any(r.get("probe/comco/ior/n3/closest_large") for r in rows)


def test_training_is_the_same_with_or_without_the_callback(tmp_path: Path, corpus: str, cache: str) -> None:
    a = train(tmp_path / "a", corpus, [], max_steps=3)
    b = train(tmp_path / "b", corpus, [probe_callback(cache, every=1)], max_steps=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_resume_neither_repeats_nor_skips(tmp_path: Path, corpus: str, cache: str) -> None:
    def ckpt() -> ModelCheckpoint:
        return ModelCheckpoint(tmp_path / "ckpt", "{step}", every_n_train_steps=2, save_top_k=-1)

    train(tmp_path, corpus, [probe_callback(cache), ckpt()], max_steps=4)  # evaluates 0, 2, 4
    # Resume from step 2: step 4 is in probes.jsonl already (a preempted run got further than its checkpoint).
    cb = probe_callback(cache)
    train(tmp_path, corpus, [cb, ckpt()], max_steps=6, ckpt=str(tmp_path / "ckpt" / "step=2.ckpt"))
    assert [h["step"] for h in cb.history] == [6]
    assert [r.step for r in read_records(tmp_path / "probes.jsonl")][::2] == [0, 2, 4, 6]
    # A fresh run in the same folder starts a new file and keeps the old one aside.
    cb = probe_callback(cache)
    train(tmp_path, corpus, [cb], max_steps=1)
    assert [r.step for r in read_records(tmp_path / "probes.jsonl")] == [0, 0, 1, 1]
    (old,) = tmp_path.glob("probes.*.jsonl.old")
    assert len(read_records(old)) == 8


def test_wandb_mode_and_run_id() -> None:
    from clipprobe.training.loggers import resolve_mode, slurm_run_id

    assert resolve_mode(None, {}) == "offline" and resolve_mode(None, {"WANDB_MODE": "online"}) == "online"
    assert (
        resolve_mode("offline", {"WANDB_MODE": "online"}) == "offline"
        and resolve_mode(None, {"WANDB_MODE": "dryrun"}) == "offline"
    )
    with pytest.raises(UserError, match="unknown W&B mode"):
        resolve_mode("cloud", {})
    assert slurm_run_id({"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"}) == "70_3"
    assert slurm_run_id({"SLURM_JOB_ID": "77"}) == "77" and slurm_run_id({}) is None


def _wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the offline run's .wandb file, through wandb's own reader (``wandb leet inspect``)."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(offline)],
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_offline_wandb_run_holds_the_probe_history(tmp_path: Path, corpus: str, cache: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # a requeued job keeps its id, so its W&B run continues
    overlay = tmp_path / "overlay.yaml"
    callback = {"class_path": "clipprobe.training.callbacks.BiasProbeCallback", "init_args": {
        "probes": ["tor", "ior"], "probe_sets": ["comco"], "generate": SMALL, "options": TOR, "every_n_steps": 2,
        "cache_dir": cache, "benchmarks": ["comco-objects"], "benchmark_every_n_steps": 4,
        "benchmark_generate": {"comco-objects": {"per_class": 2, "image_size": 32}}}}  # fmt: skip
    overlay.write_text(json.dumps({"trainer": {"callbacks": [callback]}}))  # JSON is YAML
    run = tmp_path / "run"
    main(["fit", "--config", str(ROOT / "configs/fit/tiny-synthetic.yaml"), "--config", str(overlay),
          "--data.train_data", corpus, "--data.batch_size", "8", "--data.num_workers", "0", "--data.num_samples", "64",
          "--trainer.accelerator", "cpu", "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(run), "--trainer.val_check_interval", "100", "--trainer.log_every_n_steps", "1"])  # fmt: skip
    records = _wandb_records(run)
    (start,) = [r["run"] for r in records if r["type"] == "run"]
    assert start["run_id"] == "4242"
    config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
    config.update(start.get("config", {}).get("update", {}))
    assert config["model"]["model_name"] == "clipprobe-tiny" and config["trainer"]["max_steps"] == 4
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert {"glob_name": "probe/*", "step_metric": "train/samples_seen"}.items() <= {
        k: v for m in metrics if m.get("glob_name") == "probe/*" for k, v in m.items()}.items()  # fmt: skip
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    key = "probe/comco/tor/n2/share_1_all"
    probed = [h for h in history if key in h]
    assert [h["trainer/global_step"] for h in probed] == [0, 2, 4]
    assert [h["train/samples_seen"] for h in probed] == [0, 16, 32]
    logged = [r.metric(key.split("/", 3)[3]).value for r in read_records(run / "probes.jsonl") if r.probe == "tor"]
    assert [h[key] for h in probed] == pytest.approx(logged)
    assert {"glob_name": "eval/*", "step_metric": "train/samples_seen"}.items() <= {
        k: v for m in metrics if m.get("glob_name") == "eval/*" for k, v in m.items()}.items()  # fmt: skip
    zero_shot = [h for h in history if "eval/comco-objects/acc1" in h]  # its own cadence: every 4 steps
    assert [(h["trainer/global_step"], h["train/samples_seen"]) for h in zero_shot] == [(0, 0), (4, 32)]
    own = [r.metric("acc1").value for r in read_records(run / "probes.jsonl") if r.probe == "zeroshot_classification"]
    assert [h["eval/comco-objects/acc1"] for h in zero_shot] == pytest.approx(own)
    tables = [h for h in history if h.get("probe_shares/comco/tor._type") == "table-file"]  # per-position shares
    assert [h["trainer/global_step"] for h in tables] == [0, 2, 4] and any("train/loss" in h for h in history)
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()
