"""Wilson intervals, the bias index and the result writers of clipprobe.probes.stats."""

from __future__ import annotations

import math

import pytest
import torch

from clipprobe.probes.base import ProbeResult
from clipprobe.probes.stats import (
    bias_index,
    put_bias_index,
    put_mean,
    put_position_shares,
    put_share,
    share,
    wilson,
)


def test_wilson_known_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)  # upper end z²/(n+z²)
    assert lo == 0.0 and hi == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_contains_share_and_narrows():
    for n in (1, 7, 23, 100, 1000):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson(500, 1000)[1] - wilson(500, 1000)[0] < wilson(5, 10)[1] - wilson(5, 10)[0]


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson(k, n)


def test_bias_index():
    assert bias_index(0.25, 4) == pytest.approx(0.0)
    assert bias_index(1.0, 4) == pytest.approx(1.0)
    assert bias_index(0.0, 2) == pytest.approx(-1.0)
    assert math.isnan(bias_index(math.nan, 3))
    with pytest.raises(ValueError):
        bias_index(0.5, 1)


def test_put_share_and_undefined_share():
    r = ProbeResult("x")
    put_share(r, "a", 3, 4, family="share")
    assert r.metrics["a"] == 0.75 and r.counts["a"] == 4 and r.intervals["a"] == wilson(3, 4)
    put_share(r, "b", 0, 0, family="share")
    assert math.isnan(r.metrics["b"]) and r.counts["b"] == 0 and r.intervals["b"] == (0.0, 1.0)
    assert math.isnan(share(0, 0))


def test_put_bias_index_interval_maps_wilson():
    r = ProbeResult("x")
    put_bias_index(r, "bi", 60, 100, 4)
    lo, hi = wilson(60, 100)
    assert r.metrics["bi"] == pytest.approx((0.6 - 0.25) / 0.75)
    assert r.intervals["bi"] == pytest.approx((bias_index(lo, 4), bias_index(hi, 4)))


def test_put_mean():
    r = ProbeResult("x")
    put_mean(r, "m", 0.5, 0.1, 100)
    assert r.metrics["m"] == 0.5 and r.counts["m"] == 100
    assert r.intervals["m"] == pytest.approx((0.5 - 1.96 * 0.01, 0.5 + 1.96 * 0.01), abs=1e-4)


def test_put_position_shares_keys_positions_and_roles():
    counts = {
        "total": torch.tensor(10),
        "hits": torch.tensor(4),
        "top1_hits": torch.tensor([3, 1, 0]),
        "top1_all": torch.tensor([6, 2, 1]),
        "closest": torch.tensor([7, 2, 1]),
    }
    r = ProbeResult("tor")
    put_position_shares(r, counts)
    assert r.metrics["n3/hit_rate"] == 0.4 and r.counts["n3/hit_rate"] == 10
    assert r.metrics["n3/share_1"] == 0.75 and r.counts["n3/share_1"] == 4
    assert r.metrics["n3/share_2_all"] == 0.2 and r.metrics["n3/closest_1"] == 0.7
    assert r.metrics["n3/bias_index"] == pytest.approx((0.7 - 1 / 3) / (2 / 3))
    assert set(r.metrics) == set(r.counts) == set(r.intervals)
    r2 = ProbeResult("ior")
    put_position_shares(r2, counts, roles=["large", "small_1", "small_2"])
    assert r2.metrics["n3/large"] == 0.75 and r2.metrics["n3/small_1_all"] == 0.2
    assert r2.metrics["n3/closest_large"] == 0.7
    v = ProbeResult("m")
    put_position_shares(v, counts, variant="plain", roles=["large", "small_1", "small_2"])
    assert v.metrics["plain/n3/large"] == 0.75 and v.counts["plain/n3/large"] == 4


def test_entries_carry_their_structure() -> None:
    """Readers group metrics by the entries' fields, never by parsing names."""
    counts = {
        "total": torch.tensor(10),
        "hits": torch.tensor(4),
        "top1_hits": torch.tensor([3, 1]),
        "top1_all": torch.tensor([6, 2]),
        "closest": torch.tensor([7, 3]),
    }
    r = ProbeResult("ior")
    put_position_shares(r, counts, variant="equal", roles=["slot_1", "slot_2"])
    by_name = {m.name: m for m in r.entries}
    m = by_name["equal/n2/closest_slot_2"]
    assert (m.family, m.n, m.key, m.variant, m.count, m.chance) == ("closest", 2, "slot_2", "equal", 10, 0.5)
    assert m.value == pytest.approx(0.3) and m.interval == wilson(3, 10)
    assert by_name["equal/n2/slot_1"].family == "share" and not by_name["equal/n2/slot_1"].robust
    assert by_name["equal/n2/bias_index"].family == "bias_index" and by_name["equal/n2/bias_index"].key is None
    with pytest.raises(ValueError, match="written twice"):
        put_share(r, "equal/n2/hit_rate", 1, 2, family="hit_rate")


def test_stats_and_analysis_do_not_import_torch_or_lightning() -> None:
    """clipprobe.analysis uses wilson(); neither it nor the stats module may pull in torch or lightning."""
    import subprocess
    import sys

    code = (
        "import sys, clipprobe.probes.stats, clipprobe.analysis.command; "
        "print(sorted(m for m in ('torch', 'lightning', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
