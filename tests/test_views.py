"""Experiment views: condition curves (one line per condition, seeds averaged) and the final table."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from report_records import record, run_record, single

from clipprobe.evaluation.views import PanelSpec, by_condition, condition_curves, condition_line, final_table

FIRST = PanelSpec(
    probe="tor", family="closest", n=4, key="1", variant=None, title="tor closest_1 (first mention nearest)"
)
HITS = PanelSpec("tor", "hit_rate", 4)


def experiment(root: Path) -> list:
    """Two conditions: size_first with seeds 0 and 1, random with one seed; steps appended out of order."""
    recs = []
    for cond, seeds, base in (("size_first", (0, 1), 0.5), ("random", (0,), 0.25)):
        for s in seeds:
            run = str(root / f"{cond}-s{s}")
            for step in (100, 0, 20):
                first = base + step / 1000 + s / 100
                recs.append(run_record(run, step, first, source="experiment", extra={"condition": cond, "seed": s}))
    return recs


def test_panel_spec_selects_by_fields() -> None:
    rec = record(
        "tor", [single("odd name", "closest", 0.7, 50, n=4, key="1"), single("n4/x", "hit_rate", 1.0, 50, n=4)]
    )
    assert FIRST.find(rec).name == "odd name" and HITS.find(rec).family == "hit_rate"
    assert PanelSpec("tor", "closest", 3, "1").find(rec) is None  # n compared exactly
    assert PanelSpec("ior", "closest", 4, "1").find(rec) is None
    assert PanelSpec("tor", "closest", 4, "1", target="simco").find(rec) is None
    assert PanelSpec("tor", "closest", 4, "1").label == "tor closest_1 n=4" and FIRST.label.startswith(
        "tor closest_1 ("
    )


def test_condition_lines_average_seeds(tmp_path: Path) -> None:
    groups = by_condition(experiment(tmp_path))
    assert list(groups) == ["size_first", "random"] and list(groups["size_first"]) == ["seed 0", "seed 1"]
    mean, _ = condition_line("size_first", groups["size_first"], FIRST, "samples_seen")
    assert mean.label == "size_first (2 seeds)" and mean.band == "spread"
    assert mean.xs == [0, 20 * 64, 100 * 64]
    assert mean.ys == pytest.approx([0.505, 0.525, 0.605]) and mean.lo == pytest.approx([0.5, 0.52, 0.6])
    single_run, found = condition_line("random", groups["random"], FIRST, "step")
    assert single_run.band == "wilson" and single_run.xs == [0, 20, 100] and found[0].chance == 0.25
    assert single_run.ys[0] == pytest.approx(0.25) and single_run.lo[0] < 0.25 < single_run.hi[0]


def test_condition_curves_are_deterministic_pngs(tmp_path: Path) -> None:
    recs = experiment(tmp_path)
    a = condition_curves(recs, [FIRST, HITS], tmp_path / "a" / "curves.png")
    b = condition_curves(list(recs), [FIRST, HITS], tmp_path / "b.png")
    assert a == tmp_path / "a" / "curves.png" and a.read_bytes() == b.read_bytes()
    with Image.open(a) as im:
        assert im.format == "PNG" and im.size[0] > 600
    c = condition_curves(recs, [FIRST, PanelSpec("ior", "closest", 4, "large")], tmp_path / "c.png", x="step")
    assert c.read_bytes() != a.read_bytes()  # a panel without data is drawn empty, not an error


def test_final_table_gives_the_last_steps(tmp_path: Path) -> None:
    table = final_table(experiment(tmp_path), [FIRST, HITS])
    lines = table.splitlines()
    assert lines[0] == "| condition | samples seen | tor closest_1 (first mention nearest) | tor hit_rate n=4 |"
    size_first = lines[2].split(" | ")
    # step 100 is the last (steps compared as numbers): seeds 0.60 and 0.61
    # with the median half-width of the runs' own Wilson intervals (60 and 61 of 100)
    from clipprobe.probes.stats import wilson

    half = sum((hi - lo) / 2 for lo, hi in (wilson(60, 100), wilson(61, 100))) / 2
    assert size_first[:3] == ["| size_first", "6,400", f"60.5 (60.0–61.0, 2 seeds; run ±{100 * half:.1f})"]
    assert size_first[3].startswith("100.0 (100.0–100.0, 2 seeds; run ±")
    random_row = lines[3]
    assert random_row.startswith("| random | 6,400 | 35.0 [") and "100.0 [96.3, 100.0]" in random_row
    assert "Chance: tor closest_1 (first mention nearest) = 25.0." in table


def test_final_table_without_the_metric(tmp_path: Path) -> None:
    table = final_table(experiment(tmp_path), [PanelSpec("ior", "closest", 4, "large")])
    assert "| size_first |  | – |" in table and "Chance" not in table


def test_final_table_of_a_standard_metric(tmp_path: Path) -> None:
    from report_records import run_standard_record

    recs = [run_standard_record(str(tmp_path / "a"), step, 0.1 + step / 1000) for step in (100, 0)]
    for r in recs:
        r.run["condition"] = "random"
    acc1 = PanelSpec("zeroshot_classification", "accuracy", None, "top1", target="cifar10")
    table = final_table(recs, [acc1])
    assert "| random | 6,400 | 20.0 [17.6, 22.6] |" in table  # the last step, in percent like the shares
    assert "Chance: zeroshot_classification accuracy_top1 = 10.0." in table
