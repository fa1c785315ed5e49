"""ProbeSet.load on clipprobe's own folders and on the study's published layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from clipprobe.data.generate import generate, resolve_config
from clipprobe.data.probeset import ProbeSet, Scene
from clipprobe.errors import UserError

REFS = ["airplane", "plate", "axe", "traffic light", "hot dog", "cup"]


def _png(path: Path, colour: tuple[int, int, int] = (200, 200, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 48), colour).save(path)


def make_published_tree(root: Path) -> Path:
    """A tiny copy of the study's release: references in CoCo-OneObject, scenes named by their objects."""
    for name in REFS:
        _png(root / "CoCo-OneObject" / f"{name}.png")
    _png(root / "CoCo-ThreeObject-BRBig" / "airplane_plate_axe.png")
    _png(root / "CoCo-ThreeObject-BRBig" / "traffic light_hot dog_cup.png")
    _png(root / "CoCo-ThreeObject-Middle-Big" / "plate_traffic light_airplane.png")
    _png(root / "CoCo-ThreeObject-ULBig" / "hot dog_axe_plate.png")
    _png(root / "CoCo-FourObject-Middle-Big" / "cup_axe_traffic light_hot dog.png")
    return root


def test_own_format_round_trip(tmp_path: Path) -> None:
    cfg = resolve_config("comco", objects=[2, 3], scenes_per_layout=4, image_size=64,
                         names=["dog", "traffic light", "pizza", "cup"])  # fmt: skip
    root = generate(cfg, tmp_path / "set", workers=1, progress=False)
    ps = ProbeSet.load(root)
    rows = [json.loads(ln) for ln in (root / "metadata.jsonl").read_text().splitlines()]
    assert [s.to_json() for s in ps.scenes] == rows  # Scene <-> metadata row, no loss
    assert [Scene.from_json(r) for r in rows] == ps.scenes
    assert ps.kind == "comco" and ps.name.startswith("comco-") and ps.counts() == [2, 3]
    assert ps.vocabulary == ["traffic light", "dog", "cup", "pizza"]  # COCO order, whatever the order given
    assert set(ps.references) == set(ps.vocabulary) and all(p.is_file() for p in ps.references.values())
    assert ps.references["traffic light"].name == "traffic light.png"
    assert len(ps.by_n()[3]) == 4 * 4 and all(ps.path(s).is_file() for s in ps.scenes)
    s = ps.by_n()[3][0]
    assert s.large is not None and s.large_slot == 0 and s.objects[0].bbox is not None


def test_published_layout(tmp_path: Path) -> None:
    ps = ProbeSet.load(make_published_tree(tmp_path / "release"))
    assert ps.kind == "comco" and sorted(ps.vocabulary) == sorted(REFS)
    assert ps.references["traffic light"] == tmp_path / "release" / "CoCo-OneObject" / "traffic light.png"
    by_name = {Path(s.file_name).name: s for s in ps.scenes}
    assert len(by_name) == 5 and ps.counts() == [3, 4]
    # names with spaces split correctly, in slot order
    assert by_name["traffic light_hot dog_cup.png"].names == ("traffic light", "hot dog", "cup")
    # the folder says which slot is large: BR = last of 3, Middle = centre, UL = first
    assert by_name["airplane_plate_axe.png"].large_slot == 2
    assert by_name["airplane_plate_axe.png"].large.name == "axe"
    assert by_name["plate_traffic light_airplane.png"].large.name == "traffic light"
    assert by_name["hot dog_axe_plate.png"].large.name == "hot dog"
    four = by_name["cup_axe_traffic light_hot dog.png"]
    assert four.names == ("cup", "axe", "traffic light", "hot dog")
    assert all(o.bbox is None and o.area is None for s in ps.scenes for o in s.objects)
    assert all(ps.path(s).is_file() for s in ps.scenes)


def test_published_scene_with_unknown_name_is_a_user_error(tmp_path: Path) -> None:
    root = make_published_tree(tmp_path / "release")
    _png(root / "CoCo-ThreeObject-BRBig" / "airplane_unicorn_axe.png")
    with pytest.raises(UserError, match="airplane_unicorn_axe"):
        ProbeSet.load(root)


def test_not_a_probe_set(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ProbeSet.load(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    with pytest.raises(UserError, match="not a probe set"):
        ProbeSet.load(tmp_path / "junk")
