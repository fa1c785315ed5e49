"""``clipprobe plot``: PNGs from probes.jsonl and metrics.csv; the CSV logger keeps its file on resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from clipprobe.cli import main
from clipprobe.evaluation.plot import read_metrics, share_rows


def _record(step: int, probe: str, shares: dict[str, float]) -> dict:
    metrics, counts, intervals = {}, {}, {}
    for key, value in shares.items():
        metrics[key], counts[key], intervals[key] = value, 100, [max(0.0, value - 0.1), min(1.0, value + 0.1)]
    metrics["n2/hit_rate"], metrics["n2/bias_index"] = 0.5, 0.2 * step / 10
    intervals["n2/bias_index"] = [0.0, 0.4]
    return {"step": step, "samples_seen": 64 * step, "set": "comco", "probe": probe, "metrics": metrics,
            "counts": counts, "intervals": intervals, "seconds": 1.0}  # fmt: skip


def _run_folder(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    records = []
    for step in (0, 10, 20):
        p = 0.5 + step / 100
        records.append(_record(step, "tor", {"n2/share_1": p, "n2/share_2": 1 - p, "n2/share_1_all": p / 2,
                                             "n2/share_2_all": (1 - p) / 2, "n3/share_1": 0.4, "n3/share_2": 0.3,
                                             "n3/share_3": 0.3}))  # fmt: skip
        records.append(_record(step, "ior", {"n2/large": p, "n2/small_1": 1 - p, "equal/n2/slot_1": 0.5,
                                             "equal/n2/slot_2": 0.5}))  # fmt: skip
    (run / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = [{"step": s, "train/loss": 4 - s / 10, "train/logit_scale": 2.7 + s / 100} for s in range(0, 21, 2)]
    rows.append({"step": 10, "train/loss": 1.0})  # a replayed step after a resume: the later value wins
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "train/loss", "train/logit_scale", "val/loss"])
        writer.writeheader()
        writer.writerows(rows)
    return run


def _drawn(path: Path) -> bool:
    with Image.open(path) as im:
        return im.size[0] > 100 and len(im.convert("RGB").getcolors(1 << 16) or [0] * 99) > 10


def test_plot_writes_bias_curves_and_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_folder(tmp_path)
    main(["plot", str(run)])
    names = sorted(p.name for p in (run / "plots").iterdir())
    assert names == [
        "bias__comco__ior__equal__role.png", "bias__comco__ior__role.png", "bias__comco__tor__share_k.png",
        "bias__comco__tor__share_k_all.png", "index__comco__ior.png", "index__comco__tor.png", "loss.png",
    ]  # fmt: skip
    assert all(_drawn(run / "plots" / n) for n in names)
    assert f"wrote 7 plots to {run / 'plots'}" in capsys.readouterr().out
    main(["plot", str(run), "--out", str(tmp_path / "by_step"), "--x", "step"])
    assert len(list((tmp_path / "by_step").glob("*.png"))) == 7


def test_plot_reads_what_it_needs(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    loss = read_metrics(run / "metrics.csv")["train/loss"]
    assert loss[5] == (10, 1.0) and [s for s, _ in loss] == list(range(0, 21, 2))
    rows = share_rows(json.loads((run / "probes.jsonl").read_text().splitlines()[1]))
    assert [(r["variant"], r["n"], r["position"]) for r in rows] == [
        ("", 2, "large"), ("", 2, "small_1"), ("equal", 2, "slot_1"), ("equal", 2, "slot_2")]  # fmt: skip
    assert rows[0]["share"] == 0.5 and (rows[0]["lo"], rows[0]["hi"]) == (0.4, 0.6) and rows[0]["count"] == 100
    (run / "metrics.csv").unlink()  # probes alone still plot
    main(["plot", str(run)])
    assert not (run / "plots" / "loss.png").exists() and (run / "plots" / "bias__comco__tor__share_k.png").is_file()


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_plot_user_errors(tmp_path: Path, make: bool, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    if make:
        run.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["plot", str(run)])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("clipprobe: error:")


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
