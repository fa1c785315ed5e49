"""Standard evaluation beside the bias (clipprobe.probes.standard): zero-shot classification and retrieval through
CLIP_benchmark, in `clipprobe eval` and in the training callback; each image and text encoded once; bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image

from clipprobe.cli import main
from clipprobe.evaluation.records import read_records
from clipprobe.evaluation.runner import ModelInfo, Target, run_evaluation
from clipprobe.models import create_random_model
from clipprobe.probes.encode import CachedEncoder
from clipprobe.probes.standard import resolve_benchmark

ROOT = Path(__file__).parents[1]
SMALL_SETS = {"comco-objects": {"per_class": 2, "image_size": 32}, "heldout": {"num_samples": 40, "image_size": 32}}


def png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="png")
    return buf.getvalue()


def colour_set(root: Path, repeats: int = 3) -> Path:
    """A CLIP_benchmark webdataset classification set: 3 colour classes, 2 distinct images each, each image
    ``repeats`` times (so 6 distinct images among 6 x repeats samples)."""
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    (root / "zeroshot_classification_templates.txt").write_text("{c}\na photo of a {c}.\n")
    shades = {0: [(255, 0, 0), (200, 20, 20)], 1: [(0, 255, 0), (20, 200, 20)], 2: [(0, 0, 255), (20, 20, 200)]}
    with wds.TarWriter(str(root / "test" / "0.tar")) as sink:
        i = 0
        for label, colours in shades.items():
            for rgb in colours * repeats:
                sink.write({"__key__": f"s{i:06d}", "png": png(rgb), "cls": str(label).encode()})
                i += 1
    (root / "test" / "nshards.txt").write_text("1\n")
    return root


@pytest.fixture()
def encoder() -> CachedEncoder:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    torch.manual_seed(0)
    model = create_random_model("clipprobe-tiny").eval()
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return CachedEncoder(model, preprocess, open_clip.get_tokenizer("clipprobe-tiny"), "cpu", 16, progress=False)


ABOUT = ModelInfo("clipprobe-tiny", {"kind": "random", "seed": 0})


def test_each_image_and_prompt_is_encoded_once(tmp_path: Path, encoder: CachedEncoder) -> None:
    """18 samples of 6 distinct images: 6 images encoded; the same set again under another name: none; the class
    prompt "{c}" equals tor's bare reference text, so a tor run on the class names first leaves only the other
    template's 3 prompts to encode."""
    bench = resolve_benchmark("wds/colours", str(colour_set(tmp_path / "colours")))
    again = resolve_benchmark("wds/colours2", str(colour_set(tmp_path / "colours2")))
    vocab = Target("vocab-colours", None, ["red", "green", "blue"], "colours")
    opts = {"tor": {"n": [2], "num_captions": 4, "mode": "balanced"}}
    (tor,) = run_evaluation(encoder, [(vocab, "tor")], opts, ABOUT, progress=False)
    texts = encoder.texts_encoded
    (first,) = run_evaluation(encoder, [(Target(bench.label, dataset=bench), "zeroshot_classification")], opts, ABOUT,
                              progress=False)  # fmt: skip
    assert encoder.images_encoded == 6
    assert encoder.texts_encoded - texts == 3  # "a photo of a red." etc.; "{c}" prompts were tor's
    (second,) = run_evaluation(encoder, [(Target(again.label, dataset=again), "zeroshot_classification")], opts,
                               ABOUT, progress=False)  # fmt: skip
    assert encoder.images_encoded == 6 and encoder.texts_encoded - texts == 3
    assert [m.to_json() for m in first.metrics] == [m.to_json() for m in second.metrics]
    acc1 = first.metric("acc1")
    assert acc1.count == 18 and acc1.chance == pytest.approx(1 / 3) and first.metric("acc5") is None  # 3 classes
    assert acc1.value * 18 == pytest.approx(round(acc1.value * 18))
    assert first.probe_set["kind"] == "benchmark" and first.target == "wds-colours"


def test_keep_inputs_replays_decoded_batches(tmp_path: Path, encoder: CachedEncoder) -> None:
    """The callback's encoder keeps a set's decoded batches: the second evaluation reads no file."""
    bench = resolve_benchmark("wds/colours", str(colour_set(tmp_path / "colours")))
    encoder.keep_inputs = True
    work = [(Target(bench.label, dataset=bench), "zeroshot_classification")]
    (first,) = run_evaluation(encoder, work, None, ABOUT, progress=False)
    (tmp_path / "colours" / "test" / "0.tar").write_bytes(b"")  # a replay must not read it
    encoder.refresh()
    (second,) = run_evaluation(encoder, work, None, ABOUT, progress=False)
    assert [m.to_json() for m in first.metrics] == [m.to_json() for m in second.metrics]
    fresh = CachedEncoder(encoder.model, encoder.preprocess, encoder.tokenizer, "cpu", 16, progress=False)
    with pytest.raises(Exception):  # noqa: B017  (without kept batches the emptied shard is read)
        list(run_evaluation(fresh, work, None, ABOUT, progress=False))


def cb_json(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["metrics"]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("one_thread")
def test_callback_and_eval_agree_with_clip_benchmarks_own_cli(tmp_path: Path, corpus: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A tiny CLIP trained 6 steps with the callback running the offline standard tasks (every 3 steps) beside tor
    (every 2). Then: the run's records and metrics.csv hold eval/<set>/<metric> at steps 0, 3, 6 (tor at 0, 2, 4,
    6); `clipprobe eval --checkpoints RUN` reproduces them; and `clip_benchmark eval`, run as its own CLI on the
    step-6 export and the same dataset folders, gives exactly clipprobe's numbers."""
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache" / "probesets"))
    run = tmp_path / "run"
    recipe = yaml.safe_load((ROOT / "configs/fit/tiny-synthetic.yaml").read_text())
    recipe["trainer"]["callbacks"] = [{"class_path": "clipprobe.training.callbacks.BiasProbeCallback", "init_args": {
        "probes": ["tor"], "probe_sets": [], "vocab": "simco", "options": {"tor": {"num_captions": 20, "n": [2]},
        "zeroshot_retrieval": {"recall_k": [1, 5]}}, "every_n_steps": 2, "benchmarks": ["comco-objects", "heldout"],
        "benchmark_every_n_steps": 3, "benchmark_generate": SMALL_SETS}}]  # fmt: skip
    recipe["trainer"]["logger"] = [{"class_path": "clipprobe.training.loggers.CSVLogger"}]
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    main(["fit", "--config", str(tmp_path / "recipe.yaml"), "--model.compile", "false", "--data.num_workers", "0",
          "--data.shuffle_buffer", "16", "--data.batch_size", "8", "--data.train_data", corpus,
          "--trainer.accelerator", "cpu", "--trainer.max_steps", "6", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(run), "--checkpoint.every_n_train_steps", "3"])  # fmt: skip
    own = read_records(run / "probes.jsonl")
    assert sorted((r.step, r.probe) for r in own) == sorted(
        [(s, "tor") for s in (0, 2, 4, 6)] + [(s, p) for s in (0, 3, 6) for p in ("zeroshot_classification",
                                                                                    "zeroshot_retrieval")])  # fmt: skip
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"eval/comco-objects/acc1", "eval/heldout/image_retrieval_recall@1", "probe/vocab-simco/tor/n2/closest_1"} \
        <= set(header)  # fmt: skip
    out = tmp_path / "results"
    assert main(["eval", "--checkpoints", str(run), "--device", "cpu", "--progress", "false", "--out", str(out)]) == 0
    evaluated = read_records(sorted(out.glob("*zeroshot*.jsonl")))
    assert sorted((r.step, r.probe) for r in evaluated) == sorted(
        (s, p) for s in (0, 3, 6) for p in ("zeroshot_classification", "zeroshot_retrieval"))  # fmt: skip
    mine = {(r.step, r.probe): r for r in own}
    for r in evaluated:
        theirs = mine[(r.step, r.probe)]
        assert r.probe_set["manifest_sha256"] == theirs.probe_set["manifest_sha256"]
        assert [(m.name, m.count) for m in r.metrics] == [(m.name, m.count) for m in theirs.metrics]
        for m, t in zip(r.metrics, theirs.metrics, strict=True):
            assert m.value == pytest.approx(t.value, abs=1e-9), (r.step, m.name)

    export = run / "checkpoints" / "step=00000006"
    last = {r.probe: r for r in evaluated if r.step == 6}
    for probe, extra in (("zeroshot_classification", []), ("zeroshot_retrieval", ["--recall_k", "1", "5"])):
        record = last[probe]
        result = tmp_path / f"{probe}.json"
        subprocess.run([str(Path(sys.executable).parent / "clip_benchmark"), "eval", "--dataset",
                        record.probe_set["name"], "--dataset_root", record.probe_set["path"], "--model",
                        f"local-dir:{export}", "--pretrained", "", "--task", probe, "--num_workers", "0", "--no_amp",
                        "--batch_size", "64", "--output", str(result), "--quiet", *extra],
                       check=True, capture_output=True)  # fmt: skip
        theirs = cb_json(result)
        assert {m.name: m.value for m in record.metrics} == theirs, probe
    assert last["zeroshot_classification"].metric("acc1").count == 69 * 2


def eval_error(capsys: pytest.CaptureFixture[str], out: Path, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "clipprobe-tiny", "--progress", "false", "--device", "cpu", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("clipprobe: error:") and err.count("\n") == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--benchmarks", "imagenet2k"], "unknown dataset 'imagenet2k'"),
        (["--benchmarks", "cifar10"], "needs --dataset_root"),
        (["--benchmarks", "winoground", "--dataset_root", "."], "not zero-shot classification or retrieval"),
        (["--benchmarks", "vtab/cifar10", "--dataset_root", "."], "tensorflow-datasets"),
        (["--benchmarks", "[comco-objects,comco-objects]"], "listed twice"),
        (["--probes", "[]"], "nothing to run"),
        (["--probes", "zeroshot_classification"], "is a standard task, not a probe"),
        (["--benchmarks", "comco-objects", "--benchmark_generate", "{comco-objects: {per_class: 0}}"], "per"),
        (["--benchmarks", "heldout", "--options", "{zeroshot_retrieval: {recall_k: [0]}}"], "recall_k"),
    ],
)
def test_bad_standard_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, argv: list[str], said: str) -> None:  # fmt: skip
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache" / "probesets"))
    given = argv if argv[0] == "--probes" else ["--probes", "[]", *argv]
    assert said in eval_error(capsys, tmp_path / "out", *given)


def test_a_dataset_that_needs_a_download_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cifar10 in an empty folder (torchvision would download it): one line, before any model is built."""
    (tmp_path / "data").mkdir()
    err = eval_error(capsys, tmp_path / "out", "--probes", "[]", "--benchmarks", "cifar10", "--dataset_root",
                     str(tmp_path / "data"))  # fmt: skip
    assert "cannot be read from" in err and "never downloads" in err
    err = eval_error(capsys, tmp_path / "out", "--probes", "[]", "--benchmarks", "wds/none", "--dataset_root",
                     str(tmp_path / "data"))  # fmt: skip
    assert "wds/none cannot be read" in err


def test_skip_existing_reuses_only_the_same_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun with --skip_existing reuses the record; a dataset whose files changed is evaluated again."""
    root = colour_set(tmp_path / "colours")
    argv = ["eval", "--model", "clipprobe-tiny", "--probes", "[]", "--benchmarks", "wds/colours", "--dataset_root",
            str(root), "--device", "cpu", "--progress", "false", "--out", str(tmp_path / "out"), "--skip_existing"]  # fmt: skip
    main(argv)
    (path,) = (tmp_path / "out").glob("*.jsonl")
    assert "wds-colours__zeroshot_classification" in path.name
    capsys.readouterr()
    main(argv)
    assert "skip" in capsys.readouterr().out
    (root / "classnames.txt").write_text("red\ngreen\nlight blue\n")
    main(argv)
    assert len(list((tmp_path / "out").glob("*.jsonl"))) == 2
    labels = {json.loads(p.read_text())["probe_set"]["manifest_sha256"] for p in (tmp_path / "out").glob("*.jsonl")}
    assert len(labels) == 2


def coco_captions(root: Path) -> Path:
    """A tiny mscoco_captions folder as CLIP_benchmark reads it: val2014/ images and coco_test_karpathy.json."""
    (root / "val2014").mkdir(parents=True)
    images, annotations = [], []
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (40, 30), rgb).save(root / "val2014" / name)
        images.append({"id": i, "file_name": name, "width": 40, "height": 30})
        annotations += [{"id": 10 * i + k, "image_id": i, "caption": f"a {c} picture number {i}"}
                        for k, c in enumerate(("plain", "flat"))]  # fmt: skip
    (root / "coco_test_karpathy.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


def test_mscoco_captions_from_a_local_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CLIP_benchmark dataset by its own name (not webdataset): retrieval over 4 images and 8 captions; without
    its annotation file it is refused (CLIP_benchmark would wget it into the folder) and nothing is written there."""
    root = coco_captions(tmp_path / "coco")
    out = tmp_path / "out"
    main(["eval", "--model", "clipprobe-tiny", "--probes", "[]", "--benchmarks", "mscoco_captions", "--dataset_root",
          str(root), "--options", "{zeroshot_retrieval: {recall_k: [1, 4]}}", "--device", "cpu", "--progress",
          "false", "--out", str(out)])  # fmt: skip
    (record,) = read_records(sorted(out.glob("*.jsonl")))
    assert record.probe == "zeroshot_retrieval" and record.target == "mscoco_captions"
    assert record.metric("image_retrieval_recall@4").count == 8 and record.metric("text_retrieval_recall@4").count == 4
    assert record.metric("image_retrieval_recall@4").value == 1.0  # 4 images: every caption's image is in the top 4
    (root / "coco_test_karpathy.json").unlink()
    before = sorted(p.name for p in root.iterdir())
    err = eval_error(capsys, tmp_path / "out2", "--probes", "[]", "--benchmarks", "mscoco_captions", "--dataset_root",
                     str(root))  # fmt: skip
    assert "coco_test_karpathy.json is missing" in err and sorted(p.name for p in root.iterdir()) == before


def test_report_says_when_one_name_holds_two_datasets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two folders read under one dataset name give two identities; the report says their rows are not comparable."""
    out = tmp_path / "out"
    for rgb_set in ("a", "b"):
        root = colour_set(tmp_path / rgb_set / "colours", repeats=2 if rgb_set == "a" else 3)
        main(["eval", "--model", "clipprobe-tiny", "--probes", "[]", "--benchmarks", "wds/colours", "--dataset_root",
              str(root), "--device", "cpu", "--progress", "false", "--out", str(out)])  # fmt: skip
    assert len(list(out.glob("*.jsonl"))) == 2
    capsys.readouterr()
    main(["report", str(out), "--out", str(tmp_path / "rep")])
    said = capsys.readouterr().out
    assert "wds-colours names 2 different data sets" in said
