"""`clipprobe data comco|simco|objects`: determinism, metadata, balance, bad input, the cache."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from clipprobe import cli
from clipprobe.data import generate as gen
from clipprobe.data.probeset import ProbeSet
from clipprobe.data.scenes import layout_geometry
from clipprobe.data.sprites import object_names

NAMES = ["person", "dog", "pizza", "cup", "car", "clock", "traffic light"]
TINY = ["--image-size", "64", "--scenes-per-layout", "9", "--names", ",".join(NAMES), "--progress", "false"]


def _run(argv: list[str]) -> None:
    assert cli.main(argv) == 0


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def _rows(root: Path) -> list[dict]:
    return [json.loads(ln) for ln in (root / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sets") / "comco"
    _run(["data", "comco", "--out", str(out), "--workers", "1", *TINY])
    return out


def test_same_bytes_for_any_worker_count(tiny: Path, tmp_path: Path) -> None:
    _run(["data", "comco", "--out", str(tmp_path / "w2"), "--workers", "2", *TINY])
    a, b = _hashes(tiny), _hashes(tmp_path / "w2")
    assert len(a) == 7 + 18 * 9 + 2 and a == b  # references + scenes + manifest + metadata


def test_folder_format(tiny: Path) -> None:
    man = json.loads((tiny / "manifest.json").read_text())
    assert man["kind"] == "comco" and man["objects"] == [n for n in object_names("comco") if n in NAMES]
    assert man["vocabulary"] == man["objects"] and man["counts"] == [2, 3, 4, 5]
    assert man["num_scenes"] == 18 * 9 and man["scenes_per_layout"] == 9 and man["image_size"] == 64
    assert man["params"]["objects"] == man["objects"] and man["params"]["scenes_per_layout"] == 9
    assert man["name"].startswith("comco-")  # not the default set, so its name carries a hash
    for name in NAMES:
        assert (tiny / "references" / f"{name}.png").is_file()  # spaces kept
    rows = _rows(tiny)
    assert len(rows) == man["num_scenes"]
    assert all((tiny / r["file_name"]).is_file() for r in rows)
    assert not list(tiny.parent.glob(".*partial"))  # the staging folder is gone


def test_metadata_is_consistent(tiny: Path) -> None:
    for r in _rows(tiny):
        objs = r["objects"]
        names = [o["name"] for o in objs]
        assert len(set(names)) == len(names) == r["n"] and set(names) <= set(NAMES)
        assert [o["slot"] for o in objs] == list(range(r["n"]))
        assert sum(o["is_large"] for o in objs) == (1 if r["variant"] == "large" else 0)
        for o in objs:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 0 < o["area"] <= (x1 - x0) * (y1 - y0)
        boxes = [o["bbox"] for o in objs]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):  # objects never overlap
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_sizes_follow_the_ratio(tmp_path: Path) -> None:
    """Large vs small, at 160 px so a small object is >= 20 px.

    The same object at the two sizes: area ratio = ratio**2 up to the one-pixel rim of antialiased
    edge pixels that fall either side of the alpha > 127 cut: within 12% for objects >= 20 px (all 69
    ComCO objects at 23 and 36 px small sides stay within 8%).
    Across objects, compare the opaque box's longer side with the layout's sizes instead (within
    2 px: sprites are trimmed at alpha > 8, boxes measured at alpha > 127).
    """
    out = tmp_path / "s"
    _run(["data", "comco", "--out", str(out), "--image-size", "160", "--objects", "2,4", "--equal-size", "false",
          "--scenes-per-layout", "7", "--names", ",".join(NAMES), "--size-ratio", "2.5", "--progress", "false"])  # fmt: skip
    areas: dict[tuple[int, str, bool], set[int]] = {}
    for r in _rows(out):
        geo = layout_geometry(r["n"], 160, 2.5)
        for o in r["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            side = geo.large if o["is_large"] else geo.small
            assert side - 2 <= max(x1 - x0, y1 - y0) <= side
            areas.setdefault((r["n"], o["name"], o["is_large"]), set()).add(o["area"])
    checked = 0
    for (n, name, is_large), vals in areas.items():
        assert len(vals) == 1  # same object, same size: same pixels
        if is_large and (n, name, False) in areas:
            ratio = next(iter(vals)) / next(iter(areas[(n, name, False)]))
            assert abs(ratio / 2.5**2 - 1) < 0.12, (name, ratio)
            checked += 1
    assert checked >= 5


def test_balance_in_the_written_set(tiny: Path) -> None:
    ps = ProbeSet.load(tiny)
    m, per_group = len(NAMES), 9
    by_group: dict[str, Counter] = {}
    for s in ps.scenes:
        by_group.setdefault(s.scene_id.split("/")[0], Counter()).update((o.name, o.slot) for o in s.objects)
    for counts in by_group.values():
        n = max(k for _, k in counts) + 1
        vals = [counts[(nm, k)] for nm in NAMES for k in range(n)]
        assert per_group // m <= min(vals) and max(vals) <= -(-per_group // m)
    large = Counter(s.large.name for s in ps.scenes if s.large is not None)
    assert max(large[nm] for nm in NAMES) - min(large[nm] for nm in NAMES) <= 1


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--names", "dog,unicorn"], "unknown comco object"),
        (["--objects", "1,3"], "invalid object count"),
        (["--objects", "7"], "invalid object count"),
        (["--size-ratio", "0.5"], "--size-ratio"),
        (["--image-size", "24"], "too small"),
        (["--names", "dog,cat", "--objects", "3"], "need at least 3"),
        (["--scenes-per-layout", "0"], "--scenes-per-layout"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "comco", "--out", str(out), "--progress", "false", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipprobe: error:") and "\n" not in err and needle in err
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_is_refused_unless_overwrite(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "comco", "--out", str(out), *TINY])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("clipprobe: error: output folder")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    _run(["data", "comco", "--out", str(out), "--overwrite", *TINY])
    assert not (out / "keep.txt").exists() and _hashes(out) == _hashes(tiny)


def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = gen.save_png

    def flaky(img, path):  # noqa: ANN001 - test double
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError("disk full")
        real(img, path)

    monkeypatch.setattr(gen, "save_png", flaky)
    with pytest.raises(OSError):
        cli.main(["data", "comco", "--out", str(tmp_path / "out"), "--workers", "1", *TINY])
    assert list(tmp_path.iterdir()) == []


def test_objects_command(capsys: pytest.CaptureFixture[str]) -> None:
    _run(["data", "objects", "comco"])
    names = capsys.readouterr().out.split("\n")[:-1]
    assert names == list(object_names("comco")) and len(names) >= 65 and "traffic light" in names


def test_ensure_probe_set_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"image_size": 64, "scenes_per_layout": 3, "names": NAMES[:5], "objects": [2, 3], "workers": 1}
    path = gen.ensure_probe_set("comco", cache_dir=tmp_path, **params)
    assert (path / "manifest.json").is_file() and path.parent == tmp_path
    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("regenerated a cached set"))
    # the same content whatever the run options, and defaults filled in before hashing
    assert gen.ensure_probe_set("comco", cache_dir=tmp_path, **{**params, "workers": 2, "seed": 0}) == path
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path))
    assert gen.ensure_probe_set("comco", **params) == path


def test_simco(tmp_path: Path) -> None:
    pytest.importorskip("clipprobe.data.shapes")
    out = tmp_path / "simco"
    _run(["data", "simco", "--out", str(out), "--image-size", "64", "--scenes-per-layout", "4", "--objects", "5",
          "--progress", "false", "--workers", "1"])  # fmt: skip
    ps = ProbeSet.load(out)
    assert ps.kind == "simco" and len(ps.references) == 18 and len(ps.scenes) == 6 * 4
