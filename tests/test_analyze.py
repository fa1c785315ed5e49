"""``clipprobe analyze corpus``: statistics, sources (shards, COCO, detections), outputs and errors."""

from __future__ import annotations

import json
import math
import random
import tarfile
from pathlib import Path
from typing import Any

import pytest
import webdataset as wds

from clipprobe import cli
from clipprobe.analysis.command import corpus
from clipprobe.analysis.corpus_stats import CorpusStats, excess, kendall_tau_b
from clipprobe.analysis.sources import ShardSource, areas_from_corpus_json, load_detections
from clipprobe.data.tars import expand_urls
from clipprobe.errors import UserError

NAMES = ["dog", "cat", "car", "apple", "traffic light", "hot dog"]


# ---------------------------------------------------------------------------------------------
# Statistics


def test_kendall_tau_b() -> None:
    assert kendall_tau_b([3, 2, 1]) == 1.0
    assert kendall_tau_b([1, 2, 3]) == -1.0
    assert kendall_tau_b([2, 3, 1]) == pytest.approx(1 / 3)  # C=2 (2>1, 3>1), D=1 (2<3)
    assert kendall_tau_b([3, 1, 1]) == pytest.approx(2 / math.sqrt(3 * 2))  # one tied pair
    assert math.isnan(kendall_tau_b([5, 5]))


def test_excess_recovers_p() -> None:
    for n in (2, 3, 4):
        assert excess(0.8 + 0.2 / n, 1 / n) == pytest.approx(0.8)
    assert excess(1 / 3, 1 / 3) == 0.0
    assert excess(0.0, 0.5) == -1.0


def test_corpus_stats_tally_and_skips() -> None:
    s = CorpusStats()
    assert s.add(["dog", "cat"], {"dog": 10.0, "cat": 5.0}) is None  # largest first
    assert s.add(["cat", "dog"], {"dog": 10.0, "cat": 5.0}) is None  # largest second
    assert s.add(["a", "b", "c"], {"a": 1.0, "b": 3.0, "c": 2.0}) is None  # largest second of 3
    assert s.add(["dog", "bus", "cat"], {"dog": 1.0, "cat": 2.0}) is None  # bus unannotated: n=2, largest 2nd
    assert s.add(["dog"], {"dog": 1.0, "cat": 2.0}) == "fewer_than_2_mentions"
    assert s.add(["dog", "bus"], {"dog": 1.0}) == "fewer_than_2_annotated"
    assert s.add(["dog", "cat"], {"dog": 1.0, "cat": None}) == "object_without_area"
    assert s.add(["dog", "cat"], {"dog": 4.0, "cat": 4.0}) == "largest_tied"
    assert s.add(["dog", "cat"], None) == "no_annotations"
    s.skip("no_caption")
    out = s.summary()
    assert out["captions_seen"] == 10 and out["captions_used"] == 4
    assert out["skipped"] == {
        "no_caption": 1, "no_annotations": 1, "fewer_than_2_mentions": 1, "object_without_area": 1,
        "fewer_than_2_annotated": 1, "largest_tied": 1,
    }  # fmt: skip
    two, three = out["by_n"]["2"], out["by_n"]["3"]
    assert two["position_counts"] == [1, 2] and three["position_counts"] == [0, 1, 0]
    assert two["largest_first"] == pytest.approx(1 / 3)
    lo, hi = two["largest_first_interval"]
    assert lo < 1 / 3 < hi
    assert two["kendall_tau_mean"] == pytest.approx(-1 / 3)
    assert three["kendall_tau_mean"] == pytest.approx(-1 / 3)  # pairs (1,3) D, (1,2) D, (3,2) C
    assert out["overall"]["largest_first"] == pytest.approx(1 / 4)
    assert out["overall"]["baseline"] == pytest.approx((3 * 0.5 + 1 / 3) / 4)
    assert out["overall"]["kendall_tau_pooled"] == pytest.approx((1 - 2 + 1 - 2) / 6)
    assert out["objects"]["mentioned_not_annotated"] == 2


# ---------------------------------------------------------------------------------------------
# Shards written here, with a controlled order policy


def _policy_sample(rng: random.Random, order: str, p: float) -> tuple[str, dict[str, Any], bool]:
    n = rng.choice([2, 3])
    names = rng.sample(NAMES, n)
    areas = rng.sample(range(10, 1000), n)  # distinct: no ties
    by_size = sorted(range(n), key=lambda k: -areas[k])
    if order == "size_first" and rng.random() < p:
        rest = by_size[1:]
        rng.shuffle(rest)
        idx = [by_size[0], *rest]
    else:
        idx = list(range(n))
        rng.shuffle(idx)
    words = [names[k] + ("s" if rng.random() < 0.3 else "") for k in idx]
    caption = "A photo of " + ", ".join(words[:-1]) + " and " + words[-1] + "."
    meta = {"objects": [{"name": nm, "area": a} for nm, a in zip(names, areas, strict=True)]}
    return caption, meta, idx[0] == by_size[0]


def write_shards(folder: Path, num: int, order: str = "size_first", p: float = 0.8, per_shard: int = 100) -> int:
    """Shards of ``num`` samples; returns how many captions name the largest object first."""
    rng, first = random.Random(0), 0
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(-(-num // per_shard)):
        with wds.TarWriter(str(folder / f"{shard:05d}.tar")) as w:
            for i in range(min(per_shard, num - shard * per_shard)):
                caption, meta, largest_first = _policy_sample(rng, order, p)
                first += largest_first
                w.write(
                    {"__key__": f"{shard:05d}{i:04d}", "jpg": b"\xff\xd8", "txt": caption, "json": json.dumps(meta)}
                )
    return first


def test_shards_end_to_end(tmp_path: Path) -> None:
    first = write_shards(tmp_path / "shards", 300)
    out, pattern = tmp_path / "out", f"{tmp_path}/shards/{{00000..00002}}.tar"
    assert cli.main(["analyze", "corpus", "--shards", pattern, "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["captions_seen"] == stats["captions_used"] == 300
    assert sum(row["position_counts"][0] for row in stats["by_n"].values()) == first
    lo, hi = stats["overall"]["excess_interval"]
    assert lo < 0.8 < hi
    for n, row in stats["by_n"].items():
        lo, hi = row["largest_first_interval"]
        assert lo < 0.8 + 0.2 / int(n) < hi
        assert sum(row["position_counts"]) == row["captions"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["position_hist_n2.png", "position_hist_n3.png"]
    md = (out / "stats.md").read_text()
    assert "| 2 | " in md and "| all | 300 |" in md
    # same input, same bytes; a full --out is refused unless --overwrite
    with pytest.raises(UserError, match="not empty"):
        corpus(shards=str(tmp_path / "shards"), out=str(out), progress=False)
    again = corpus(shards=pattern, out=str(tmp_path / "again"), progress=False)
    assert (tmp_path / "again" / "stats.md").read_bytes() == md.encode()
    assert again["by_n"] == stats["by_n"]


def test_random_order_shards_sit_at_chance(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", 300, order="random")
    stats = corpus(shards=str(tmp_path / "shards"), out=str(tmp_path / "out"), max_samples=250, progress=False)
    assert stats["captions_seen"] == 250
    lo, hi = stats["overall"]["excess_interval"]
    assert lo < 0.0 < hi
    assert abs(stats["overall"]["kendall_tau_mean"]) < 0.15


def _tar_with(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    with wds.TarWriter(str(path)) as w:
        for key, parts in samples.items():
            w.write({"__key__": key, **parts})


def test_shard_skip_reasons(tmp_path: Path) -> None:
    good = {"objects": [{"name": "dog", "area": 9}, {"name": "cat", "area": 4}]}
    _tar_with(
        tmp_path / "a.tar",
        {
            "k0": {"jpg": b"x", "txt": b"a dog and a cat", "json": json.dumps(good).encode()},
            "k1": {"jpg": b"x", "json": json.dumps(good).encode()},  # no caption
            "k2": {"jpg": b"x", "txt": b"a dog and a cat", "json": b"{not json"},
            "k3": {"jpg": b"x", "txt": b"a dog and a cat", "json": b'{"url": "http://x", "status": "success"}'},
            "k4": {"jpg": b"x", "txt": b"just a dog", "json": json.dumps(good).encode()},
            "k5": {"jpg": b"x", "txt": b"a dog and a car", "json": json.dumps(good).encode()},
            "k6": {"jpg": b"x", "txt": b"a cat and a dog", "json": b'{"objects": [{"name": "dog"}, {"name": "cat"}]}'},
            "k7": {
                "jpg": b"x",
                "json": json.dumps({**good, "caption": "cats beside dogs"}).encode(),
            },  # caption in json
        },
    )
    stats = corpus(shards=str(tmp_path / "a.tar"), out=str(tmp_path / "out"), progress=False)
    assert stats["skipped"] == {
        "no_caption": 1, "bad_annotation": 1, "no_annotations": 1, "fewer_than_2_mentions": 1,
        "fewer_than_2_annotated": 1, "object_without_area": 1,
    }  # fmt: skip
    assert stats["by_n"]["2"]["position_counts"] == [1, 1]  # k0 first, k7 second
    assert "- bad_annotation: 1" in (tmp_path / "out" / "stats.md").read_text()


def test_truncated_shard_is_noted_and_the_rest_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_shards(tmp_path / "s", 200)
    data = (tmp_path / "s" / "00000.tar").read_bytes()
    (tmp_path / "s" / "00000.tar").write_bytes(data[: len(data) // 2 + 100])
    stats = corpus(shards=str(tmp_path / "s"), out=str(tmp_path / "out"), progress=False)
    assert len(stats["shard_errors"]) == 1 and "00000.tar" in stats["shard_errors"][0]
    assert 100 + 40 < stats["captions_seen"] < 200  # the whole second shard and part of the first
    assert "broke off" in capsys.readouterr().err


def test_corpus_json_layouts() -> None:
    ours = {"objects": ["dog", "cat", "dog"], "areas": [5, 7, 4], "boxes": [[0, 0, 2, 2]] * 3}
    assert areas_from_corpus_json(ours) == {"dog": 9.0, "cat": 7.0}
    rows = {"objects": [{"name": "dog", "bbox": [0, 0, 4, 5]}, {"name": "cat", "area": 3}]}
    assert areas_from_corpus_json(rows) == {"dog": 20.0, "cat": 3.0}
    assert areas_from_corpus_json({"url": "x"}) is None


def test_shard_spec_and_unknown_length(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    with pytest.raises(UserError, match=r"5 of 8 shards not found, e\.g\. .*00003\.tar; check --shards"):
        corpus(shards=f"{tmp_path}/{{00000..00007}}.tar", out=str(tmp_path / "o"), progress=False)
    assert len(ShardSource(expand_urls(str(tmp_path)))) == 0  # no _stats.json: unknown


# ---------------------------------------------------------------------------------------------
# COCO and detections


def _coco(tmp_path: Path) -> tuple[Path, Path]:
    captions = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "Two people playing with a ball."},  # persons 30+30 > ball 50
            {"id": 11, "image_id": 1, "caption": "A soccer ball and a man."},
            {"id": 12, "image_id": 2, "caption": "A dog on a sofa next to a TV."},  # couch largest, 2nd
            {"id": 13, "image_id": 3, "caption": "A kitchen with a microwave oven."},  # image 3: no instances
        ],
    }
    instances = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
            {"id": 37, "name": "sports ball"},
            {"id": 63, "name": "couch"},
            {"id": 72, "name": "tv"},
        ],  # fmt: skip
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "area": 30.0, "bbox": [0, 0, 5, 6], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "area": 30.0, "bbox": [9, 0, 5, 6], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 37, "area": 50.0, "bbox": [0, 9, 7, 7], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 18, "area": 100.0, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 63, "area": 900.0, "bbox": [0, 0, 30, 30], "iscrowd": 0},
            {"id": 6, "image_id": 2, "category_id": 72, "area": 200.0, "bbox": [0, 0, 20, 10], "iscrowd": 0},
        ],
    }
    (tmp_path / "cap.json").write_text(json.dumps(captions))
    (tmp_path / "inst.json").write_text(json.dumps(instances))
    return tmp_path / "cap.json", tmp_path / "inst.json"


def test_coco_fixture(tmp_path: Path) -> None:
    cap, inst = _coco(tmp_path)
    argv = [
        "analyze",
        "corpus",
        "--coco-captions",
        str(cap),
        "--coco-instances",
        str(inst),
        "--out",
        str(tmp_path / "o"),
    ]
    assert cli.main(argv) == 0
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["captions_seen"] == 4
    assert stats["skipped"] == {"no_annotations": 1}
    assert stats["by_n"]["2"]["position_counts"] == [1, 1]  # people (60) first; ball second after a man
    assert stats["by_n"]["3"]["position_counts"] == [0, 1, 0]  # dog, couch (largest), tv
    assert stats["by_n"]["3"]["kendall_tau_mean"] == pytest.approx(-1 / 3)


def test_detections_replace_areas(tmp_path: Path) -> None:
    cap, _ = _coco(tmp_path)
    rows = [
        {"key": "1", "detections": [{"label": "persons", "box": [0, 0, 2, 2]}, {"label": "ball", "box": [0, 0, 10, 10]}]},
        {"key": "2", "detections": [{"label": "dog", "box": [0, 0, 100, 100], "area": 10.0},
                                    {"label": "couch", "box": [0, 0, 10, 10]}, {"label": "tv", "box": [0, 0, 1, 1]}]},
    ]  # fmt: skip
    (tmp_path / "det.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_detections(tmp_path / "det.jsonl")["2"] == {"dog": 10.0, "couch": 100.0, "tv": 1.0}
    stats = corpus(
        coco_captions=str(cap), detections=str(tmp_path / "det.jsonl"), out=str(tmp_path / "o"), progress=False
    )
    assert stats["by_n"]["2"]["position_counts"] == [1, 1]  # ball (100) now largest: 2nd, then 1st
    assert stats["by_n"]["3"]["position_counts"] == [0, 1, 0]  # mask area 10 beats the dog's box
    (tmp_path / "bad.jsonl").write_text('{"key": "1", "detections": [{"label": "x"}]}\n')
    with pytest.raises(UserError, match="line 1"):
        load_detections(tmp_path / "bad.jsonl")
    (tmp_path / "dup.jsonl").write_text('{"key": "1", "detections": []}\n' * 2)
    with pytest.raises(UserError, match="twice"):
        load_detections(tmp_path / "dup.jsonl")


def reverse_extractor(caption: str, vocab: list[str]) -> list[str]:
    """A stand-in for a language model: the vocabulary words of the caption, last first."""
    return [w.strip(".,") for w in reversed(caption.split()) if w.strip(".,") in vocab or w == "Dogs"]


def test_user_extractor(tmp_path: Path) -> None:
    _tar_with(
        tmp_path / "a.tar",
        {
            "k0": {
                "txt": b"Dogs near a cat.",
                "json": b'{"objects": [{"name": "dog", "area": 9}, {"name": "cat", "area": 1}]}',
            }
        },
    )
    stats = corpus(shards=str(tmp_path / "a.tar"), extractor=f"{__name__}:reverse_extractor", out=str(tmp_path / "o"))
    assert stats["by_n"]["2"]["position_counts"] == [0, 1]  # "Dogs" mapped to dog, mentioned second


# ---------------------------------------------------------------------------------------------
# User errors: one line, exit status 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "exactly one corpus"),
        (["--shards", "x.tar", "--coco-captions", "c.json"], "exactly one corpus"),
        (["--coco-captions", "c.json"], "no areas"),
        (["--shards", "nowhere/{0..3}.tar"], "4 of 4 shards not found"),
        (["--coco-captions", "missing.json", "--coco-instances", "i.json"], "does not exist"),
        (["--shards", "x.tar", "--max-samples", "0"], "at least 1"),
        (["--shards", "x.tar", "--vocab", "nosuchvocab"], "vocabulary"),
        (["--shards", "x.tar", "--extractor", "nomodule_xyz:f"], "cannot import"),
    ],
)
def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    _tar_with(tmp_path / "x.tar", {"k": {"txt": b"a dog"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        with pytest.raises(SystemExit) as e:
            cli.main(["analyze", "corpus", *argv, "--out", "o"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("clipprobe: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_no_captions_at_all_is_an_error(tmp_path: Path) -> None:
    _tar_with(tmp_path / "x.tar", {f"k{i}": {"jpg": b"x", "caption": b"a dog"} for i in range(3)})
    with pytest.raises(UserError, match="caption-key"):
        corpus(shards=str(tmp_path / "x.tar"), out=str(tmp_path / "o"), progress=False)
    stats = corpus(shards=str(tmp_path / "x.tar"), caption_key="caption", out=str(tmp_path / "o"), progress=False)
    assert stats["skipped"] == {"no_annotations": 3}


# ---------------------------------------------------------------------------------------------
# Corpora from `clipprobe data corpus` with a known order policy: the command recovers it


def _generate(out: Path, order: str, p: float, seed: int = 0) -> list[dict[str, Any]]:
    cli.main(["data", "corpus", "--out", str(out), "--num-samples", "400", "--shard-size", "200", "--image-size", "32",
              "--objects", "1-4", "--order", order, "--p-order", str(p), "--seed", str(seed), "--workers", "1",
              "--progress", "false"])  # fmt: skip
    metas = []
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return metas


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Per policy: the generator's own metadata and the command's stats."""
    root = tmp_path_factory.mktemp("generated")
    out = {}
    for order, p in [("size_first", 0.8), ("random", 0.0), ("small_first", 1.0)]:
        metas = _generate(root / order, order, p)
        out[order] = (metas, corpus(shards=str(root / order), out=str(root / f"{order}_stats"), progress=False))
    return out


def test_generated_captions_are_read_exactly(generated: dict) -> None:
    metas, stats = generated["size_first"]
    usable = [m for m in metas if len(m["objects"]) > 1 and sorted(m["areas"])[-1] != sorted(m["areas"])[-2]]
    assert stats["captions_seen"] == len(metas) == 400
    assert stats["captions_used"] == len(usable)  # every generated caption's objects are found
    # one object: fewer than 2 mentions, or 2 with "... on a table" (dining table, not in the image)
    single = stats["skipped"]["fewer_than_2_mentions"] + stats["skipped"].get("fewer_than_2_annotated", 0)
    assert single == sum(len(m["objects"]) == 1 for m in metas)
    assert stats["skipped"].get("largest_tied", 0) == len(metas) - len(usable) - single
    assert sum(r["position_counts"][0] for r in stats["by_n"].values()) == sum(m["largest_first"] for m in usable)


def test_size_first_recovers_p(generated: dict) -> None:
    _, stats = generated["size_first"]
    lo, hi = stats["overall"]["excess_interval"]
    assert lo < 0.8 < hi and hi - lo < 0.2
    for n, row in stats["by_n"].items():
        lo, hi = row["largest_first_interval"]
        assert lo < 0.8 + 0.2 / int(n) < hi
    assert stats["overall"]["kendall_tau_mean"] > 0.3


def test_random_order_gives_chance(generated: dict) -> None:
    _, stats = generated["random"]
    lo, hi = stats["overall"]["excess_interval"]
    assert lo < 0.0 < hi
    for n, row in stats["by_n"].items():
        lo, hi = row["largest_first_interval"]
        assert lo < 1 / int(n) < hi


def test_small_first_never_puts_the_largest_first(generated: dict) -> None:
    _, stats = generated["small_first"]
    for row in stats["by_n"].values():
        assert row["position_counts"][0] == 0 and row["captions"] > 50
    assert stats["overall"]["excess"] < -0.4
    assert stats["overall"]["kendall_tau_mean"] < -0.3
