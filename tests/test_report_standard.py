"""Standard evaluation (zero-shot classification and retrieval) in the report: the summary table next to the
bias headlines, the bias-against-accuracy plot, and the zero-shot panel of ``clipprobe plot``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from report_records import position_entries, record, run_record, run_standard_record, standard_record, tag

from clipprobe.cli import main
from clipprobe.evaluation.figures import bias_accuracy_figure, summary_figure
from clipprobe.evaluation.records import Record, append_records, write_records
from clipprobe.evaluation.runplots import plot
from clipprobe.evaluation.structure import order_records, sections, summary_tables
from clipprobe.evaluation.tables import csv_rows, fmt_value, to_markdown

ROLES = ["large", "small_1", "small_2", "small_3"]
HEADS = ["comco · tor · n4/closest_1", "comco · ior · n4/closest_large", "cifar10 · acc1", "cifar10 · acc5",
         "cifar10 · mean_per_class_recall", "heldout · image_retrieval_recall@1", "heldout · image_retrieval_recall@5",
         "heldout · text_retrieval_recall@1", "heldout · text_retrieval_recall@5"]  # fmt: skip


def released(model: str, weights: str, first: float, acc1: float) -> list[Record]:
    """A released model's tor, ior, classification and retrieval records (written in another order)."""
    who = {"model": model, "weights": tag(weights)}
    return [standard_record("zeroshot_retrieval", "heldout", **who), standard_record(acc1=acc1, **who),
            record("ior", position_entries(first + 0.1, roles=ROLES), **who),
            record("tor", position_entries(first), **who)]  # fmt: skip


def series(run: str, steps: tuple[int, ...] = (0, 20, 10), classification: bool = True) -> list[Record]:
    """A run's tor, ior and (optionally) classification records at each step; acc1 = 0.1 + step / 100."""
    out = []
    for step in steps:
        out += [run_record(run, step, 0.3 + step / 200), run_record(run, step, 0.4, "ior")]
        if classification:
            out.append(run_standard_record(run, step, 0.1 + step / 100))
    return out


def table(md: str, title: str) -> list[dict[str, str]]:
    """The rows of the markdown table under ``### title`` as header -> cell."""
    lines = md.splitlines()
    start, cells = lines.index(f"### {title}") + 2, []
    while start < len(lines) and lines[start].startswith("|"):
        cells.append([c.strip() for c in lines[start].strip().strip("|").split("|")])
        start += 1
    head, rows = cells[0], cells[2:]
    return [dict(zip(head, row, strict=True)) for row in rows]


def value(cell: str) -> float:
    """The number a cell starts with (percent)."""
    return float(cell.split()[0])


def test_summary_puts_accuracy_next_to_the_headline_bias() -> None:
    recs = released("ViT-B-32", "openai", 0.55, 0.634) + released("ViT-B-32", "laion2b_s34b_b79k", 0.64, 0.712)
    recs.append(record("tor", position_entries(0.25)))  # a random init, bias only
    md = to_markdown(order_records(recs))
    assert md.index("## summary") < md.index("## tor · comco")
    rows = table(md, "models")
    assert list(rows[0]) == ["model", "weights", "step", "samples seen", *HEADS]  # bias first, then per dataset
    by_weights = {row["weights"]: row for row in rows}
    for r in recs:
        row = by_weights.get(r.weights.get("tag"), by_weights["random"])
        if r.probe == "zeroshot_classification":
            acc1 = r.metric("acc1")
            assert row["cifar10 · acc1"] == fmt_value(acc1) and value(row["cifar10 · acc1"]) == pytest.approx(
                100 * acc1.value
            )
            assert row["cifar10 · mean_per_class_recall"] == "45.0"  # in percent, no interval
        if r.probe == "tor":
            assert value(row["comco · tor · n4/closest_1"]) == pytest.approx(100 * r.metric("n4/closest_1").value)
    assert value(by_weights["openai"]["cifar10 · acc1"]) == 63.4
    assert by_weights["laion2b_s34b_b79k"]["cifar10 · acc1"].startswith("71.2 [")
    assert (
        by_weights["random"]["cifar10 · acc1"] == "–"
        and value(by_weights["random"]["comco · tor · n4/closest_1"]) == 25
    )
    chance = rows[-1]
    assert chance["model"] == "*chance*" and len(rows) == 4  # three models, then the chance row
    assert (chance["comco · tor · n4/closest_1"], chance["cifar10 · acc1"], chance["cifar10 · acc5"]) == ("25.0", "10.0",
                                                                                                         "50.0")  # fmt: skip


def test_summary_of_a_series_has_a_row_per_step(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    md = to_markdown(order_records(series(run)))
    rows = table(md, "series `run` · clipprobe-tiny (callback)")
    assert [row["step"] for row in rows] == ["0", "10", "20", ""]  # steps as numbers, then the chance row
    assert [value(row["cifar10 · acc1"]) for row in rows[:3]] == [10.0, 20.0, 30.0]
    assert [value(row["comco · tor · n4/closest_1"]) for row in rows[:3]] == [30.0, 35.0, 40.0]
    assert [row["samples seen"] for row in rows[:3]] == ["0", "640", "1,280"]


def test_summary_splits_option_sets_and_skips_other_probes() -> None:
    paper = record("tor", position_entries(0.7), options={"mode": "paper"})
    balanced = record("tor", position_entries(0.4), options={"mode": "balanced"})
    toc = record("toc", [position_entries(0.5)[0]])  # a hit rate: no headline
    (only,) = summary_tables(order_records([paper, balanced, toc]))
    assert [c.title for c in only.columns] == [
        "comco · tor · n4/closest_1 (opts1)",
        "comco · tor · n4/closest_1 (opts2)",
    ]
    (row,) = only.rows
    assert [only.cell(row, c).value for c in only.columns] == pytest.approx([0.7, 0.4])
    assert summary_tables([toc]) == []
    assert "## summary" not in to_markdown([toc])


def test_standard_sections_come_after_the_bias_probes() -> None:
    recs = released("ViT-B-32", "openai", 0.55, 0.634)
    recs.append(record("retrieval", [standard_record().metrics[0]]))  # probes outside PROBE_ORDER: by name
    recs.append(record("zorder", position_entries(0.5)))  # its name sorts after the standard tasks'
    found = [(s.probe, s.target) for s in sections(order_records(recs))]
    assert found == [("tor", "comco"), ("ior", "comco"), ("retrieval", "comco"), ("zorder", "comco"),
                     ("zeroshot_classification", "cifar10"), ("zeroshot_retrieval", "heldout")]  # fmt: skip
    (summary,) = summary_tables(order_records(recs))
    assert [c.probe for c in summary.columns][:4] == ["tor", "ior", "zorder", "zeroshot_classification"]
    cls = next(s for s in sections(recs) if s.probe == "zeroshot_classification")
    assert [[c.title for c in cols] for _, cols in cls.tables] == [["top1", "top5"], ["mean_per_class_recall"]]
    md = to_markdown(order_records(recs))
    assert "### `accuracy`: accuracy" in md and "### `mean_per_class_recall`" in md
    assert "### `image_retrieval_recall`: zero-shot text-to-image retrieval" in md
    ret = standard_record("zeroshot_retrieval", "heldout", recall={1: 0.3})
    assert fmt_value(ret.metric("text_retrieval_recall@1")) == "30.0 [27.2, 32.9]"  # percent, like shares


def test_csv_carries_standard_records_unchanged(tmp_path: Path) -> None:
    recs = [standard_record(acc1=0.634), standard_record("zeroshot_retrieval", "heldout", classes=3)]
    rows = csv_rows(recs)
    assert len(rows) == sum(len(r.metrics) for r in recs) == 3 + 4
    for row, m in zip(rows, [m for r in recs for m in r.metrics], strict=True):
        assert (row["name"], row["family"], row["key"], row["n"], row["value"], row["count"], row["chance"]) == (
            m.name, m.family, m.key, m.n, m.value, m.count, m.chance)  # fmt: skip
    mpcr = next(row for row in rows if row["family"] == "mean_per_class_recall")
    assert (mpcr["lo"], mpcr["hi"], mpcr["probe"], mpcr["target"]) == (None, None, "zeroshot_classification", "cifar10")
    write_records(tmp_path / "res" / "std.jsonl", recs)
    main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")])
    with (tmp_path / "rep" / "results.csv").open(newline="") as f:
        acc1 = next(r for r in csv.DictReader(f) if r["name"] == "acc1")
    assert (acc1["probe"], acc1["family"], acc1["key"], float(acc1["value"])) == ("zeroshot_classification", "accuracy",
                                                                                  "top1", 0.634)  # fmt: skip


def test_bias_against_accuracy_follows_the_steps(tmp_path: Path) -> None:
    recs = series(str(tmp_path / "run"))
    fig = bias_accuracy_figure(recs)
    assert fig is not None and fig.name == ("bias_vs_accuracy",) and fig.xkey == "samples_seen"
    assert [p.title for p in fig.panels] == ["comco · tor", "comco · ior"]
    (trace,) = fig.panels[0].traces
    assert trace.label == "n4/closest_1" and trace.chance == 0.25 and fig.panels[0].xchance == 0.1
    assert trace.progress == [0, 640, 1280]  # step order, whatever the file order
    assert trace.xs == pytest.approx([0.1, 0.2, 0.3]) and trace.ys == pytest.approx([0.3, 0.35, 0.4])
    assert fig.panels[1].traces[0].label == "n4/closest_large"
    assert bias_accuracy_figure(series(str(tmp_path / "run"), classification=False)) is None
    assert bias_accuracy_figure([r for r in recs if r.probe == "zeroshot_classification"]) is None
    assert bias_accuracy_figure(recs, min_points=4) is None  # three steps with both


def test_report_draws_bias_against_accuracy_for_series_with_both(tmp_path: Path) -> None:
    res = tmp_path / "res"
    append_records(res / "with" / "probes.jsonl", series(str(res / "with")))
    append_records(res / "without" / "probes.jsonl", series(str(res / "without"), classification=False))
    main(["report", str(res), "--out", str(tmp_path / "rep")])
    plots = sorted(p.name for p in (tmp_path / "rep" / "plots").iterdir())
    assert [p for p in plots if "bias_vs_accuracy" in p] == ["series0-with__bias_vs_accuracy.png"]
    assert [p for p in plots if "summary" in p] == ["series0-with__summary.png"]
    assert "series1-without__index__comco__tor.png" in plots
    with Image.open(tmp_path / "rep" / "plots" / "series0-with__bias_vs_accuracy.png") as im:
        assert im.format == "PNG" and len(im.convert("RGB").getcolors(1 << 16) or [0] * 99) > 10


def test_plot_of_a_run_shows_zero_shot_next_to_the_bias(tmp_path: Path) -> None:
    run = tmp_path / "run"
    recs = series(str(run))
    for step in (0, 20, 10):
        recs.append(run_standard_record(str(run), step, 0.0, "zeroshot_retrieval", "heldout",
                                        recall={1: 0.05 + step / 100, 5: 0.2 + step / 100}))  # fmt: skip
    append_records(run / "probes.jsonl", recs)
    written = plot(str(run))
    names = [p.name for p in written]
    assert "summary.png" in names and "bias_vs_accuracy.png" in names and "curves__comco__tor__closest.png" in names
    fig = summary_figure(recs)
    assert [p.title for p in fig.panels] == ["comco · tor", "comco · ior", "zero-shot"]
    zero = fig.panels[-1]
    assert [ln.label for ln in zero.lines] == ["cifar10 acc1", "heldout image_retrieval_recall@1",
                                              "heldout text_retrieval_recall@1"]  # fmt: skip
    assert zero.lines[0].xs == [0, 640, 1280] and zero.lines[0].ys == pytest.approx([0.1, 0.2, 0.3])
    assert zero.lines[1].ys == pytest.approx([0.05, 0.15, 0.25]) and zero.percent
    assert zero.chance is None and zero.lines[0].chance == 0.1 and zero.lines[1].chance == 0.001  # each its own
    with Image.open(run / "plots" / "summary.png") as im:
        assert im.size[0] == 100 * (3.8 * 3 + 0.8)  # three panels side by side: tor, ior, zero-shot
    assert summary_figure(series(str(run), classification=False)) is None
