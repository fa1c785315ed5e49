"""Mention order against object area, tallied over a caption corpus (PROBES.md, section 5).

For each caption: the objects it mentions, in mention order, that the annotation gives an area;
``n`` = how many. Per ``n`` the tally keeps the histogram of the largest object's mention position,
P(largest mentioned first) with a Wilson 95% interval against the ``1/n`` of a random order, and
Kendall's tau between mention order and area. A caption that cannot count is skipped with a reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Why a caption did not count, in the order they are checked.
SKIP_REASONS: dict[str, str] = {
    "no_caption": "the sample has no caption (or an empty one)",
    "bad_annotation": "the sample's annotation could not be read",
    "no_annotations": "no objects annotated for the sample",
    "fewer_than_2_mentions": "the caption mentions fewer than 2 vocabulary objects",
    "object_without_area": "a mentioned, annotated object has no area",
    "fewer_than_2_annotated": "fewer than 2 of the mentioned objects are annotated",
    "largest_tied": "two mentioned objects share the largest area",
}


def kendall_pairs(areas: Sequence[float]) -> tuple[int, int, int]:
    """Pairs ``i < j`` of objects in mention order: ``(concordant, discordant, tied)``.

    Concordant: the earlier-mentioned object is the larger (``areas[i] > areas[j]``).
    """
    c = d = t = 0
    for i in range(len(areas)):
        for j in range(i + 1, len(areas)):
            c += areas[i] > areas[j]
            d += areas[i] < areas[j]
            t += areas[i] == areas[j]
    return c, d, t


def kendall_tau_b(areas: Sequence[float]) -> float:
    """Kendall's tau-b between mention order and area, ``(C - D) / sqrt(n0 (n0 - T))`` with
    ``n0 = n(n-1)/2`` pairs and ``T`` pairs tied in area (mention order has no ties).

    +1: mentioned from the largest down; -1: from the smallest up; NaN when every area ties.
    """
    c, d, t = kendall_pairs(areas)
    n0 = c + d + t
    return (c - d) / math.sqrt(n0 * (n0 - t)) if n0 > t else math.nan


def _wilson(k: int, n: int) -> tuple[float, float]:
    from clipprobe.probes.stats import wilson  # the project's one Wilson interval (imports torch: lazily)

    return wilson(k, n)


def excess(share: float | None, baseline: float | None) -> float | None:
    """How far above chance: ``(share - b) / (1 - b)``; 0 = random order, 1 = always largest first.

    Under the policy "largest first with probability p, else a random order", P(largest first) =
    ``p + (1 - p) b`` with ``b = 1/n``, so the excess recovers ``p`` (a negative value: the largest
    is avoided). The same increasing map turns the share's interval into the excess's.
    """
    if share is None or baseline is None or baseline >= 1:
        return None
    return (share - baseline) / (1 - baseline)


def _share_fields(k: int, total: int, baseline: float | None) -> dict[str, Any]:
    """P(largest first), its Wilson interval, and the excess over ``baseline`` with its interval."""
    share = k / total if total else None
    lo, hi = _wilson(k, total)
    return {
        "largest_first": share,
        "largest_first_interval": [lo, hi],
        "baseline": baseline,
        "excess": excess(share, baseline),
        "excess_interval": [excess(lo, baseline), excess(hi, baseline)],
    }


@dataclass
class _Tally:
    """Counts for one number of objects ``n``."""

    n: int
    positions: list[int] = field(default_factory=list)  # [n]: captions with the largest at position i+1
    tau_sum: float = 0.0
    tau_count: int = 0
    pairs: list[int] = field(default_factory=lambda: [0, 0, 0])  # concordant, discordant, tied

    def __post_init__(self) -> None:
        self.positions = self.positions or [0] * self.n

    def add(self, areas: Sequence[float]) -> None:
        self.positions[max(range(self.n), key=lambda i: areas[i])] += 1
        tau = kendall_tau_b(areas)
        if not math.isnan(tau):
            self.tau_sum += tau
            self.tau_count += 1
        for i, v in enumerate(kendall_pairs(areas)):
            self.pairs[i] += v

    def summary(self) -> dict[str, Any]:
        total = sum(self.positions)
        c, d, t = self.pairs
        return {
            "captions": total,
            "position_counts": list(self.positions),
            "position_shares": [k / total for k in self.positions],
            **_share_fields(self.positions[0], total, 1.0 / self.n),
            "kendall_tau_mean": self.tau_sum / self.tau_count if self.tau_count else None,
            "kendall_tau_pooled": (c - d) / (c + d + t),
        }


class CorpusStats:
    """Running tally over captions; memory grows with the largest ``n`` seen, not with the corpus."""

    def __init__(self) -> None:
        self.seen = 0
        self.skipped: Counter[str] = Counter()
        self.mentioned_not_annotated = 0
        self.annotated_not_mentioned = 0
        self.tallies: dict[int, _Tally] = {}

    def skip(self, reason: str) -> None:
        """Count a caption that cannot be used, for ``reason`` (a key of :data:`SKIP_REASONS`)."""
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.seen += 1
        self.skipped[reason] += 1

    def add(self, mentions: Sequence[str], areas: Mapping[str, float | None] | None) -> str | None:
        """Count one caption: its mentioned object names in order and the annotation's areas by name.

        Mentions that the annotation lacks are dropped (and counted); an annotated mention without
        an area skips the caption. Returns the skip reason, or None when the caption counted.
        """
        reason = self._check(mentions, areas)
        if reason is not None:
            self.skip(reason)
            return reason
        assert areas is not None
        self.seen += 1
        ordered = [float(areas[m]) for m in mentions if m in areas]  # type: ignore[arg-type]
        self.tallies.setdefault(len(ordered), _Tally(len(ordered))).add(ordered)
        return None

    def _check(self, mentions: Sequence[str], areas: Mapping[str, float | None] | None) -> str | None:
        if not areas:
            return "no_annotations"
        annotated = [m for m in mentions if m in areas]
        self.mentioned_not_annotated += len(mentions) - len(annotated)
        self.annotated_not_mentioned += len(set(areas) - set(mentions))
        if len(mentions) < 2:
            return "fewer_than_2_mentions"
        values = [areas[m] for m in annotated]
        if any(v is None or not math.isfinite(v) or v < 0 for v in values):
            return "object_without_area"
        if len(annotated) < 2:
            return "fewer_than_2_annotated"
        top = max(values)  # type: ignore[type-var]
        return "largest_tied" if sum(v == top for v in values) > 1 else None

    def summary(self) -> dict[str, Any]:
        """Everything as plain JSON types: per-``n`` rows under ``by_n`` (keys are ``n`` as strings),
        an ``overall`` row (its baseline is the mean ``1/n`` over the captions used), skip counts."""
        by_n = {str(n): self.tallies[n].summary() for n in sorted(self.tallies)}
        used = sum(t["captions"] for t in by_n.values())
        first = sum(t["position_counts"][0] for t in by_n.values())
        taus = [t for t in self.tallies.values() if t.tau_count]
        pairs = [sum(t.pairs[i] for t in self.tallies.values()) for i in range(3)]
        baseline = sum(sum(t.positions) / t.n for t in self.tallies.values()) / used if used else None
        overall = {
            "captions": used,
            **_share_fields(first, used, baseline),
            "kendall_tau_mean": sum(t.tau_sum for t in taus) / sum(t.tau_count for t in taus) if taus else None,
            "kendall_tau_pooled": (pairs[0] - pairs[1]) / sum(pairs) if sum(pairs) else None,
        }
        return {
            "captions_seen": self.seen,
            "captions_used": used,
            "skipped": {r: self.skipped[r] for r in SKIP_REASONS if self.skipped[r]},
            "skip_reasons": {r: SKIP_REASONS[r] for r in SKIP_REASONS if self.skipped[r]},
            "objects": {
                "mentioned_not_annotated": self.mentioned_not_annotated,
                "annotated_not_mentioned": self.annotated_not_mentioned,
            },
            "overall": overall,
            "by_n": by_n,
        }
