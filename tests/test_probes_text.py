"""Text probes with planted encoders: tor, mitigation, size_claim, toc."""

from __future__ import annotations

import math

import pytest
import torch
from planted_encoders import PlantedTextEncoder

from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext
from clipprobe.probes.captions import make_captions
from clipprobe.probes.text import LARGE_OBJECTS, MEDIUM_OBJECTS, SMALL_OBJECTS, mitigation, size_claim, toc, tor

VOCAB = [f"obj{i:02d}" for i in range(30)]


def _run(probe, encoder, options=None, vocab=VOCAB, seed=0):
    return probe(ProbeContext(encoder=encoder, vocab=list(vocab), options=options or {}, seed=seed, progress=False))


def test_tor_first_object_encoder_is_fully_biased():
    enc = PlantedTextEncoder(VOCAB, "first")
    r = _run(tor, enc, {"num_captions": 300})
    for n in (2, 3, 4):
        assert r.metrics[f"n{n}/share_1_all"] == 1.0
        assert r.metrics[f"n{n}/closest_1"] == 1.0
        assert r.metrics[f"n{n}/bias_index"] == pytest.approx(1.0)
        assert r.counts[f"n{n}/closest_1"] == 300
        assert r.metrics[f"n{n}/closest_2"] == 0.0
    assert enc.text_calls == 1
    enc.assert_unique()


def test_tor_weighted_encoder_hits_and_share_1():
    r = _run(tor, PlantedTextEncoder(VOCAB, "weighted", dim=2048), {"num_captions": 200, "n": [2, 4]})
    for n in (2, 4):
        assert r.metrics[f"n{n}/hit_rate"] == 1.0
        assert r.metrics[f"n{n}/share_1"] == 1.0 and r.counts[f"n{n}/share_1"] == 200
        assert sum(r.metrics[f"n{n}/share_{k}"] for k in range(1, n + 1)) == pytest.approx(1.0)
    assert "n3/share_1" not in r.metrics


def test_tor_order_invariant_encoder_is_unbiased():
    # All n! orders of each subset: an order-invariant encoder gives exactly 1/n at every position.
    r = _run(tor, PlantedTextEncoder(VOCAB, "mean"), {"num_captions": 720, "orders": "all"})
    for n in (2, 3, 4):
        for k in range(1, n + 1):
            assert r.metrics[f"n{n}/closest_{k}"] == pytest.approx(1 / n)
            lo, hi = r.intervals[f"n{n}/closest_{k}"]
            assert lo <= 1 / n <= hi
        assert r.metrics[f"n{n}/bias_index"] == pytest.approx(0.0, abs=1e-12)


def test_tor_order_invariant_encoder_random_orders_near_chance():
    r = _run(tor, PlantedTextEncoder(VOCAB, "mean"), {"num_captions": 1500})
    for n in (2, 3, 4):
        total = r.counts[f"n{n}/closest_1"]
        sd = (1 / n * (1 - 1 / n) / total) ** 0.5
        for k in range(1, n + 1):  # 3.5 sd: nine checks, no false alarms from multiplicity
            assert abs(r.metrics[f"n{n}/closest_{k}"] - 1 / n) < 3.5 * sd, (n, k)


def _slow_reference(enc, vocab, captions, n):
    """One caption at a time, from the encoder's own vectors, with Python lists."""
    names = {v: enc.text_vector(v) for v in vocab}
    hits = top1_hit = 0
    top1_hits, top1_all, closest = [0] * n, [0] * n, [0] * n
    for c in captions:
        e = enc.text_vector(c.text)
        sims = {v: float(e @ names[v]) for v in vocab}
        ranked = sorted(vocab, key=lambda v: -sims[v])
        hit = set(ranked[:n]) == set(c.objects)
        hits += hit
        if ranked[0] in c.objects:
            k = c.objects.index(ranked[0])
            top1_all[k] += 1
            top1_hits[k] += hit
            top1_hit += hit
        own = [sims[o] for o in c.objects]
        closest[own.index(max(own))] += 1
    total = len(captions)
    ref = {f"n{n}/hit_rate": hits / total}
    for k in range(n):
        ref[f"n{n}/share_{k + 1}"] = top1_hits[k] / hits if hits else math.nan
        ref[f"n{n}/share_{k + 1}_all"] = top1_all[k] / total
        ref[f"n{n}/closest_{k + 1}"] = closest[k] / total
    ref[f"n{n}/bias_index"] = (closest[0] / total - 1 / n) / (1 - 1 / n)
    return ref


def _noisy(vs):
    # Deterministic, position-weighted mix with a text-dependent twist, so hits are neither 0 nor all.
    weights = torch.tensor([1.0, 0.8, 0.7, 0.6])[: len(vs)]
    return sum(w * v for w, v in zip(weights, vs, strict=True)) + 0.3 * torch.sin(torch.stack(vs).sum(0) * 7)


@pytest.mark.parametrize("mode", ["paper", "balanced"])
def test_tor_matches_slow_reference(mode):
    vocab = VOCAB[:12]
    enc = PlantedTextEncoder(vocab, _noisy, dim=24)
    opts = {"mode": mode, "num_captions": 150, "max_captions": 100, "n": [2, 3], "seed": 5}
    r = _run(tor, enc, opts, vocab=vocab)
    for n in (2, 3):
        caps = make_captions(vocab, n, mode, "bare", max_captions=100, num_captions=150, seed=5)
        ref = _slow_reference(enc, vocab, caps, n)
        assert 0 < ref[f"n{n}/hit_rate"] < 1
        for key, value in ref.items():
            assert r.metrics[key] == pytest.approx(value, nan_ok=True), key
    enc.assert_unique()


def test_tor_paper_mode_counts_and_cap_note():
    vocab = VOCAB[:10]
    r = _run(tor, PlantedTextEncoder(vocab), {"mode": "paper", "max_captions": 0, "n": [2, 3]}, vocab=vocab)
    assert r.counts["n2/hit_rate"] == 45 and r.counts["n3/hit_rate"] == 120
    assert not r.notes
    capped = _run(tor, PlantedTextEncoder(vocab), {"mode": "paper", "max_captions": 50, "n": 3}, vocab=vocab)
    assert capped.counts["n3/hit_rate"] == 50 and "50 of 120" in capped.notes[0]


def test_tor_is_deterministic_and_records_config():
    a = _run(tor, PlantedTextEncoder(VOCAB, _noisy), {"num_captions": 100}, seed=3)
    b = _run(tor, PlantedTextEncoder(VOCAB, _noisy), {"num_captions": 100}, seed=3)
    assert a.to_json() == b.to_json()
    assert a.config["mode"] == "balanced" and a.config["seed"] == 3 and a.config["n"] == [2, 3, 4]


@pytest.mark.parametrize(
    "options", [{"nope": 1}, {"mode": "fancy"}, {"n": "two"}, {"template": "poem"}, {"num_captions": 1.5}]
)
def test_tor_rejects_bad_options(options):
    with pytest.raises(UserError):
        _run(tor, PlantedTextEncoder(VOCAB), options)


def test_tor_accepts_cli_strings():
    r = _run(tor, PlantedTextEncoder(VOCAB), {"n": "2,3", "num_captions": "50", "template": "article"})
    assert r.counts["n2/hit_rate"] == 50 and "n4/hit_rate" not in r.metrics


def test_mitigation_removes_planted_first_mention_bias():
    enc = PlantedTextEncoder(VOCAB, "first")
    r = _run(mitigation, enc, {"num_captions": 800, "n": [3]})
    assert r.metrics["plain/n3/closest_1"] == 1.0 and r.metrics["plain/n3/bias_index"] == pytest.approx(1.0)
    lo, hi = r.intervals["split/n3/bias_index"]
    assert lo <= 0.0 <= hi
    assert r.metrics["split/n3/hit_rate"] == 1.0  # the sum of the names holds exactly those names
    assert any("itm skipped" in note for note in r.notes)
    assert enc.text_calls == 1
    enc.assert_unique()


def test_size_claim_groups_and_planted_answer():
    names = LARGE_OBJECTS + MEDIUM_OBJECTS + SMALL_OBJECTS

    enc = PlantedTextEncoder(names, "first")
    large_vecs = {id(enc.vecs[o]) for o in LARGE_OBJECTS}
    # The first object dominates only when it is physically large; otherwise all objects count alike.
    enc.rule = lambda vs: vs[0] if id(vs[0]) in large_vecs else torch.stack(vs).mean(0)
    r = _run(size_claim, enc, {"num_captions": 200, "n": [2, 3]})
    for n in (2, 3):
        assert r.metrics[f"large/n{n}/share_1_all"] == 1.0
        assert r.metrics[f"small/n{n}/closest_1"] < 1.0
        assert r.counts[f"small/n{n}/hit_rate"] == 200
    assert enc.text_calls == 1
    enc.assert_unique()
    swap = _run(size_claim, PlantedTextEncoder(names, "last"), {"num_captions": 50, "n": [3], "design": "swap"})
    assert swap.metrics["large/n3/closest_3"] == 1.0  # the last object came from the other group


def test_size_claim_rejects_overlapping_lists():
    with pytest.raises(UserError):
        _run(size_claim, PlantedTextEncoder(VOCAB), {"large": ["obj00"], "medium": ["obj00", "obj01"]})


def test_toc_planted_first_object_is_recoverable_only_at_position_1():
    vocab = VOCAB[:8]
    enc = PlantedTextEncoder(vocab, "first", dim=32)
    opts = {"n": 3, "per_label": 40, "epochs": 15, "lr": 0.05, "template": "article"}
    r = _run(toc, enc, opts, vocab=vocab)
    assert r.metrics["n3/acc_1"] == 1.0
    assert r.metrics["n3/acc_2"] < 0.5 and r.metrics["n3/acc_3"] < 0.5
    assert r.counts["n3/acc_1"] == int(8 * 40 * 0.15)
    assert enc.text_calls == 1
    enc.assert_unique()
    again = _run(toc, PlantedTextEncoder(vocab, "first", dim=32), opts, vocab=vocab)
    assert again.metrics == r.metrics


def test_toc_rejects_bad_positions():
    with pytest.raises(UserError):
        _run(toc, PlantedTextEncoder(VOCAB), {"n": 3, "positions": [4], "per_label": 2})


def test_linear_probe_matches_torch_adam():
    from clipprobe.probes.common import linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=-1)
    y = (x @ torch.randn(16, 5, generator=g)).argmax(1)  # linearly separable labels
    # Reference: autograd + torch.optim.Adam, same initialisation and batch order.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        head = torch.nn.Linear(16, 5)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    order_gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        order = torch.randperm(300, generator=order_gen)
        for lo in range(0, 300, 32):
            idx = order[lo : lo + 32]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    want = head(x).argmax(1)
    got = linear_probe(x[:300], y, x, 5, lr=0.01, batch_size=32, epochs=3, seed=7)
    assert torch.equal(got, want)
    assert (got == y).float().mean() > 0.6  # and it learned (chance is 0.2)
