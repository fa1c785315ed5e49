"""Caption generation: the study's paper set exactly, balanced orders, templates, determinism."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest

from clipprobe.data.vocab import COCO_NAMES
from clipprobe.errors import UserError
from clipprobe.probes.captions import (
    TEMPLATES,
    article,
    balanced_subsets,
    make_captions,
    nth_combination,
    paper_subsets,
    render,
)

VOCAB = ["pizza", "apple", "desk", "cat", "umbrella"]


def test_paper_mode_is_the_studys_set_in_its_order():
    caps = make_captions(VOCAB, 3, mode="paper", template="bare", max_captions=None)
    assert len(caps) == math.comb(5, 3)
    assert [c.text for c in caps[:4]] == [
        "pizza and apple and desk",
        "pizza and apple and cat",
        "pizza and apple and umbrella",
        "pizza and desk and cat",
    ]
    assert caps[-1].text == "desk and cat and umbrella"
    assert [c.objects for c in caps] == list(itertools.combinations(VOCAB, 3))


def test_paper_mode_coco_first_captions():
    caps = make_captions(list(COCO_NAMES), 2, mode="paper", max_captions=None)
    assert len(caps) == 4005
    assert [c.text for c in caps[:3]] == ["person and bicycle", "person and car", "person and motorcycle"]
    assert caps[-1].text == "scissors and toothbrush"


def test_nth_combination_matches_itertools():
    for n in (1, 2, 3, 5):
        assert [nth_combination(VOCAB, n, i) for i in range(math.comb(5, n))] == list(itertools.combinations(VOCAB, n))
    with pytest.raises(IndexError):
        nth_combination(VOCAB, 2, 10)


def test_paper_cap_is_an_ordered_deterministic_subsample():
    vocab = list(COCO_NAMES)
    capped = paper_subsets(vocab, 4, max_captions=500, seed=3)
    assert len(capped) == 500 and len(set(capped)) == 500
    position = {name: i for i, name in enumerate(vocab)}
    keys = [tuple(position[o] for o in objs) for objs in capped]
    assert keys == sorted(keys)  # the combinations' own order is kept
    assert all(list(k) == sorted(k) for k in keys)
    assert paper_subsets(vocab, 4, max_captions=500, seed=3) == capped
    assert paper_subsets(vocab, 4, max_captions=500, seed=4) != capped


def test_balanced_random_orders_are_balanced_and_deterministic():
    vocab = [f"o{i}" for i in range(12)]
    subsets = balanced_subsets(vocab, 3, 200, orders="random", seed=0)
    assert len(subsets) == 200 and len({frozenset(s) for s in subsets}) == 200  # no repeated subsets
    assert balanced_subsets(vocab, 3, 200, seed=0) == subsets
    first = Counter(s[0] for s in subsets)
    assert max(first.values()) < 200 / 12 * 2.5  # no object dominates position 1
    # The order is shuffled: vocabulary order is not preserved in most captions.
    assert sum(list(s) == sorted(s, key=vocab.index) for s in subsets) < 200 / 2


def test_balanced_all_orders_gives_every_permutation():
    subsets = balanced_subsets(VOCAB, 3, 12, orders="all", seed=1)
    assert len(subsets) == 12  # 12 // 3! = 2 subsets x 6 orders
    for block in (subsets[:6], subsets[6:]):
        assert sorted(block) == sorted(itertools.permutations(block[0]))
    position_counts = Counter((k, o) for s in subsets for k, o in enumerate(s))
    for obj in {o for s in subsets for o in s}:  # each object equally often at every position
        assert len({position_counts[(k, obj)] for k in range(3)}) == 1


def test_balanced_never_repeats_past_the_number_of_subsets():
    assert len(balanced_subsets(VOCAB, 4, 100, seed=0)) == math.comb(5, 4)


def test_templates():
    assert render("bare", ["pizza", "apple"]) == "pizza and apple"
    assert render("article", ["pizza", "apple", "umbrella"]) == "a pizza and an apple and an umbrella"
    assert render("a", ["apple", "desk"]) == "a apple and a desk"
    assert render("long", ["OBJ1", "OBJ2"]) == (
        "This vibrant display features a stunning OBJ1 with its radiant glow, a mesmerizing OBJ2 with bold contours."
    )
    for n in range(1, 6):
        text = render("long", [f"x{k}" for k in range(n)])
        assert text.startswith("This vibrant display features a stunning x0")
        assert [text.index(f"x{k}") for k in range(n)] == sorted(text.index(f"x{k}") for k in range(n))
    assert set(TEMPLATES) == {"bare", "article", "a", "long"}
    assert article("orange") == "an" and article("cat") == "a"


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "nope"}, {"template": "nope"}, {"orders": "nope"}, {"n": 9}],
)
def test_bad_options_are_user_errors(kwargs):
    args = {"vocab": VOCAB, "n": 2, **kwargs}
    with pytest.raises(UserError):
        make_captions(**args)
    with pytest.raises(UserError):
        render("long", [f"x{k}" for k in range(6)])
