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


def put_share(
    result: ProbeResult, name: str, k: float, total: int, *, family: str, n: int | None = None,
    key: str | None = None, variant: str | None = None, chance: float | None = None,
) -> None:  # fmt: skip
    """Record the share ``k / total`` as metric ``name`` with its count ``total`` and Wilson interval."""
    from clipprobe.probes.base import Metric

    result.add(Metric(name, family, share(float(k), int(total)), int(total), wilson(float(k), int(total)), n, key,
                      variant, chance))  # fmt: skip


def put_bias_index(
    result: ProbeResult, name: str, k_first: float, total: int, n: int, *, variant: str | None = None
) -> None:
    """Record the bias index of ``closest_1 = k_first / total`` among ``n`` objects; its interval is
    the Wilson interval of ``closest_1`` mapped through the same (increasing, linear) formula."""
    from clipprobe.probes.base import Metric

    lo, hi = wilson(float(k_first), int(total))
    value = bias_index(share(float(k_first), int(total)), n)
    result.add(Metric(name, "bias_index", value, int(total), (bias_index(lo, n), bias_index(hi, n)), n, None, variant,
                      0.0))  # fmt: skip


def put_mean(
    result: ProbeResult, name: str, mean: float, std: float, count: int, *, family: str = "mean",
    n: int | None = None, key: str | None = None, variant: str | None = None,
) -> None:  # fmt: skip
    """Record a mean of ``count`` continuous values (for example attention shares) with the normal
    95% interval ``mean ± z * std / sqrt(count)``."""
    from clipprobe.probes.base import Metric

    count = int(count)
    half = Z95 * std / math.sqrt(count) if count > 1 else math.nan
    value = float(mean) if count else math.nan
    interval = (mean - half, mean + half) if count > 1 else (math.nan, math.nan)
    result.add(Metric(name, family, value, count, interval, n, key, variant))


def put_position_shares(
    result: ProbeResult, counts: Mapping[str, Any], *, variant: str | None = None, roles: Sequence[str] | None = None
) -> None:
    """Write a position-share tally (:func:`clipprobe.probes.tallies.position_share_update` counts) for
    queries of ``n = len(counts["closest"])`` objects.

    Names start with ``{variant}/`` when there is a variant, then ``n{n}/``. With ``roles=None`` (TOR:
    positions 1..n) they end in ``hit_rate``, ``share_k`` (among hits), ``share_k_all`` (all queries),
    ``closest_k`` and ``bias_index``; with roles (IOR: ``large``, ``small_1``, ...; ``slot_1``, ...) in
    ``<role>``, ``<role>_all`` and ``closest_<role>``. Families: ``hit_rate``, ``share``, ``share_all``,
    ``closest``, ``bias_index``; the position or role is the entry's ``key``.
    """
    n = len(counts["closest"])
    names = [str(k + 1) for k in range(n)] if roles is None else list(roles)
    if len(names) != n:
        raise ValueError(f"{len(names)} role names for {n} objects")
    prefix = (f"{variant}/" if variant else "") + f"n{n}/"
    total, hits = int(counts["total"]), int(counts["hits"])
    where = {"n": n, "variant": variant}
    put_share(result, f"{prefix}hit_rate", hits, total, family="hit_rate", **where)
    for k, key in enumerate(names):
        base = f"share_{key}" if roles is None else key
        chance = 1.0 / n
        put_share(result, f"{prefix}{base}", float(counts["top1_hits"][k]), hits, family="share", key=key,
                  chance=chance, **where)  # fmt: skip
        put_share(result, f"{prefix}{base}_all", float(counts["top1_all"][k]), total, family="share_all", key=key,
                  **where)  # fmt: skip
        put_share(result, f"{prefix}closest_{key}", float(counts["closest"][k]), total, family="closest", key=key,
                  chance=chance, **where)  # fmt: skip
    if n > 1:
        put_bias_index(result, f"{prefix}bias_index", float(counts["closest"][0]), total, n, variant=variant)
