"""The synthetic corpus: img2dataset layout, mention-order policies, determinism, bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipprobe.cli import main
from clipprobe.data.corpus import caption, join_names, parse_counts, with_article


def _make(out: Path, *extra: str) -> Path:
    main(["data", "corpus", "--out", str(out), "--num-samples", "30", "--shard-size", "12", "--image-size", "48",
          "--progress", "false", *extra])  # fmt: skip
    return out


def _samples(root: Path) -> list[dict]:
    rows = []
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar) as tf:
            files = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for key in sorted({n.split(".")[0] for n in files}):
            meta = json.loads(files[f"{key}.json"])
            rows.append({"key": key, "jpg": files[f"{key}.jpg"], "txt": files[f"{key}.txt"].decode(), "meta": meta})
    return rows


def test_layout_and_metadata(tmp_path: Path) -> None:
    root = _make(tmp_path / "c", "--workers", "1")
    assert sorted(p.name for p in root.iterdir()) == [
        "00000.tar", "00000_stats.json", "00001.tar", "00001_stats.json", "00002.tar", "00002_stats.json",
        "corpus.json",
    ]  # fmt: skip
    stats = [json.loads((root / f"{s:05d}_stats.json").read_text()) for s in range(3)]
    assert [s["successes"] for s in stats] == [12, 12, 6]
    rows = _samples(root)
    assert len(rows) == 30 and rows[0]["key"] == "000000000" and rows[-1]["key"] == "000020005"
    for row in rows:
        meta = row["meta"]
        n = len(meta["objects"])
        assert 1 <= n <= 4 and len(meta["areas"]) == n and len(meta["boxes"]) == n
        assert sorted(meta["mentioned"]) == sorted(meta["objects"]) and meta["caption"] == row["txt"]
        positions = [row["txt"].index(name) for name in meta["mentioned"]]
        assert positions == sorted(positions), row["txt"]  # named in the recorded order
        with Image.open(io.BytesIO(row["jpg"])) as im:
            assert im.size == (48, 48) and im.format == "JPEG"
        for x0, y0, x1, y1 in meta["boxes"]:
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
        assert all(a >= 0 for a in meta["areas"]) and sum(meta["areas"]) <= 48 * 48
    manifest = json.loads((root / "corpus.json").read_text())
    assert manifest["params"]["num_samples"] == 30 and manifest["num_shards"] == 3


@pytest.mark.parametrize(("order", "pick"), [("size_first", np.argmax), ("small_first", np.argmin)])
def test_order_policy_with_p_one(tmp_path: Path, order: str, pick) -> None:
    rows = _samples(_make(tmp_path / order, "--order", order, "--p-order", "1", "--objects", "2-4"))
    for row in rows:
        meta = row["meta"]
        assert meta["mentioned"][0] == meta["objects"][int(pick(meta["areas"]))]


def test_random_order_mixes(tmp_path: Path) -> None:
    rows = _samples(_make(tmp_path / "r", "--order", "random", "--objects", "3"))
    first_is_largest = [r["meta"]["largest_first"] for r in rows]
    assert 0 < sum(first_is_largest) < len(rows)  # neither always nor never (30 samples of 3 objects)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    a = _make(tmp_path / "a", "--workers", "1")
    b = _make(tmp_path / "b", "--workers", "2")
    for name in ("00000.tar", "00002.tar", "00001_stats.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = _make(tmp_path / "c", "--seed", "1")
    assert (a / "00000.tar").read_bytes() != (c / "00000.tar").read_bytes()


def test_captions() -> None:
    assert (
        join_names(["a"]) == "a" and join_names(["a", "b"]) == "a and b" and join_names(["a", "b", "c"]) == "a, b and c"
    )
    assert with_article("apple") == "an apple" and with_article("dog") == "a dog"
    assert with_article("skis") == "a pair of skis"
    assert caption(["dog", "apple", "car"], 6) == "dog, apple and car in one picture."
    assert caption(["dog", "apple"], 0) == "a photo of a dog and an apple."
    assert parse_counts("1-4") == (1, 2, 3, 4) and parse_counts("2,3") == (2, 3) and parse_counts("3") == (3,)


def test_templates_name_only_the_objects() -> None:
    """A template word that a mention matcher reads as an object ("on a table") would corrupt the statistics."""
    from clipprobe.analysis.mentions import COCO_SYNONYMS, Matcher
    from clipprobe.data.corpus import TEMPLATES
    from clipprobe.data.vocab import COCO_NAMES

    matcher = Matcher(COCO_NAMES, COCO_SYNONYMS)
    for t in range(len(TEMPLATES)):
        assert matcher.find(caption(["dog", "hot dog", "eye glasses"], t)) == ["dog", "hot dog", "eye glasses"], t


@pytest.mark.parametrize(
    "args",
    [
        ["--order", "largest"],
        ["--objects", "0-2"],
        ["--objects", "two"],
        ["--p-order", "1.5"],
        ["--num-samples", "0"],
        ["--image-size", "8"],
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["data", "corpus", "--out", str(tmp_path / "x"), "--progress", "false", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipprobe: error:") and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_refuses_non_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        _make(out)
    assert e.value.code == 2 and (out / "keep.txt").read_text() == "mine"


def test_shard_bytes_do_not_depend_on_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """webdataset's TarWriter stamps members with time.time() unless given an mtime: the corpus pins it."""
    import time

    a = _make(tmp_path / "a", "--workers", "1", "--num-samples", "5")
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.5)
    b = _make(tmp_path / "b", "--workers", "1", "--num-samples", "5")
    monkeypatch.undo()
    assert (a / "00000.tar").read_bytes() == (b / "00000.tar").read_bytes()
    with tarfile.open(a / "00000.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:3]] == ["000000000.jpg", "000000000.json", "000000000.txt"]
    assert {m.mtime for m in members} == {0} and all(m.isreg() and not m.pax_headers for m in members)


def test_hidden_objects_are_not_named(tmp_path: Path) -> None:
    """An object covered by those pasted after it (no visible pixel) is in neither the caption nor key.json.

    Six objects in 16 px images: about one sample in ten has a hidden one.
    """
    from clipprobe.analysis.mentions import Matcher
    from clipprobe.data.sprites import object_names

    main(["data", "corpus", "--out", str(tmp_path / "h"), "--num-samples", "120", "--shard-size", "60",
          "--image-size", "16", "--objects", "6", "--p-size-word", "0.5", "--workers", "1", "--progress", "false"])  # fmt: skip
    matcher = Matcher(object_names("comco"))
    rows = _samples(tmp_path / "h")
    for row in rows:
        meta = row["meta"]
        assert all(area > 0 for area in meta["areas"]), meta
        assert len(meta["objects"]) == len(meta["areas"]) == len(meta["boxes"]) >= 1
        assert sorted(matcher.find(row["txt"])) == sorted(meta["objects"]) == sorted(meta["mentioned"]), row["txt"]
    assert any(len(row["meta"]["objects"]) < 6 for row in rows)  # some objects were hidden, and left out
    assert json.loads((tmp_path / "h" / "corpus.json").read_text())["generator_version"] == 3
