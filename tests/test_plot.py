"""``clipprobe plot``: curves from a run's probes.jsonl records and loss from metrics.csv; the CSV logger keeps
its file on resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from report_records import position_entries, record, run_record

from clipprobe.cli import main
from clipprobe.evaluation.figures import curve_figures, index_figures
from clipprobe.evaluation.records import append_records
from clipprobe.evaluation.runplots import read_metrics

ROLES = ["large", "small_1", "small_2", "small_3"]


def _run_folder(root: Path) -> Path:
    run = root / "run"
    for step in (0, 100, 20):  # appended out of order (a resumed run re-evaluates): plotted by step
        p = 0.4 + step / 1000
        tor = run_record(str(run), step, p)
        ior = run_record(str(run), step, p, "ior")
        ior.metrics += position_entries(0.25, 4, 100, variant="equal", roles=["slot_1", "slot_2", "slot_3", "slot_4"])
        append_records(run / "probes.jsonl", [tor, ior])
    rows = [{"step": s, "train/loss": 4 - s / 100, "train/logit_scale": 2.7 + s / 1000} for s in range(0, 101, 10)]
    rows.append({"step": 50, "train/loss": 1.0})  # a replayed step after a resume: the later value wins
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "train/loss", "train/logit_scale", "val/loss"])
        writer.writeheader()
        writer.writerows(rows)
    return run


def _drawn(path: Path) -> bool:
    with Image.open(path) as im:
        return im.size[0] > 100 and len(im.convert("RGB").getcolors(1 << 16) or [0] * 99) > 10


EXPECTED = [
    "curves__comco__ior__closest.png", "curves__comco__ior__equal__closest.png", "curves__comco__ior__equal__share.png",
    "curves__comco__ior__equal__share_all.png", "curves__comco__ior__share.png", "curves__comco__ior__share_all.png",
    "curves__comco__tor__closest.png", "curves__comco__tor__share.png", "curves__comco__tor__share_all.png",
    "index__comco__ior.png", "index__comco__tor.png", "loss.png",
]  # fmt: skip


def test_plot_writes_curves_and_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path)
    main(["plot", str(run)])
    names = sorted(p.name for p in (run / "plots").iterdir())
    assert names == EXPECTED
    assert all(_drawn(run / "plots" / n) for n in names)
    assert f"wrote {len(EXPECTED)} plots to {run / 'plots'}" in capsys.readouterr().out
    main(["plot", str(run), "--out", str(tmp_path / "by_step"), "--x", "step", "--min_count", "0"])
    assert len(list((tmp_path / "by_step").glob("*.png"))) == len(EXPECTED)


def test_curves_are_ordered_by_step_and_leave_out_thin_shares(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    recs = [run_record(run, 100, 0.6), run_record(run, 20, 0.3, hits=2), run_record(run, 40, 0.45)]
    figs = {f.name: f for f in curve_figures(recs, "samples_seen", min_count=30)}
    closest = figs[("curves", "comco", "tor", "", "", "closest")]
    (panel,) = closest.panels
    assert panel.title == "n=4" and panel.chance == 0.25 and panel.percent
    assert [ln.label for ln in panel.lines] == ["1", "2", "3", "4"]
    assert panel.lines[0].xs == [20 * 64, 40 * 64, 100 * 64]
    assert panel.lines[0].ys == pytest.approx([0.3, 0.45, 0.6])
    share = figs[("curves", "comco", "tor", "", "", "share")].panels[0].lines[0]
    assert math.isnan(share.ys[0]) and share.ys[1:] == pytest.approx([0.45, 0.6])  # step 20: 2 hits, left out
    by_step = curve_figures(recs, "step", min_count=0)[0].panels[0]
    assert by_step.xlabel == "step" and by_step.lines[0].xs == [20, 40, 100]
    (index,) = index_figures(recs)
    assert [p.title for p in index.panels] == ["bias_index", "hit_rate"] and index.panels[0].chance == 0.0
    assert index.panels[1].lines[0].ys == pytest.approx([2 / 100, 1.0, 1.0])


def test_plot_reads_what_it_needs(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    loss = read_metrics(run / "metrics.csv")["train/loss"]
    assert loss[5] == (50, 1.0) and [s for s, _ in loss] == list(range(0, 101, 10))
    (run / "metrics.csv").unlink()  # probes alone still plot
    main(["plot", str(run)])
    assert not (run / "plots" / "loss.png").exists() and (run / "plots" / "curves__comco__tor__share.png").is_file()
    (run / "probes.jsonl").unlink()
    (run / "lightning" / "version_0").mkdir(parents=True)
    (run / "lightning" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,3.0\n5,2.0\n")
    main(["plot", str(run), "--out", str(tmp_path / "loss_only")])  # a metrics.csv below the run, no probes
    assert sorted(p.name for p in (tmp_path / "loss_only").iterdir()) == ["loss.png"]


def test_plot_of_records_without_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    append_records(run / "probes.jsonl", [record("tor", position_entries(0.5), step=s, seen=None) for s in (5, 1)])
    main(["plot", str(run), "--x", "samples_seen"])  # no samples seen: the step is the axis
    assert sorted(p.name for p in (run / "plots").iterdir())[0] == "curves__comco__tor__closest.png"


@pytest.mark.parametrize("case", ["missing", "empty", "schema1", "bad_x"])
def test_plot_user_errors(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    argv = ["plot", str(run)]
    if case != "missing":
        run.mkdir()
    if case == "schema1":
        old = {"step": 0, "set": "comco", "probe": "tor", "metrics": {"n2/share_1": 0.5}, "counts": {}}
        (run / "probes.jsonl").write_text(json.dumps(old) + "\n")
    if case == "bad_x":
        append_records(run / "probes.jsonl", [record(step=1)])
        argv += ["--x", "epoch"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("clipprobe: error:") and err.count("\n") == 1
    if case == "schema1":
        assert "schema-1" in err and not (run / "plots").exists()


def test_csv_logger_appends_on_resume(tmp_path: Path) -> None:
    from clipprobe.training.loggers import CSVLogger

    first = CSVLogger(str(tmp_path))
    first.log_metrics({"train/loss": 3.0}, step=0)
    first.save()
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("1,2.")  # a row cut short by a kill
    second = CSVLogger(str(tmp_path))  # a resumed run in the same folder
    second.log_metrics({"train/loss": 2.0, "val/loss": 2.5}, step=4)
    second.save()
    metrics = read_metrics(tmp_path / "metrics.csv")
    assert metrics["train/loss"] == [(0, 3.0), (4, 2.0)] and metrics["val/loss"] == [(4, 2.5)]
