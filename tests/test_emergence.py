"""`clipprobe experiment emergence`: corpora that differ only in caption order, and a shrunk run end to end."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from clipprobe.cli import main
from clipprobe.data.corpus import GENERATOR_VERSION, CorpusConfig, generate_corpus
from clipprobe.evaluation.records import read_records
from clipprobe.experiments.conditions import Condition, parse_condition

RECIPE = str(Path(__file__).parents[1] / "configs" / "fit" / "tiny-synthetic.yaml")
FIT_ARGS = [
    "--data.augment", "false", "--data.num_workers", "0", "--data.shuffle_buffer", "16", "--model.warmup_steps", "2",
    "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "null", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def _members(folder: Path, ext: str) -> list[bytes]:
    with tarfile.open(folder / "00000.tar") as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(ext)]  # type: ignore[union-attr]


def test_orders_share_images_and_differ_in_order(tmp_path: Path) -> None:
    """The experiment relies on it: one seed, the same scenes under every order; only captions change."""
    folders = {}
    for order in ("size_first", "random"):
        folders[order] = tmp_path / order
        generate_corpus(CorpusConfig(40, (2, 3), order, 1.0, 0.0, 32, 40, 0, 90), folders[order], workers=1,
                        progress=False)  # fmt: skip
    assert _members(folders["size_first"], ".jpg") == _members(folders["random"], ".jpg")
    metas = {o: [json.loads(b) for b in _members(f, ".json")] for o, f in folders.items()}
    assert [m["objects"] for m in metas["size_first"]] == [m["objects"] for m in metas["random"]]
    assert all(m["largest_first"] for m in metas["size_first"])
    assert not all(m["largest_first"] for m in metas["random"])


def test_parse_condition() -> None:
    assert parse_condition("size_first", 0.9) == Condition("size_first", 0.9)
    assert parse_condition("small_first:1", 0.9) == Condition("small_first", 1.0)
    assert parse_condition("random", 0.9).name == "random"
    assert parse_condition("size_first:0.5", 0.9).name == "size_first_p0.5"


@pytest.mark.parametrize("bad", ["largest_first", "size_first:x", "size_first:1.5"])
def test_bad_condition_is_a_user_error(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "emergence", "--out", str(tmp_path / "o"), "--conditions", bad, "--recipe", RECIPE])
    assert exc.value.code == 2
    assert "clipprobe: error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class _CaptionEncoder:
    """Planted: an image's embedding is its own caption's one-hot, so retrieval is perfect except where a
    batch holds the same caption twice; ``shift`` pairs each image with the next sample's caption instead."""

    model = preprocess = tokenizer = None
    device = "cpu"

    def __init__(self, paths: list[str], captions: list[str], shift: int = 0) -> None:
        self.vocab = sorted(set(captions))
        self.caption_of = {p: captions[(i + shift) % len(captions)] for i, p in enumerate(paths)}

    def _hot(self, caps: list[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([self.vocab.index(c) for c in caps]), len(self.vocab)).float()

    def encode_texts(self, texts):  # noqa: ANN001, ANN201
        return self._hot(list(texts))

    def encode_images(self, paths):  # noqa: ANN001, ANN201
        return self._hot([self.caption_of[str(p)] for p in paths])


def test_retrieval_probe_counts_whole_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clipprobe.errors import UserError
    from clipprobe.probes.base import ProbeContext
    from clipprobe.probes.retrieval import heldout_files, retrieval

    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache" / "probesets"))
    corpus = tmp_path / "heldout"
    generate_corpus(CorpusConfig(50, (1, 2), "random", 1.0, 0.0, 32, 25, 1, 90), corpus, workers=1, progress=False)
    paths, captions = heldout_files(str(corpus))
    assert len(paths) == 50 and all(Path(p).is_file() for p in paths)
    assert heldout_files(str(corpus)) == (paths, captions)  # read once, then from the cache

    def run(shift: int, batch: int) -> dict:
        ctx = ProbeContext(_CaptionEncoder(paths, captions, shift), options={"shards": str(corpus), "batch": batch})
        result = retrieval(ctx)
        return {m.name: m for m in result.entries}

    ok = run(0, 20)  # two whole batches of 20; 10 samples left out
    assert ok["recall@1"].count == 40 and ok["recall@1"].value == 1.0 and ok["recall@1"].chance == 0.05
    assert (ok["recall@5"].family, ok["recall@5"].key, ok["recall@5"].chance) == ("recall", "5", 0.25)
    off = run(1, 20)  # each image's nearest caption is its neighbour's
    same = sum(captions[i] == captions[i + 1] for i in range(40) if i % 20 != 19)  # duplicates still count
    assert off["recall@1"].value * 40 == pytest.approx(same, abs=2)
    with pytest.raises(UserError, match="fewer than one batch"):
        run(0, 60)
    with pytest.raises(UserError, match="needs a held-out corpus"):
        retrieval(ProbeContext(_CaptionEncoder(paths, captions), options={}))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_experiment_end_to_end(tmp_path: Path) -> None:
    """Two conditions (a caption order, and a named one with fit overrides: the bidirectional text tower and
    caption-order augmentation) x two seeds, 8 steps each, probed by the callback at steps 0, 4 and 8; one task run
    alone first (a SLURM array task), then the rest; a rerun reuses the runs and gives the same plot bytes."""
    out, work = tmp_path / "out", tmp_path / "work"
    config = tmp_path / "experiment.yaml"
    config.write_text(json.dumps({"conditions": ["size_first:1.0", {"name": "bidir_aug", "order": "size_first",
                                                                     "p_order": 1.0, "fit": {
        "model.model_name": "clipprobe-tiny-bidir", "data.order_augment": True}}], "seeds": [0, 1]}))  # fmt: skip
    argv = ["experiment", "run", "--config", str(config), "--out", str(out), "--work", str(work), "--recipe", RECIPE,
            "--fit-args=" + json.dumps(FIT_ARGS), "--num-samples", "96", "--heldout-samples", "40", "--steps", "8",
            "--batch-size", "12", "--every", "4", "--tor-n", "2,3", "--tor-captions", "30", "--probe-scenes", "6",
            "--retrieval-batch", "20", "--plot-n", "2", "--threads", "1", "--progress", "false"]  # fmt: skip
    main([*argv, "--task_index", "3"])  # bidir_aug, seed 1 alone: nothing written to --out
    assert not out.exists()
    alone = work / "runs" / "bidir_aug" / "seed1" / "checkpoints" / "last.ckpt"
    assert alone.is_file() and not (work / "runs" / "size_first_p1").exists()
    alone_mtime = alone.stat().st_mtime_ns
    main(argv)
    assert alone.stat().st_mtime_ns == alone_mtime  # the finished task was not redone
    assert sorted(p.name for p in out.iterdir()) == ["emergence.png", "records.jsonl", "results.md", "timing.json"]
    timing = json.loads((out / "timing.json").read_text())
    kept = json.loads((alone.parents[1] / "experiment-timing.json").read_text())["train_and_probes"]
    assert timing["bidir_aug/seed1"]["train_and_probes"] == kept > 0  # the time it took when it ran
    assert timing["bidir_aug/seed1"]["reused"] is True
    assert timing["size_first_p1/seed0"]["reused"] is False and timing["size_first_p1/seed0"]["train_and_probes"] > 0
    records = read_records(out / "records.jsonl")
    assert {r.source for r in records} == {"experiment"}
    for name in ("size_first_p1", "bidir_aug"):
        for seed in (0, 1):
            mine = [r for r in records if r.run["condition"] == name and r.run["seed"] == seed]
            assert all(r.run["dir"].endswith(f"runs/{name}/seed{seed}") for r in mine)
            assert [(r.step, r.samples_seen, r.probe) for r in mine] == [
                (step, 12 * step, p) for step in (0, 4, 8) for p in ("tor", "ior", "retrieval")]  # fmt: skip
            last = {r.probe: r for r in mine if r.step == 8}
            assert last["tor"].metric("n2/closest_1").count == 30 and last["ior"].metric("n2/closest_large").count == 12
            assert last["retrieval"].metric("recall@1").count == 40
    hp = torch.load(work / "runs" / "bidir_aug" / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert hp["hyper_parameters"]["model_name"] == "clipprobe-tiny-bidir"
    assert hp["datamodule_hyper_parameters"]["order_augment"] is True
    step0 = {(r.run["condition"], r.run["seed"], r.probe): [m.to_json() for m in r.metrics] for r in records
             if r.step == 0}  # fmt: skip
    assert step0[("size_first_p1", 0, "ior")] != step0[("size_first_p1", 1, "ior")]  # seeds initialise differently
    table = (out / "results.md").read_text()
    assert "| size_first_p1 | 96 |" in table and "| bidir_aug | 96 |" in table and "2 seeds" in table
    assert "tor share_1 n=2" in table and "run ±" in table

    before = (out / "emergence.png").read_bytes()
    mtime = (work / "runs" / "size_first_p1" / "seed0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(SystemExit):  # a non-empty --out is kept
        main(argv)
    main([*argv, "--overwrite"])
    assert (out / "emergence.png").read_bytes() == before  # same records, same bytes
    assert (work / "runs" / "size_first_p1" / "seed0" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit) as exc:  # a work folder trained with other settings is not reused
        main([*argv, "--overwrite", "--steps", "12"])
    assert exc.value.code == 2 and (out / "emergence.png").read_bytes() == before
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--task_index", "4"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:  # finished runs probed otherwise would mix two measurements
        main([*argv, "--overwrite", "--tor-captions", "20"])
    assert exc.value.code == 2 and (out / "emergence.png").read_bytes() == before

    # A corpus made by another generator version is regenerated, not reused (clipprobe 0.2's corpora named
    # hidden objects); a run folder claimed before the generator version was recorded is refused.
    manifest = work / "corpora" / "size_first_p1-s0-heldout" / "corpus.json"
    stale = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**stale, "generator_version": stale["generator_version"] - 1}))
    main([*argv, "--overwrite"])
    assert json.loads(manifest.read_text())["generator_version"] == GENERATOR_VERSION
    assert (out / "emergence.png").read_bytes() == before
    claim = work / "runs" / "size_first_p1" / "seed0" / "experiment.json"
    claim.write_text(json.dumps({k: v for k, v in json.loads(claim.read_text()).items() if k != "corpus_generator"}))
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--overwrite"])
    assert exc.value.code == 2 and (out / "emergence.png").read_bytes() == before
