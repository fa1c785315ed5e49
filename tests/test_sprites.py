"""Shipped ComCO sprites and vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipprobe.data.sprites import COMCO_DIR, check_objects, load_sprite, object_names, sprite_at
from clipprobe.data.vocab import COCO_NAMES, SIMCO_NAMES, load_vocab
from clipprobe.errors import UserError


def test_vocabularies_match_the_study() -> None:
    assert len(COCO_NAMES) == 90 and len(set(COCO_NAMES)) == 90 and "sports ball" not in COCO_NAMES
    assert COCO_NAMES[:3] == ("person", "bicycle", "car") and COCO_NAMES[-1] == "toothbrush"
    assert len(SIMCO_NAMES) == 18


def test_comco_covers_at_least_65_names_with_licence() -> None:
    names = object_names("comco")
    assert len(names) >= 65
    assert set(names) <= set(COCO_NAMES)
    assert (COMCO_DIR / "LICENSE-noto-emoji.txt").is_file()
    for name in names:
        im = load_sprite("comco", name)
        assert im.mode == "RGBA" and max(im.size) >= 80
        # trimmed: every border row/column has an opaque pixel
        alpha = im.getchannel("A")
        assert alpha.getbbox() == (0, 0, *im.size)


def test_sprite_at_scales_longer_side() -> None:
    im = sprite_at("comco", "dog", 40)
    assert max(im.size) == 40


def test_unknown_object_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown comco object"):
        check_objects("comco", ["dog", "unicorn"])
    with pytest.raises(UserError, match="unknown probe-set kind"):
        object_names("nope")


def test_load_vocab_file(tmp_path: Path) -> None:
    f = tmp_path / "v.txt"
    f.write_text("# mine\ndog\ncat  # pet\n\n")
    assert load_vocab(f) == ["dog", "cat"]
    assert load_vocab("simco") == list(SIMCO_NAMES)
    f.write_text("dog\ndog\n")
    with pytest.raises(UserError, match="more than once"):
        load_vocab(f)
    with pytest.raises(UserError, match="neither"):
        load_vocab(tmp_path / "missing.txt")
