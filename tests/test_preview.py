"""`clipprobe data preview` on clipprobe's own sets and on the study's published layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_probeset import make_published_tree

from clipprobe import cli
from clipprobe.data import preview as pv
from clipprobe.data.generate import generate, resolve_config
from clipprobe.data.probeset import ProbeSet


@pytest.fixture(scope="module")
def own_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = resolve_config("comco", objects=[2, 3], scenes_per_layout=3, image_size=64,
                         names=["dog", "traffic light", "pizza", "cup"])  # fmt: skip
    return generate(cfg, tmp_path_factory.mktemp("p") / "set", workers=1, progress=False)


def test_preview_of_own_set(own_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    assert cli.main(["data", "preview", str(own_set), "--out", str(out), "--scenes", "7", "--columns", "4",
                     "--tile", "64"]) == 0  # fmt: skip
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 4 * 64 and im.height > 2 * 64
    assert not list(tmp_path.glob(".*tmp"))


def test_preview_of_published_layout(tmp_path: Path) -> None:
    root = make_published_tree(tmp_path / "release")
    out = tmp_path / "pub.png"
    assert cli.main(["data", "preview", str(root), "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height > 96


def test_large_object_is_framed_and_starred(own_set: Path) -> None:
    ps = ProbeSet.load(own_set)
    scene = next(s for s in ps.scenes if s.large is not None)
    tile = 128
    cell = pv._scene_cell(ps, scene, tile, rows=scene.n, font=pv._font())
    x0, y0, x1, y1 = (round(v * tile / 64) for v in scene.large.bbox)
    edge = [cell.getpixel((x, y0 - 1)) for x in range(x0, x1)]
    assert all(p == pv.LARGE_COLOUR for p in edge)  # the frame's top edge
    small = next(o for o in scene.objects if not o.is_large)
    sx0, sy0, sx1, _ = (round(v * tile / 64) for v in small.bbox)
    assert not any(cell.getpixel((x, sy0 - 1)) == pv.LARGE_COLOUR for x in range(sx0, sx1))
    labels = np.asarray(cell)[tile + 2 :].astype(int)  # [rows * LINE, tile, 3]
    reddish = (labels[..., 0] > 150) & (labels[..., 1] < 120) & (labels[..., 2] < 120)
    red_rows = {y // pv.LINE for y in np.nonzero(reddish.any(axis=1))[0]}
    assert red_rows == {scene.large_slot}  # only the starred label is red


def test_sample_spreads_over_groups(own_set: Path) -> None:
    ps = ProbeSet.load(own_set)
    groups = {s.scene_id.split("/")[0] for s in ps.scenes}
    picked = pv.sample_scenes(ps.scenes, len(groups), seed=1)
    assert {s.scene_id.split("/")[0] for s in picked} == groups
    assert pv.sample_scenes(ps.scenes, 5, seed=1) == pv.sample_scenes(ps.scenes, 5, seed=1)
    assert len(pv.sample_scenes(ps.scenes, 10_000)) == len(ps.scenes)


def test_bad_preview_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "preview", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("clipprobe: error: probe set")
    assert list(tmp_path.iterdir()) == []
