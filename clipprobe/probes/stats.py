"""Shares with honest uncertainty: Wilson 95% intervals, the bias index, and helpers that write a
share into a :class:`~clipprobe.probes.base.ProbeResult` with its count and interval.

A share with a zero denominator is undefined: its value is NaN, its count 0 and its interval
``(0.0, 1.0)`` (nothing is known). Some of the study's rows rest on 23 cases; the interval says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep this module torch-free: clipprobe.analysis uses wilson()
    from clipprobe.probes.base import ProbeResult

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial share ``k / n``.

    ``centre = (p + z²/2n) / (1 + z²/n)``, ``half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)``.

    Args:
        k: successes, ``0 <= k <= n`` (may be fractional where ties share credit).
        n: trials; ``n == 0`` gives ``(0.0, 1.0)``.
        z: normal quantile (default 95%).

    Returns:
        ``(lo, hi)`` clipped to ``[0, 1]``.

    Raises:
        ValueError: ``k`` outside ``[0, n]``.
    """
    if n < 0 or k < 0 or k > n + 1e-9 * n:
        raise ValueError(f"wilson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = min(max(k / n, 0.0), 1.0)  # fractional tie credit can overshoot by rounding
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # Exact ends: the interval must contain 0 when k == 0 and 1 when k == n (rounding can lose them).
    return (0.0 if k <= 0 else lo, 1.0 if k >= n else hi)


def share(k: float, n: int) -> float:
    """``k / n``, or NaN when ``n == 0``."""
    return k / n if n else math.nan


def bias_index(closest_1: float, n: int) -> float:
    """First-position (or large-object) bias: ``(closest_1 - 1/n) / (1 - 1/n)``.

    0 = no preference (every one of the ``n`` objects equally often the closest), 1 = always the
    first, negative = the first is avoided. NaN stays NaN.
    """
    if n < 2:
        raise ValueError(f"bias_index needs n >= 2 objects, got {n}")
    chance = 1.0 / n
    return (closest_1 - chance) / (1.0 - chance)


def put_share(result: ProbeResult, key: str, k: float, n: int) -> None:
    """Record ``k / n`` under ``key`` with its count ``n`` and Wilson interval."""
    result.metrics[key] = share(float(k), int(n))
    result.counts[key] = int(n)
    result.intervals[key] = wilson(float(k), int(n))


def put_bias_index(result: ProbeResult, key: str, k_first: float, total: int, n: int) -> None:
    """Record the bias index of ``closest_1 = k_first / total`` among ``n`` objects; its interval is
    the Wilson interval of ``closest_1`` mapped through the same (increasing, linear) formula."""
    lo, hi = wilson(float(k_first), int(total))
    result.metrics[key] = bias_index(share(float(k_first), int(total)), n)
    result.counts[key] = int(total)
    result.intervals[key] = (bias_index(lo, n), bias_index(hi, n))


def put_mean(result: ProbeResult, key: str, mean: float, std: float, count: int) -> None:
    """Record a mean of ``count`` continuous values (for example attention shares) with the normal
    95% interval ``mean ± z * std / sqrt(count)``."""
    count = int(count)
    half = Z95 * std / math.sqrt(count) if count > 1 else math.nan
    result.metrics[key] = float(mean) if count else math.nan
    result.counts[key] = count
    result.intervals[key] = (mean - half, mean + half) if count > 1 else (math.nan, math.nan)


def put_position_shares(
    result: ProbeResult, prefix: str, counts: Mapping[str, Any], roles: Sequence[str] | None = None
) -> None:
    """Write a position-share tally (:func:`clipprobe.probes.tallies.position_share_update` counts).

    With ``roles=None`` (TOR: positions 1..n) the keys are ``{prefix}hit_rate``,
    ``{prefix}share_k`` (among hits), ``{prefix}share_k_all`` (all queries), ``{prefix}closest_k``
    and ``{prefix}bias_index``. With roles (IOR: ``large``, ``small_1``, ...; ``slot_1``, ...) they are
    ``{prefix}<role>``, ``{prefix}<role>_all`` and ``{prefix}closest_<role>``.
    """
    n = len(counts["closest"])
    names = [str(k + 1) for k in range(n)] if roles is None else list(roles)
    if len(names) != n:
        raise ValueError(f"{len(names)} role names for {n} objects")
    total, hits = int(counts["total"]), int(counts["hits"])
    put_share(result, f"{prefix}hit_rate", hits, total)
    for k, name in enumerate(names):
        base = f"share_{name}" if roles is None else name
        put_share(result, f"{prefix}{base}", float(counts["top1_hits"][k]), hits)
        put_share(result, f"{prefix}{base}_all", float(counts["top1_all"][k]), total)
        put_share(result, f"{prefix}closest_{name}", float(counts["closest"][k]), total)
    if n > 1:
        put_bias_index(result, f"{prefix}bias_index", float(counts["closest"][0]), total, n)


def merge_prefixed(into: ProbeResult, part: ProbeResult, prefix: str) -> None:
    """Copy ``part``'s metrics, counts and intervals into ``into`` under ``prefix + key``."""
    for key, value in part.metrics.items():
        into.metrics[prefix + key] = value
    for key, value in part.counts.items():
        into.counts[prefix + key] = value
    for key, value in part.intervals.items():
        into.intervals[prefix + key] = value
    into.notes.extend(f"{prefix}{note}" for note in part.notes)
