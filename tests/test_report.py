"""clipprobe report: metric keys, CSV rows, markdown tables with the study's references, PNG plots."""

from __future__ import annotations

import csv
import json

import pytest

from clipprobe.cli import main
from clipprobe.evaluation.report import MetricKey, collect, fmt_value, to_markdown


def result(model, weights, probe, metrics, *, pretrained=None, checkpoint=None, step=None, seen=None, kind="comco"):
    counts = {k: 100 for k in metrics}
    return {
        "model": model, "weights": weights, "pretrained": pretrained, "checkpoint": checkpoint, "step": step,
        "samples_seen": seen, "probe": probe, "target": kind, "vocab": None,
        "probe_set": {"kind": kind, "name": kind}, "metrics": metrics, "counts": counts,
        "intervals": {k: [max(0.0, v - 0.05), min(1.0, v + 0.05)] for k, v in metrics.items()},
        "config": {}, "notes": [],
    }  # fmt: skip


def tor(first: float, n: int = 4) -> dict[str, float]:
    rest = (1 - first) / (n - 1)
    m = {f"n{n}/share_{k}": (first if k == 1 else rest) for k in range(1, n + 1)}
    m.update({f"n{n}/closest_{k}": (first if k == 1 else rest) for k in range(1, n + 1)})
    m[f"n{n}/hit_rate"] = 0.5
    m[f"n{n}/bias_index"] = (first - 1 / n) / (1 - 1 / n)
    return m


@pytest.fixture()
def results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    files = {
        "ViT-B-32__openai__comco__tor.json": result("ViT-B-32", "openai", "tor", tor(0.55), pretrained="openai"),
        "ViT-B-32__openai__comco__ior.json": result(
            "ViT-B-32",
            "openai",
            "ior",
            {"n4/large": 0.7, "n4/small_1": 0.1, "n4/small_2": 0.1, "n4/small_3": 0.1},
            pretrained="openai",
        ),
        "tiny__random__comco__tor.json": result("clipprobe-tiny", "random", "tor", tor(0.25)),
    }
    for step, first in [(100, 0.3), (200, 0.45), (400, 0.6)]:
        ckpt = str(tmp_path / "run" / f"step_{step}.pt")
        files[f"tiny__step_{step}__comco__tor.json"] = result(
            "clipprobe-tiny", f"step_{step}", "tor", tor(first), checkpoint=ckpt, step=step, seen=step * 64
        )
    for name, data in files.items():
        (d / name).write_text(json.dumps(data))
    (d / "notes.json").write_text(json.dumps({"not": "a result"}))
    return d


@pytest.mark.parametrize(
    "key, n, family, column",
    [
        ("n4/share_1", 4, "share_{k}", "1"),
        ("n4/share_2_all", 4, "share_{k}_all", "2"),
        ("n3/closest_large", 3, "closest_{k}", "large"),
        ("n3/small_2", 3, "{k}", "small_2"),
        ("n3/acc_small", 3, "acc_{k}", "small"),
        ("n2/scenario1", 2, "scenario1", None),
        ("n4/hit_rate", 4, "hit_rate", None),
        ("split/n4/share_1", 4, "share_{k}", "1"),
    ],
)
def test_metric_keys(key, n, family, column):
    mk = MetricKey.parse(key)
    assert (mk.n, mk.family, mk.column) == (n, family, column)
    assert mk.variant == ("split" if key.startswith("split") else "")


def test_formatting():
    assert fmt_value("share_{k}", 0.6396, [0.58, 0.69]) == "64.0 [58.0, 69.0]"
    assert fmt_value("bias_index", 0.5, [0.4, 0.6]) == "0.500"
    assert fmt_value("share_{k}", float("nan"), [0.0, 1.0]) == "–"
    assert fmt_value("share_{k}", None, None) == "–"


def test_markdown_has_rows_per_model_and_the_study_beside_its_models(results):
    md = to_markdown(collect(str(results)))
    assert "## tor · comco" in md and "## ior · comco" in md
    lines = md.splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.startswith("| ViT-B-32 | openai |") and "55.0 [50.0, 60.0]" in ln)
    assert lines[row + 1].startswith("| ↳ *study*") and "50.31 | 20.74 | 14.45 | 6.79" in lines[row + 1]
    ior_row = next(i for i, ln in enumerate(lines) if ln.startswith("| ViT-B-32 | openai |") and "70.0" in ln)
    assert "65.22 | 17.39 | 8.70 | 8.70" in lines[ior_row + 1]
    tiny_rows = [ln for ln in lines if ln.startswith("| clipprobe-tiny |")]
    assert not any("study" in ln for ln in tiny_rows)
    assert any("| step_200 | 200 | 12,800 |" in ln for ln in tiny_rows)


def test_report_command_writes_csv_markdown_and_plots(results, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out)]) == 0
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    # 5 tor files x 10 metrics + 1 ior file x 4 metrics
    assert len(table) == 5 * 10 + 4
    row = next(r for r in table if r["weights"] == "step_400" and r["metric"] == "n4/share_1")
    assert (row["step"], row["samples_seen"], row["n"], row["column"]) == ("400", "25600", "4", "1")
    assert float(row["value"]) == pytest.approx(0.6) and float(row["lo"]) == pytest.approx(0.55)
    assert (out / "results.md").read_text().startswith("# clipprobe results")
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "comco__tor__n4__share_k.png" in plots and "comco__ior__n4__role.png" in plots
    series = [p for p in plots if p.startswith("series0__")]
    assert "series0__comco__tor__n4__closest_k.png" in series
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert "6 result files" in capsys.readouterr().out


def test_report_refuses_to_overwrite_or_to_write_into_results(results, tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", str(results / "*tor.json"), "--out", str(out), "--plots", "false"])
    assert not (out / "plots").exists() and "5 result files" in capsys.readouterr().out
    for argv in (["report", str(results), "--out", str(out)],
                 ["report", str(results), "--out", str(results)],
                 ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("clipprobe: error:") and err.count("\n") == 1
    main(["report", str(results), "--out", str(out), "--overwrite"])
    assert (out / "plots").is_dir()
