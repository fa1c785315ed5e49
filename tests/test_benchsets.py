"""Offline zero-shot sets (clipprobe.data.benchsets): CLIP_benchmark's own reader and CLI read them, same seed
same bytes, one object per image and per_class images per class, the cache, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipprobe import cli
from clipprobe.data import benchsets as bs
from clipprobe.data.corpus import CorpusConfig, generate_corpus, make_sample
from clipprobe.data.render import background
from clipprobe.data.sprites import object_names
from clipprobe.errors import UserError
from clipprobe.probes import captions

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
OBJECTS = {"per_class": 2, "image_size": SIZE, "shard_size": 50}  # comco: 138 images in 3 shards
HELDOUT = {"num_samples": 20, "shard_size": 8}  # 3 shards
# CLIP_benchmark's reader builds its WebDataset without shardshuffle, which webdataset warns about
pytestmark = pytest.mark.filterwarnings(r"ignore:WebDataset\(shardshuffle=\.\.\.\) is None:UserWarning")


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``clipprobe argv`` in process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _make(name: str, out: Path, **params: object) -> Path:
    return bs.generate_benchset(bs.resolve_benchset(name, **params), out, progress=False)


def _tar_samples(root: Path, split: str = "test") -> list[dict[str, bytes]]:
    """Every sample of a set's split, shards in order (0.tar, 1.tar, ...), members by extension."""
    rows = []
    for s in range(int((root / split / "nshards.txt").read_text())):
        with tarfile.open(root / split / f"{s}.tar") as tf:
            members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
        keys = list(dict.fromkeys(n.split(".")[0] for n, _ in members))
        rows += [{n.split(".", 1)[1]: data for n, data in members if n.split(".")[0] == k} | {"__key__": k}
                 for k in keys]  # fmt: skip
    return rows


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _to_tensor():
    import torchvision.transforms as T

    return T.ToTensor()


@pytest.fixture(scope="module")
def comco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make("comco-objects", tmp_path_factory.mktemp("bench") / "comco", **OBJECTS)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make("heldout", tmp_path_factory.mktemp("bench") / "heldout", **HELDOUT)


def test_templates_are_the_study_caption_forms() -> None:
    assert bs.TEMPLATES[0] == "{c}"  # the tor probe's reference texts: shared text embeddings
    for kind in ("comco", "simco"):
        for name in object_names(kind):
            for template, form in zip(bs.TEMPLATES, bs.TEMPLATE_NAMES, strict=True):
                assert template.format(c=name) == captions.render(form, [name])


def test_layout(comco: Path, heldout: Path) -> None:
    assert sorted(p.name for p in comco.iterdir()) == [
        "classnames.txt", "clipprobe.json", "test", "zeroshot_classification_templates.txt",
    ]  # fmt: skip
    assert sorted(p.name for p in (comco / "test").iterdir()) == ["0.tar", "1.tar", "2.tar", "nshards.txt"]
    assert (comco / "test" / "nshards.txt").read_text() == "3\n"
    assert (comco / "classnames.txt").read_text().splitlines() == list(object_names("comco"))
    manifest = json.loads((comco / "clipprobe.json").read_text())
    assert manifest["num_samples"] == 138 and manifest["num_classes"] == 69 and manifest["per_class"] == 2
    assert manifest["generator_version"] == bs.GENERATOR_VERSION and manifest["kind"] == "comco"
    assert manifest["params"]["image_size"] == SIZE and manifest["templates"] == list(bs.TEMPLATES)
    assert manifest["key"] == bs.resolve_benchset("comco-objects", **OBJECTS).key()
    assert sorted(p.name for p in heldout.iterdir()) == ["clipprobe.json", "dataset_type.txt", "test"]
    assert (heldout / "dataset_type.txt").read_text().strip() == "retrieval"
    assert sorted(p.name for p in (heldout / "test").iterdir()) == ["0.tar", "1.tar", "2.tar", "nshards.txt"]
    manifest = json.loads((heldout / "clipprobe.json").read_text())
    assert manifest["params"]["seed"] == bs.HELDOUT_SEED and manifest["params"]["image_size"] == 64
    assert manifest["num_samples"] == 20 and manifest["task"] == "zeroshot_retrieval"
    assert bs.benchset_task("comco-objects") == bs.benchset_task("simco-objects") == "zeroshot_classification"
    assert bs.benchset_task("heldout") == "zeroshot_retrieval"
    with pytest.raises(UserError, match="unknown benchset"):
        bs.benchset_task("imagenet")


def test_clip_benchmark_reads_classification(comco: Path) -> None:
    from clip_benchmark.datasets.builder import build_dataset

    ds = build_dataset("wds/comco-objects", root=str(comco), transform=_to_tensor(), split="test", download=False,
                       task="zeroshot_classification")  # fmt: skip
    assert ds.classes == list(object_names("comco"))
    assert ds.templates == list(bs.TEMPLATES)
    items = list(ds)
    assert len(items) == 138
    assert [label for _, label in items] == [i % 69 for i in range(138)]
    assert all(tuple(image.shape) == (3, SIZE, SIZE) for image, _ in items)
    metas = [json.loads(row["json"]) for row in _tar_samples(comco)]
    assert [m["label"] for m in metas] == [label for _, label in items]
    assert [m["name"] for m in metas] == [ds.classes[label] for _, label in items]


def test_clip_benchmark_reads_retrieval(heldout: Path) -> None:
    from clip_benchmark.datasets.builder import build_dataset

    ds = build_dataset("wds/heldout", root=str(heldout), transform=_to_tensor(), split="test", download=False,
                       task="zeroshot_retrieval")  # fmt: skip
    items = list(ds)
    cfg = bs.resolve_benchset("heldout", **HELDOUT)
    expected = [make_sample(cfg.corpus_config(), i, object_names("comco")) for i in range(20)]
    assert [texts for _, texts in items] == [[text] for _, text, _ in expected]
    to_tensor = _to_tensor()
    for (image, _), (jpg, _, _) in zip(items, expected, strict=True):
        with Image.open(io.BytesIO(jpg)) as im:
            assert (image == to_tensor(im.convert("RGB"))).all()


def test_same_seed_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"per_class": 1, "image_size": SIZE, "shard_size": 7}
    a = _make("simco-objects", tmp_path / "a", **params)
    h = _make("heldout", tmp_path / "h", **HELDOUT)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 86_400)  # a day later: no clock in the bytes
    b = _make("simco-objects", tmp_path / "b", **params)
    h2 = _make("heldout", tmp_path / "h2", **HELDOUT)
    assert _files(a) == _files(b) and len(_files(a)) == 3 + 3 + 1  # 18 images in 3 shards, nshards, 3 side files
    assert _files(h) == _files(h2)
    c = _make("simco-objects", tmp_path / "c", **params, seed=1)
    assert (c / "test" / "0.tar").read_bytes() != (a / "test" / "0.tar").read_bytes()
    assert (c / "classnames.txt").read_bytes() == (a / "classnames.txt").read_bytes()
    h3 = _make("heldout", tmp_path / "h3", **HELDOUT, seed=5)
    assert (h3 / "test" / "0.tar").read_bytes() != (h / "test" / "0.tar").read_bytes()


def test_one_object_per_image_and_per_class_images(comco: Path) -> None:
    rows = _tar_samples(comco)
    labels = [int(row["cls"]) for row in rows]
    assert Counter(labels) == dict.fromkeys(range(69), 2)
    backdrop = np.asarray(background(SIZE), dtype=np.int16)
    lo, hi = bs.object_sizes(SIZE)
    by_class: dict[int, list[dict]] = {}
    for row in rows:
        meta = json.loads(row["json"])
        with Image.open(io.BytesIO(row["png"])) as im:
            assert im.format == "PNG" and im.size == (SIZE, SIZE)
            pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
        x0, y0, x1, y1 = meta["box"]
        assert lo <= x1 - x0 == y1 - y0 <= hi and 0 <= x0 and 0 <= y0 and x1 <= SIZE and y1 <= SIZE
        bx0, by0, bx1, by1 = meta["bbox"]  # the object's opaque pixels lie inside the box it was drawn in
        assert x0 <= bx0 < bx1 <= x1 and y0 <= by0 < by1 <= y1 and meta["area"] > 0
        changed = (pixels != backdrop).any(axis=2)
        assert changed[by0:by1, bx0:bx1].any()  # the object is there
        outside = changed.copy()
        outside[y0:y1, x0:x1] = False
        # outside its box only its shadow: grey, darker than the backdrop (no second object)
        diff = pixels[outside] - backdrop[outside]
        assert (diff <= 0).all() and (np.ptp(pixels[outside], axis=1) <= 4).all()
        by_class.setdefault(meta["label"], []).append({"png": row["png"], **meta})
    sizes_differ = 0
    for label, pair in by_class.items():
        assert [p["name"] for p in pair] == [object_names("comco")[label]] * 2
        assert pair[0]["png"] != pair[1]["png"]
        sizes_differ += pair[0]["box"][2] - pair[0]["box"][0] != pair[1]["box"][2] - pair[1]["box"][0]
    assert sizes_differ > 40  # random sizes: most pairs differ in size


def test_ensure_benchset_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"per_class": 1, "image_size": SIZE}
    path = bs.ensure_benchset("simco-objects", cache_dir=tmp_path, **params)
    assert path.parent == tmp_path and path.name.startswith("simco-objects-") and len(path.name) == 14 + 16
    assert (path / "clipprobe.json").is_file() and (path / "test" / "0.tar").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    monkeypatch.setattr(bs, "generate_benchset", lambda *a, **k: pytest.fail("regenerated a cached set"))
    # defaults filled in before hashing; the progress bar is not content
    again = bs.ensure_benchset("simco-objects", cache_dir=tmp_path, **params, seed=0, split="test", progress=True)
    assert again == path
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == stamps
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "probesets"))
    assert bs.default_benchset_dir() == tmp_path / "benchsets"
    monkeypatch.undo()
    other = bs.ensure_benchset("simco-objects", cache_dir=tmp_path, **params, seed=1)
    assert other != path and other.parent == tmp_path
    held = bs.ensure_benchset("heldout", cache_dir=tmp_path, num_samples=3)
    assert held.name.startswith("heldout-") and (held / "dataset_type.txt").is_file()
    assert bs.resolve_benchset("heldout", num_samples=3).key() != bs.resolve_benchset("heldout", num_samples=4).key()


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"out": "x"}, "cannot be set for a cached set"),
        ({"bogus": 1}, "unknown benchset option"),
        ({"per_class": "2"}, "--per-class must be a whole number"),
        ({"per_class": True}, "--per-class must be a whole number"),
        ({"num_samples": 3}, "applies to heldout only"),
    ],
)
def test_ensure_benchset_refuses_bad_params(tmp_path: Path, params: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        bs.ensure_benchset("comco-objects", cache_dir=tmp_path, **params)
    assert list(tmp_path.iterdir()) == []


BAD = [
    (["imagenet"], "unknown benchset 'imagenet'"),
    (["comco-objects", "--per-class", "0"], "--per-class must be at least 1"),
    (["comco-objects", "--image-size", "16"], "--image-size must be between 24"),
    (["simco-objects", "--image-size", "5000"], "--image-size must be between 24"),
    (["comco-objects", "--num-samples", "5"], "--num-samples applies to heldout only"),
    (["simco-objects", "--order", "random"], "--order applies to heldout only"),
    (["heldout", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["heldout", "--per-class", "3"], "--per-class applies to comco-objects and simco-objects only"),
    (["heldout", "--image-size", "8"], "--image-size must be between 16 and 1024"),
    (["heldout", "--order", "alphabetical"], "unknown --order 'alphabetical'"),
    (["heldout", "--p-order", "1.5"], "--p-order must lie in [0, 1]"),
    (["heldout", "--objects", "0-9"], "--objects '0-9'"),
    (["heldout", "--seed", "-1"], "--seed must be 0 or more"),
    (["heldout", "--shard-size", "0"], "--shard-size must be at least 1"),
    (["heldout", "--num-samples", "200001", "--shard-size", "1"], "shards (limit"),
    (["comco-objects", "--split", "../up"], "--split '../up' is not a folder name"),
    (["comco-objects", "--corpus", "somewhere"], "--corpus converts a corpus to heldout"),
    (["heldout", "--corpus", "somewhere", "--seed", "3"], "--seed does not apply"),
    (["heldout", "--corpus", "no/such/corpus"], "shards not found"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _run(["data", "benchset", *args, "--out", str(out), "--progress", "false"])
    assert code == 2, stderr
    assert stderr.startswith("clipprobe: error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert stdout == "" and list(tmp_path.iterdir()) == []


def test_refuses_non_empty_out_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["data", "benchset", "heldout", "--out", str(out), "--num-samples", "2", "--progress", "false"]
    code, _, stderr = _run(args)
    assert code == 2 and "is not empty; pass --overwrite true" in stderr and stderr.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["out"]
    code, stdout, _ = _run([*args, "--overwrite"])
    assert code == 0 and "clip_benchmark eval --dataset wds/heldout" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["clipprobe.json", "dataset_type.txt", "test"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary left


def test_convert_corpus(tmp_path: Path) -> None:
    from clip_benchmark.datasets.builder import build_dataset

    corpus = generate_corpus(CorpusConfig(10, (1, 2), "size_first", 1.0, 0.0, 24, 4, 0, 90), tmp_path / "corpus",
                             workers=1, progress=False)  # fmt: skip
    out = tmp_path / "held"
    code, _, stderr = _run(["data", "benchset", "heldout", "--corpus", str(corpus), "--out", str(out),
                            "--shard-size", "3", "--progress", "false"])  # fmt: skip
    assert code == 0, stderr
    assert (out / "test" / "nshards.txt").read_text() == "4\n"
    ds = build_dataset("wds/heldout", root=str(out), transform=_to_tensor(), split="test", download=False,
                       task="zeroshot_retrieval")  # fmt: skip
    corpus_rows = []
    for tar in sorted(corpus.glob("*.tar")):
        with tarfile.open(tar) as tf:
            corpus_rows += [tf.extractfile(m).read().decode() for m in tf.getmembers() if m.name.endswith(".txt")]
    assert [texts for _, texts in ds] == [[t] for t in corpus_rows] and len(corpus_rows) == 10
    code, _, stderr = _run(["data", "benchset", "heldout", "--corpus", str(corpus), "--out", str(corpus),
                            "--overwrite", "--progress", "false"])  # fmt: skip
    assert code == 2 and "holds the input" in stderr and len(list(corpus.glob("*.tar"))) == 3


@pytest.mark.slow
def test_clip_benchmark_cli_evaluates_both_sets(comco: Path, heldout: Path, tmp_path: Path) -> None:
    """CLIP_benchmark's own command line on a random clipprobe-tiny export (open_clip's ``local-dir:``)."""
    import torch

    from clipprobe.models import create_random_model
    from clipprobe.models.export import export_folder

    torch.manual_seed(0)
    export = export_folder(create_random_model("clipprobe-tiny").eval(), tmp_path / "export", "clipprobe-tiny")
    tool = Path(sys.executable).parent / "clip_benchmark"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, root, metric in (("comco-objects", comco, "acc1"), ("heldout", heldout, "image_retrieval_recall@5")):
        out = tmp_path / f"{name}.json"
        subprocess.run([str(tool), "eval", "--dataset", f"wds/{name}", "--dataset_root", str(root), "--model",
                        f"local-dir:{export}", "--pretrained", "", "--task", bs.benchset_task(name), "--num_workers",
                        "0", "--no_amp", "--batch_size", "16", "--output", str(out)],
                       check=True, cwd=tmp_path, env=env, capture_output=True, timeout=300)  # fmt: skip
        result = json.loads(out.read_text())
        assert result["dataset"] == f"wds/{name}" and result["task"] == bs.benchset_task(name)
        assert 0.0 <= result["metrics"][metric] <= 1.0
