"""Streaming tallies of the probes as torchmetrics ``Metric`` classes (sum-reduced, so the training
callback can split probe work across DDP ranks), each a thin class over pure functions.

Following torchmetrics: ``x_update`` returns a batch's counts, ``x_compute`` the formula; the
probes in :mod:`clipprobe.probes` call the same pure functions, so the class and the probe agree.

Under DDP the probes tally only their rank's share of the queries (:class:`Shard`, from the encoder)
in a tally whose ``compute()`` sums the counts over ranks (``sync_on_compute``), so every rank ends
with the counts of all queries.

- :class:`PositionShareTally` (TOR, IOR, I2TOR): per query, similarities to every reference
  ``[B, V]`` and the query's own objects ``[B, n]`` in position (or role) order; optionally which
  queries are hits when the caller defines hits otherwise (TOR's ``hits: substring``,
  :func:`substring_hits`).
- :class:`PreferenceTally` (ITM): scores of a right and a wrong candidate; wins and ties.
- :class:`AccuracyTally` (TOC, IOC): predicted and true labels.
- :class:`MeanTally` (attention): sum, sum of squares and count of a continuous value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor
from torchmetrics import Metric

T = TypeVar("T", bound=Metric)


@dataclass(frozen=True)
class Shard:
    """This process's part of a probe's queries: ``rank`` of ``world_size``; tallies live on ``device``
    (NCCL reduces CUDA tensors only)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def of(cls, encoder: object) -> Shard:
        """The shard an encoder works in (one process for encoders without ``rank``/``world_size``)."""
        world = int(getattr(encoder, "world_size", 1))
        device = torch.device(getattr(encoder, "device", "cpu")) if world > 1 else torch.device("cpu")
        return cls(int(getattr(encoder, "rank", 0)), world, device)

    def rows(self, total: int) -> range:
        """This rank's contiguous share of ``total`` query rows."""
        per = -(-total // self.world_size)  # ceil
        return range(min(total, self.rank * per), min(total, (self.rank + 1) * per))

    def tally(self, metric: type[T], *args: object) -> T:
        """A new tally that sums across ranks on ``compute()`` when there are several."""
        return metric(*args, sync_on_compute=self.world_size > 1).to(self.device)  # type: ignore[call-arg]


def tally_counts(tally: Metric, keys: tuple[str, ...]) -> dict[str, Tensor]:
    """The (rank-summed) counts of a tally, on the CPU."""
    import warnings

    with warnings.catch_warnings():  # a rank with no queries computes its zeros, as intended
        warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
        out = tally.compute()
    return {k: out[k].cpu() for k in keys}


ONE_PROCESS = Shard()
POSITION_COUNTS = ("total", "hits", "top1_hits", "top1_all", "closest")
PREFERENCE_COUNTS = ("wins", "ties", "total")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of objects n must be a positive int, got {n!r}")


# ---------------------------------------------------------------------------------------------
# Position shares (TOR / IOR / I2TOR).


TIE_TOL = 1e-6  # similarities closer than this are tied (float32 rounding of equal cosines is ~1e-7)


def position_share_update(sims: Tensor, objects: Tensor, hit: Tensor | None = None) -> dict[str, Tensor]:
    """Counts for one batch of queries.

    Ties share the credit: when t references are within :data:`TIE_TOL` of the best similarity,
    each gets 1/t (so a query whose embedding is exactly between two of its objects, as split and
    aggregate gives for n=2, counts half for each position rather than all for the first).

    Args:
        sims: ``[B, V]`` similarity of each query to every reference.
        objects: ``[B, n]`` reference indices of each query's own objects, in position order
            (o_1..o_n); distinct within a row.
        hit: ``[B]`` bool, which queries are hits, when the caller defines hits otherwise (the
            study's substring test, :func:`substring_hits`); None = the exact test below.

    Returns:
        ``total`` and ``hits`` (int64): queries, and hits: by default queries whose own objects are
        all strictly more similar than every other reference (T_n, the n nearest, is exactly the own
        objects); ``top1_hits[k]`` (hits whose nearest reference is o_k; with another hit test the
        nearest reference of a hit need not be one of its objects, so these may sum below ``hits``),
        ``top1_all[k]`` (any query whose nearest reference is o_k), ``closest[k]`` (o_k is the most
        similar among the own objects), float64 ``[n]`` because of tie credit.
    """
    if sims.ndim != 2 or objects.ndim != 2 or sims.shape[0] != objects.shape[0]:
        raise ValueError(f"expected sims [B, V] and objects [B, n], got {tuple(sims.shape)} and {tuple(objects.shape)}")
    sims = sims.double()
    objects = objects.long()
    own = sims.gather(1, objects)  # [B, n]
    if hit is None:
        others = sims.scatter(1, objects, float("-inf"))  # [B, V], own objects masked out
        hit = own.min(dim=1).values > others.max(dim=1).values  # [B]
    elif hit.shape != (sims.shape[0],):
        raise ValueError(f"expected hit [B] = [{sims.shape[0]}], got {tuple(hit.shape)}")
    else:
        hit = hit.to(device=sims.device, dtype=torch.bool)
    top = sims >= sims.max(dim=1, keepdim=True).values - TIE_TOL  # [B, V] tied for nearest
    top1 = (top.double() / top.sum(dim=1, keepdim=True)).gather(1, objects)  # [B, n] credit
    near = own >= own.max(dim=1, keepdim=True).values - TIE_TOL  # [B, n] tied for closest own
    closest = near.double() / near.sum(dim=1, keepdim=True)
    return {
        "total": torch.tensor(objects.shape[0], dtype=torch.long),
        "hits": hit.sum().long(),
        "top1_hits": (top1 * hit[:, None]).sum(dim=0),
        "top1_all": top1.sum(dim=0),
        "closest": closest.sum(dim=0),
    }


def nearest_n(sims: Tensor, n: int) -> Tensor:
    """``[B, V]`` bool: the references at least as similar as each query's n-th nearest (T_n, the n
    nearest; more than n only where references tie exactly at its edge, so that a hit counted on T_n
    holds under every way of breaking the tie, as the exact test's strict inequality does)."""
    if not 1 <= n <= sims.shape[1]:
        raise ValueError(f"cannot take the {n} nearest of {sims.shape[1]} references")
    kth = sims.topk(n, dim=1).values[:, -1:]  # [B, 1]
    return sims >= kth


def substring_hits(sims: Tensor, n: int, texts: Sequence[str], references: Sequence[str]) -> Tensor:
    """The study's hit test (its TOR script: ``all(word in sentence for word in topn_words)``): a
    query is a hit when every one of its n nearest references (:func:`nearest_n`) is a substring of
    its text. So "bench and hot dog" retrieving {hot dog, dog} is a hit ("dog" is inside "hot dog"),
    and "car" is found in "carrot". Case is ignored: the same as the study's test on generated captions
    (lower case, as the names), and on COCO's captions ("Dogs on a couch") a capital letter must not hide
    the first-mentioned object.

    Args:
        sims: ``[B, V]`` similarity of each query to every reference.
        n: objects per query (the size of T_n).
        texts: the B query texts (captions).
        references: the V reference names, in the columns' order.

    Returns:
        ``[B]`` bool, for :func:`position_share_update`'s ``hit``.
    """
    if len(texts) != sims.shape[0] or len(references) != sims.shape[1]:
        raise ValueError(f"{len(texts)} texts and {len(references)} references for sims {tuple(sims.shape)}")
    rows, cols = nearest_n(sims, n).nonzero(as_tuple=True)
    texts, references = [t.casefold() for t in texts], [r.casefold() for r in references]
    outside = [references[c] not in texts[r] for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
    misses = torch.zeros(sims.shape[0], dtype=torch.long)
    misses.index_add_(0, rows.cpu(), torch.tensor(outside, dtype=torch.long))
    return (misses == 0).to(sims.device)


def position_share_compute(counts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Shares from counts: ``hit_rate = hits/total``, ``share[k] = top1_hits[k]/hits``,
    ``share_all[k] = top1_all[k]/total``, ``closest[k] = closest[k]/total``,
    ``bias_index = (closest[0] - 1/n)/(1 - 1/n)``. Zero denominators give NaN."""
    total = counts["total"].double()
    hits = counts["hits"].double()
    n = counts["closest"].numel()
    closest = counts["closest"].double() / total
    bias = (closest[0] - 1.0 / n) / (1.0 - 1.0 / n) if n > 1 else torch.tensor(float("nan"))
    return {
        "hit_rate": hits / total,
        "share": counts["top1_hits"].double() / hits,
        "share_all": counts["top1_all"].double() / total,
        "closest": closest,
        "bias_index": bias,
    }


def add_counts(a: dict[str, Tensor] | None, b: dict[str, Tensor]) -> dict[str, Tensor]:
    """Elementwise sum of two count dicts (``None`` is the empty tally)."""
    return dict(b) if a is None else {k: a[k] + b[k] for k in a}


class PositionShareTally(Metric):
    """Which of a query's n objects its embedding sits closest to (TOR, IOR, I2TOR).

    ``update(sims [B, V], objects [B, n], hit [B] | None)``; ``compute()`` returns the summed counts
    (``total``, ``hits``, ``top1_hits``, ``top1_all``, ``closest``) and the shares of
    :func:`position_share_compute` (``hit_rate``, ``share``, ``share_all``, ``closest_share``,
    ``bias_index``).

    Args:
        n: number of objects per query.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, n: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        _check_n(n)
        self.n = n
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("top1_hits", "top1_all", "closest"):
            self.add_state(name, torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sims: Tensor, objects: Tensor, hit: Tensor | None = None) -> None:
        if objects.shape[-1] != self.n:
            raise ValueError(f"PositionShareTally(n={self.n}) got objects with {objects.shape[-1]} columns")
        counts = position_share_update(sims, objects, hit)
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        counts = {k: getattr(self, k) for k in ("total", "hits", "top1_hits", "top1_all", "closest")}
        shares = position_share_compute(counts)
        return {**counts, **{("closest_share" if k == "closest" else k): v for k, v in shares.items()}}


# ---------------------------------------------------------------------------------------------
# Preferences (ITM): does the right candidate score strictly higher than the wrong one?


def preference_update(right: Tensor, wrong: Tensor) -> dict[str, Tensor]:
    """``wins`` = #(right > wrong), ``ties`` = #(right == wrong), ``total``; inputs ``[B]``."""
    if right.shape != wrong.shape:
        raise ValueError(f"right and wrong scores differ in shape: {tuple(right.shape)} vs {tuple(wrong.shape)}")
    return {
        "wins": (right > wrong).sum().long(),
        "ties": (right == wrong).sum().long(),
        "total": torch.tensor(right.numel(), dtype=torch.long),
    }


def preference_compute(counts: dict[str, Tensor]) -> dict[str, Tensor]:
    """``accuracy = wins/total`` (ties lose, as in the study), ``preference = wins/(total - ties)``
    (among decided pairs), ``tie_rate = ties/total``."""
    total, wins, ties = (counts[k].double() for k in ("total", "wins", "ties"))
    return {"accuracy": wins / total, "preference": wins / (total - ties), "tie_rate": ties / total}


class PreferenceTally(Metric):
    """Right-versus-wrong comparisons: ``update(right [B], wrong [B])``; ``compute()`` gives the
    counts (``wins``, ``ties``, ``total``) and :func:`preference_compute`'s shares."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        for name in ("wins", "ties", "total"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, right: Tensor, wrong: Tensor) -> None:
        for name, value in preference_update(right, wrong).items():
            setattr(self, name, getattr(self, name) + value.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        counts = {k: getattr(self, k) for k in ("wins", "ties", "total")}
        return {**counts, **preference_compute(counts)}


# ---------------------------------------------------------------------------------------------
# Accuracy (TOC / IOC).


def accuracy_update(preds: Tensor, target: Tensor) -> dict[str, Tensor]:
    """``correct`` and ``total``; ``preds`` are labels ``[B]`` or logits ``[B, C]``."""
    if preds.ndim == 2:
        preds = preds.argmax(dim=1)
    if preds.shape != target.shape:
        raise ValueError(f"preds and target differ in shape: {tuple(preds.shape)} vs {tuple(target.shape)}")
    return {"correct": (preds == target).sum().long(), "total": torch.tensor(target.numel(), dtype=torch.long)}


def accuracy_compute(counts: dict[str, Tensor]) -> Tensor:
    """``correct / total`` (NaN when empty)."""
    return counts["correct"].double() / counts["total"].double()


class AccuracyTally(Metric):
    """Classification accuracy with raw counts: ``compute()`` gives ``correct``, ``total``, ``accuracy``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        for name, value in accuracy_update(preds, target).items():
            setattr(self, name, getattr(self, name) + value.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        counts = {"correct": self.correct, "total": self.total}
        return {**counts, "accuracy": accuracy_compute(counts)}


# ---------------------------------------------------------------------------------------------
# Means (attention shares).


def mean_update(values: Tensor) -> dict[str, Tensor]:
    """``value_sum``, ``value_sq`` (sum of squares; float64) and ``count`` of a batch of values."""
    v = values.detach().double().flatten()
    return {"value_sum": v.sum(), "value_sq": (v * v).sum(), "count": torch.tensor(v.numel(), dtype=torch.long)}


def mean_compute(counts: dict[str, Tensor]) -> dict[str, Tensor]:
    """``mean = value_sum/count``; ``std`` (sample, ``count - 1`` in the denominator)."""
    n = counts["count"].double()
    mean = counts["value_sum"] / n
    var = (counts["value_sq"] - n * mean * mean) / (n - 1)
    return {"mean": mean, "std": var.clamp_min(0).sqrt()}


class MeanTally(Metric):
    """Mean and spread of a continuous value: ``compute()`` gives ``value_sum``, ``value_sq``,
    ``count``, ``mean`` and ``std``."""

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("value_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("value_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        for name, value in mean_update(values).items():
            setattr(self, name, getattr(self, name) + value.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        counts = {"value_sum": self.value_sum, "value_sq": self.value_sq, "count": self.count}
        return {**counts, **mean_compute(counts)}
