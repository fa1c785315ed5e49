"""The tallies of clipprobe.probes.tallies against slow loop references; batches and class/function agree."""

from __future__ import annotations

import math

import pytest
import torch

from clipprobe.probes.tallies import (
    AccuracyTally,
    MeanTally,
    PositionShareTally,
    PreferenceTally,
    accuracy_update,
    add_counts,
    mean_compute,
    mean_update,
    position_share_compute,
    position_share_update,
    preference_compute,
    preference_update,
)


def _queries(b: int = 200, v: int = 12, n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    objects = torch.stack([torch.randperm(v, generator=g)[:n] for _ in range(b)])
    sims = torch.randn(b, v, generator=g)
    # Make hits common: lift the own objects above the rest for about half the queries.
    lift = (torch.rand(b, generator=g) < 0.5).float()[:, None] * 3.0
    sims.scatter_add_(1, objects, lift.expand(-1, n).contiguous())
    return sims, objects


def _loop_reference(sims: torch.Tensor, objects: torch.Tensor) -> dict[str, list[int] | int]:
    """Obviously correct: one query at a time with Python lists."""
    n = objects.shape[1]
    ref = {"total": 0, "hits": 0, "top1_hits": [0] * n, "top1_all": [0] * n, "closest": [0] * n}
    for row, objs in zip(sims.tolist(), objects.tolist(), strict=True):
        ranked = sorted(range(len(row)), key=lambda j: -row[j])
        hit = set(ranked[:n]) == set(objs)
        ref["total"] += 1
        ref["hits"] += hit
        for k, o in enumerate(objs):
            if ranked[0] == o:
                ref["top1_all"][k] += 1
                ref["top1_hits"][k] += hit
        own = [row[o] for o in objs]
        ref["closest"][own.index(max(own))] += 1
    return ref


def _as_lists(counts: dict[str, torch.Tensor]) -> dict[str, list[int] | int]:
    return {k: v.tolist() for k, v in counts.items()}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_position_share_update_matches_loop(n):
    sims, objects = _queries(n=n, seed=n)
    got = _as_lists(position_share_update(sims, objects))
    assert got == _loop_reference(sims, objects)
    assert 0 < got["hits"] < got["total"]  # the construction exercises both branches


def test_position_share_compute_formula():
    counts = {
        "total": torch.tensor(8),
        "hits": torch.tensor(4),
        "top1_hits": torch.tensor([2, 2]),
        "top1_all": torch.tensor([5, 2]),
        "closest": torch.tensor([6, 2]),
    }
    out = position_share_compute(counts)
    assert out["hit_rate"].item() == 0.5
    assert out["share"].tolist() == [0.5, 0.5]
    assert out["share_all"].tolist() == [5 / 8, 2 / 8]
    assert out["closest"].tolist() == [0.75, 0.25]
    assert out["bias_index"].item() == pytest.approx(0.5)
    empty = position_share_compute({k: torch.zeros_like(v) for k, v in counts.items()})
    assert math.isnan(empty["hit_rate"].item())


def test_position_share_tally_batches_and_function_agree():
    sims, objects = _queries(b=301, n=3, seed=7)
    whole = position_share_update(sims, objects)
    metric = PositionShareTally(3)
    acc = None
    for lo in range(0, 301, 64):  # uneven last batch
        metric.update(sims[lo : lo + 64], objects[lo : lo + 64])
        acc = add_counts(acc, position_share_update(sims[lo : lo + 64], objects[lo : lo + 64]))
    out = metric.compute()
    for key in whole:
        assert torch.equal(out[key], whole[key]) and torch.equal(acc[key], whole[key])
    shares = position_share_compute(whole)
    assert torch.allclose(out["share"], shares["share"], equal_nan=True)
    assert torch.allclose(out["closest_share"], shares["closest"])
    metric.reset()
    assert metric.total.item() == 0


def test_position_share_tally_validates():
    with pytest.raises(ValueError):
        PositionShareTally(0)
    with pytest.raises(ValueError):
        PositionShareTally(3).update(torch.randn(4, 10), torch.zeros(4, 2, dtype=torch.long))


def test_preference_matches_loop_and_batches():
    g = torch.Generator().manual_seed(1)
    right = torch.randint(0, 4, (157,), generator=g).float()
    wrong = torch.randint(0, 4, (157,), generator=g).float()
    wins = sum(r > w for r, w in zip(right.tolist(), wrong.tolist(), strict=True))
    ties = sum(r == w for r, w in zip(right.tolist(), wrong.tolist(), strict=True))
    metric = PreferenceTally()
    for lo in range(0, 157, 50):
        metric.update(right[lo : lo + 50], wrong[lo : lo + 50])
    out = metric.compute()
    assert (out["wins"].item(), out["ties"].item(), out["total"].item()) == (wins, ties, 157)
    assert out["accuracy"].item() == pytest.approx(wins / 157)
    assert out["preference"].item() == pytest.approx(wins / (157 - ties))
    fn = preference_compute(preference_update(right, wrong))
    assert fn["tie_rate"].item() == pytest.approx(out["tie_rate"].item())


def test_accuracy_matches_loop_and_batches():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(90, 5, generator=g)
    target = torch.randint(0, 5, (90,), generator=g)
    correct = sum(
        int(max(range(5), key=lambda c: row[c]) == t) for row, t in zip(logits.tolist(), target.tolist(), strict=True)
    )
    metric = AccuracyTally()
    for lo in range(0, 90, 32):
        metric.update(logits[lo : lo + 32], target[lo : lo + 32])
    out = metric.compute()
    assert out["correct"].item() == correct and out["total"].item() == 90
    assert out["accuracy"].item() == pytest.approx(correct / 90)
    assert accuracy_update(logits.argmax(1), target)["correct"].item() == correct


def test_mean_matches_statistics_and_batches():
    values = torch.linspace(0, 1, 37) ** 2
    metric = MeanTally()
    for lo in range(0, 37, 10):
        metric.update(values[lo : lo + 10])
    out = metric.compute()
    vals = values.tolist()
    mean = sum(vals) / len(vals)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    assert out["mean"].item() == pytest.approx(mean) and out["std"].item() == pytest.approx(std)
    assert mean_compute(mean_update(values))["mean"].item() == pytest.approx(mean)


def test_ties_share_the_credit():
    # Two own objects exactly tied for nearest (split and aggregate with n=2 does this): half each.
    sims = torch.tensor([[0.7, 0.7, 0.1, 0.0], [0.2, 0.9, 0.9, 0.9]])
    objects = torch.tensor([[0, 1], [1, 2]])
    out = position_share_update(sims, objects)
    assert out["hits"].item() == 1  # row 2: a non-own reference ties with the own ones -> no hit
    assert out["closest"].tolist() == [1.0, 1.0]  # row 1: 0.5 + 0.5; row 2: 0.5 + 0.5
    assert out["top1_all"].tolist() == pytest.approx([0.5 + 1 / 3, 0.5 + 1 / 3])
    assert out["top1_hits"].tolist() == [0.5, 0.5]
    # Rounding-level differences are ties too.
    near = position_share_update(torch.tensor([[0.5, 0.5 + 1e-8, 0.0]]), torch.tensor([[0, 1]]))
    assert near["closest"].tolist() == [0.5, 0.5]
