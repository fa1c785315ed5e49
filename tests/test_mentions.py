"""The vocabulary matcher on tricky captions, synonyms files and pluggable extractors."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipprobe.analysis.mentions import (
    COCO_SYNONYMS,
    Matcher,
    load_extractor,
    load_synonyms,
    number_forms,
)
from clipprobe.data.vocab import COCO_NAMES
from clipprobe.errors import UserError


@pytest.fixture(scope="module")
def coco() -> Matcher:
    return Matcher(COCO_NAMES, COCO_SYNONYMS)


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        # plurals: regular, -es, -ies, irregular, uninflected
        ("Two dogs chase three cats.", ["dog", "cat"]),
        ("buses and benches", ["bus", "bench"]),
        ("a litter of puppies near some knives", ["dog", "knife"]),
        ("people feeding mice", ["person", "mouse"]),
        ("sheep grazing beside a pair of skis and one ski", ["sheep", "skis"]),
        ("scissors, forks and spoons", ["scissors", "fork", "spoon"]),
        # multi-word names, longest first
        ("a hot dog next to a dog", ["hot dog", "dog"]),
        ("hot dogs", ["hot dog"]),
        ("a traffic light above traffic lights and a car", ["traffic light", "car"]),
        ("a teddy bear and a bear", ["teddy bear", "bear"]),
        ("a microwave oven on top of an oven", ["microwave", "oven"]),
        ("a dirt bike and a bike", ["motorcycle", "bicycle"]),
        ("two wine glasses and eye glasses", ["wine glass", "eye glasses"]),
        # punctuation, case, hyphens, possessives
        ("DOG! Cat? (Horse)", ["dog", "cat", "horse"]),
        ("a hot-dog stand", ["hot dog"]),
        ("the dog's bowl", ["dog", "bowl"]),
        ("Traffic\nLight", ["traffic light"]),
        # whole words only
        ("concatenate the category of dogma", []),
        ("catalog of carpets, bedrooms and forklifts", []),
        ("a skateboarder on a skateboard", ["person", "skateboard"]),
        # synonyms and their plurals
        ("a sofa and a television", ["couch", "tv"]),
        ("two women and a man on a couch", ["person", "couch"]),
        ("smartphones and fridges", ["cell phone", "refrigerator"]),
        # order of first mention, each once
        ("a cat, a dog, another cat and a dog", ["cat", "dog"]),
        ("", []),
    ],
)
def test_matcher_cases(coco: Matcher, caption: str, expected: list[str]) -> None:
    assert coco.find(caption) == expected


def test_spans_give_offsets(coco: Matcher) -> None:
    caption = "A Hot-Dog beside two cats."
    spans = coco.spans(caption)
    assert [(m.name, m.text) for m in spans] == [("hot dog", "Hot-Dog"), ("cat", "cats")]
    assert all(caption[m.start : m.end] == m.text for m in spans)


def test_number_forms() -> None:
    assert number_forms("dog") == ("dogs",)
    assert number_forms("box") == ("boxes",)
    assert number_forms("puppy") == ("puppies",)
    assert number_forms("toy") == ("toys",)
    assert number_forms("knife") == ("knives",)
    assert number_forms("sheep") == ()


def test_exact_names_beat_derived_forms() -> None:
    # "glasses" is a name here; the plural of "glass" must not steal it
    m = Matcher(["glass", "glasses"])
    assert m.find("glasses and a glass") == ["glasses", "glass"]


def test_default_synonyms_are_consistent() -> None:
    Matcher([*COCO_NAMES, "sports ball"], COCO_SYNONYMS, strict=True)  # no alias for two names


def test_default_synonyms_skip_names_outside_vocab() -> None:
    m = Matcher(["cup", "mug"], COCO_SYNONYMS)  # "mug" is a name, so it is not cup's alias
    assert m.find("a mug and a cup") == ["mug", "cup"]
    assert Matcher(["dog"], COCO_SYNONYMS).find("a sofa with a puppy") == ["dog"]


def test_canonical_labels(coco: Matcher) -> None:
    assert coco.canonical("dogs") == "dog"
    assert coco.canonical("Traffic Lights") == "traffic light"
    assert coco.canonical("a brown dog") == "dog"
    assert coco.canonical("dog and cat") == "dog and cat"
    assert coco.canonical("Sports  Ball") == "sports ball"


def test_synonyms_file(tmp_path: Path) -> None:
    path = tmp_path / "syn.txt"
    path.write_text("# mine\ntv: television, telly\n\ncouch: sofa  # comfy\ncat: moggy\n", encoding="utf-8")
    table = load_synonyms(path)
    assert table == {"tv": ("television", "telly"), "couch": ("sofa",), "cat": ("moggy",)}
    m = Matcher(["tv", "couch", "cat", "dog"], table, strict=True)
    assert m.find("Two moggies on the sofa watch telly") == ["cat", "couch", "tv"]
    assert load_synonyms("none") == {}


def test_synonyms_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither"):
        load_synonyms(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("tv television\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 1"):
        load_synonyms(bad)
    with pytest.raises(UserError, match="not in the vocabulary"):
        Matcher(["dog"], {"tvv": ("telly",)}, strict=True)
    with pytest.raises(UserError, match="already means"):
        Matcher(["dog", "cat"], {"dog": ("pet",), "cat": ("pet",)}, strict=True)
    with pytest.raises(UserError, match="already means"):
        Matcher(["dog", "cat"], {"dog": ("cat",)}, strict=True)


def _first_word_extractor(caption: str, vocab: list[str]) -> list[str]:
    return [w for w in caption.split() if w in vocab]


def test_load_extractor() -> None:
    fn = load_extractor(f"{__name__}:_first_word_extractor")
    assert fn("dog cat", ["cat", "dog"]) == ["dog", "cat"]
    assert load_extractor("clipprobe.analysis.mentions:number_forms") is number_forms
    for spec, msg in [
        ("no_colon", "import path"),
        ("no_such_module_xyz:f", "cannot import"),
        ("clipprobe.analysis.mentions:nope", "has no"),
        ("clipprobe.analysis.mentions:IRREGULAR", "not callable"),
    ]:
        with pytest.raises(UserError, match=msg):
            load_extractor(spec)
