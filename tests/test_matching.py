"""Image-text matching on known constructions, against a slow reference, and under mitigation."""

from __future__ import annotations

import math
import random

import pytest
import torch
from planted_encoders import PlantedImageEncoder, name_vectors, tiny_probe_set

from clipprobe.data.probeset import Scene, SceneObject
from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext
from clipprobe.probes.captions import render
from clipprobe.probes.matching import _absent, itm, scene_triples
from clipprobe.probes.text import mitigation

NAMES = [f"item{i}" for i in range(10)]


def _encoder(ps, image_rule, text_rule="first", names=NAMES):
    vecs = name_vectors(names)
    images = {str(ps.path(s)): image_rule(s, vecs) for s in ps.scenes}
    return PlantedImageEncoder(names, images, rule=text_rule)


def _large(s, vecs):
    return vecs[s.names[s.large_slot or 0]]


def _ctx(enc, ps, options=None):
    return ProbeContext(encoder=enc, probe_set=ps, options=options or {}, seed=0, progress=False)


def test_scene_triples_follow_the_studys_swaps():
    objs = tuple(SceneObject(n, k, is_large=(k == 1)) for k, n in enumerate("abc"))
    t = scene_triples(Scene("x.png", 3, "large", objs), ["x", "y"])
    assert t["scenario1"] == [(("b", "a", "c"), ("x", "a", "c")), (("b", "a", "c"), ("y", "a", "c"))]
    assert t["scenario2"][0] == (("a", "c", "b"), ("b", "a", "x"))
    assert t["order"] == [(("b", "a", "c"), ("a", "c", "b"))]


def test_itm_planted_first_mention_and_large_object(tmp_path):
    # Image = its large object; caption = its first object: scenario 1 always right, scenario 2 never.
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3, 4), per_slot=3, equal=True)
    enc = _encoder(ps, _large)
    r = itm(_ctx(enc, ps, {"absent": 4}))
    for n in (2, 3, 4):
        assert r.metrics[f"n{n}/scenario1"] == 1.0 and r.counts[f"n{n}/scenario1"] == 3 * n * 4
        assert r.metrics[f"n{n}/scenario2"] == 0.0
        assert r.metrics[f"n{n}/order_pref"] == 1.0 and r.metrics[f"n{n}/order_ties"] == 0.0
    assert any("without a large object" in note for note in r.notes)
    assert enc.text_calls == 1 and enc.image_calls == 1
    enc.assert_unique()


def test_itm_all_absent_objects(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(3,), per_slot=2)
    r = itm(_ctx(_encoder(ps, _large), ps, {"absent": 0}))
    assert r.counts["n3/scenario1"] == 6 * (len(NAMES) - 3)


def test_itm_matches_slow_reference(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=5)
    g = torch.Generator().manual_seed(0)
    noise = {str(ps.path(s)): torch.randn(256, generator=g) for s in ps.scenes}

    def image_rule(s, vecs):
        return (
            sum(vecs[o] * (1.5 if o == s.names[s.large_slot] else 1.0) for o in s.names) + 0.5 * noise[str(ps.path(s))]
        )

    def text_rule(vs):
        return sum((0.9**k) * v for k, v in enumerate(vs))

    enc = _encoder(ps, image_rule, text_rule)
    r = itm(_ctx(enc, ps, {"absent": 3, "seed": 7}))
    rng = random.Random("clipprobe:7:itm")  # the probe's documented absent-object stream
    wins: dict[tuple[int, str], list[int]] = {}
    for s in ps.scenes:
        img = torch.nn.functional.normalize(enc.image_vectors[str(ps.path(s))], dim=-1)
        for scenario, pairs in scene_triples(s, _absent(s, NAMES, 3, rng)).items():
            for right, wrong in pairs:
                sr = float(img @ enc.text_vector(render("bare", right)))
                sw = float(img @ enc.text_vector(render("bare", wrong)))
                tally = wins.setdefault((s.n, scenario), [0, 0])
                tally[0] += sr > sw
                tally[1] += 1
    for (n, scenario), (won, total) in wins.items():
        key = f"n{n}/order_pref" if scenario == "order" else f"n{n}/{scenario}"
        assert r.metrics[key] == pytest.approx(won / total), key
    assert 0 < r.metrics["n3/scenario2"] < 1


def test_mitigation_with_a_probe_set(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=4)
    enc = _encoder(ps, _large)
    r = mitigation(_ctx(enc, ps, {"num_captions": 30, "absent": 3}))
    assert r.metrics["split/n2/order_ties"] == 1.0 and r.counts["plain/n2/scenario2"] == 2 * 4 * 3
    assert r.metrics["plain/n3/scenario1"] == 1.0 and r.metrics["plain/n3/scenario2"] == 0.0
    assert r.metrics["split/n3/scenario1"] == 1.0  # the right caption holds the large object, the wrong one not
    assert r.metrics["split/n3/order_ties"] == 1.0  # split captions ignore order exactly
    assert r.counts["split/n3/order_pref"] == 0 and math.isnan(r.metrics["split/n3/order_pref"])
    assert r.metrics["plain/n3/closest_1"] == 1.0 and "split/n3/closest_1" in r.metrics
    assert enc.text_calls == 1 and enc.image_calls == 1
    enc.assert_unique()


def test_itm_requires_a_probe_set_and_valid_options(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=1)
    with pytest.raises(UserError):
        itm(_ctx(_encoder(ps, _large), None))
    with pytest.raises(UserError):
        itm(_ctx(_encoder(ps, _large), ps, {"absent": "some"}))
