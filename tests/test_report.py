"""clipprobe report: records in, CSV rows per entry, markdown grouped by the entries' fields, study rows, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from report_records import position_entries, record, run_record, single, tag

from clipprobe.cli import main
from clipprobe.evaluation.figures import bar_figures
from clipprobe.evaluation.records import append_records, write_records
from clipprobe.evaluation.structure import order_records, sections
from clipprobe.evaluation.tables import csv_rows, fmt_value, to_markdown

IOR_ROLES = ["large", "small_1", "small_2", "small_3"]


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """eval files of two released models and a random init, a checkpoint series, a run folder, a stray JSON."""
    d = tmp_path / "results"
    vit = {"model": "ViT-B-32", "weights": tag("openai")}
    paper = {"mode": "paper", "template": "bare", "hits": "substring", "run_seed": 0}  # the study's protocol
    write_records(d / "ViT-B-32__openai__comco__tor.jsonl",
                  [record("tor", position_entries(0.55), options=paper, **vit)])  # fmt: skip
    write_records(d / "ViT-B-32__openai__comco__ior.jsonl",
                  [record("ior", position_entries(0.7, roles=IOR_ROLES), **vit)])  # fmt: skip
    write_records(d / "tiny__random__comco__tor.jsonl", [record("tor", position_entries(0.25))])
    for step, first in [(100, 0.6), (20, 0.3), (40, 0.45)]:  # written out of order; 100 sorts before 20 by name
        ckpt = {"kind": "file", "path": str(tmp_path / "ckpts" / f"step_{step}.pt"), "sha256": "0" * 64}
        write_records(d / f"tiny__step_{step}__comco__tor.jsonl",
                      [record("tor", position_entries(first), weights=ckpt, step=step, seen=64 * step)])  # fmt: skip
    run = str(tmp_path / "results" / "run")
    append_records(d / "run" / "probes.jsonl", [run_record(run, s, 0.4 + s / 1000) for s in (0, 10, 20)])
    (d / "notes.json").write_text(json.dumps({"not": "a result"}))
    (d / "probe_set" / "metadata.jsonl").parent.mkdir()
    (d / "probe_set" / "metadata.jsonl").write_text(json.dumps({"scene": 1}) + "\n")
    return d


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_rows_are_the_entries() -> None:
    rec = record("tor", position_entries(0.55), model="ViT-B-32", weights=tag("openai"), step=3, seen=192,
                 run={"dir": "/abs/run", "condition": "random", "seed": 1}, source="experiment")  # fmt: skip
    rows = csv_rows([rec])
    assert len(rows) == len(rec.metrics)
    for row, m in zip(rows, rec.metrics, strict=True):
        assert (row["name"], row["family"], row["n"], row["key"], row["variant"]) == (m.name, m.family, m.n, m.key,
                                                                                      m.variant)  # fmt: skip
        assert (row["value"], row["lo"], row["hi"], row["count"], row["chance"]) == (m.value, *m.interval, m.count,
                                                                                     m.chance)  # fmt: skip
        assert (row["model"], row["weights"], row["step"], row["samples_seen"], row["source"]) == (
            "ViT-B-32", "openai", 3, 192, "experiment")  # fmt: skip
        assert (row["run"], row["condition"], row["seed"], row["probe_version"]) == ("/abs/run", "random", 1, 1)


def test_formatting() -> None:
    assert fmt_value(single("a", "share", 0.5, 100, key="1")) == "50.0 [40.4, 59.6]"
    assert fmt_value(single("b", "bias_index", 0.5, 100)).startswith("0.500 [")
    nan = single("c", "share", 0.0, 1, key="1")
    assert fmt_value(type(nan)("c", "share", math.nan, 0, (0.0, 1.0))) == "–"


def test_markdown_groups_by_fields_not_names() -> None:
    odd = [single("weird/name", "closest", 0.8, 50, n=3, key="1", chance=1 / 3),
           single("n3/closest_2", "closest", 0.1, 50, n=3, key="2", chance=1 / 3),
           single("n3/closest_3", "closest", 0.1, 50, n=3, key="3", chance=1 / 3),
           single("n3/share_large", "share", 0.6, 5, n=3, key="1"),
           single("n2/bias_index", "hit_rate", 0.9, 50, n=3)]  # fmt: skip
    md = to_markdown([record("tor", odd)], min_count=30)
    section = md[md.index("## tor · comco") :]
    heads = [ln for ln in section.splitlines() if ln.startswith("### ")]
    assert heads == [
        "### n = 3 · `closest`: nearest among the query's own objects, over all queries (chance 1/n)",
        "### n = 3 · `hit_rate`: per-n summary",
        "### n = 3 · `share`: top-1 among hits, the study's tables (n = the hits it rests on)",
    ]
    lines = md.splitlines()
    closest = lines.index(heads[0])
    assert lines[closest + 2] == "| model | weights | step | samples seen | 1 | 2 | 3 | count |"
    assert lines[closest + 4].startswith("| clipprobe-tiny | random |  |  | 80.0 [") and lines[closest + 4].endswith(
        " 50 |"
    )
    share_row = lines[lines.index(heads[2]) + 4]
    assert "60.0 [" in share_row and "n=5 †" in share_row  # a share among 5 hits: counted and marked
    summary = lines[lines.index("## summary") : lines.index("## tor · comco")]
    assert "| model | weights | step | samples seen | comco · tor · weird/name |" in summary  # closest, key 1
    assert any(ln.startswith("| clipprobe-tiny | random |  |  | 80.0 [") for ln in summary)


def test_sections_order_series_by_step_and_robust_tables_first(results: Path) -> None:
    from clipprobe.evaluation.collect import find_result_files, load_records

    records = order_records(load_records(find_result_files(str(results))))
    tor = next(s for s in sections(records) if s.probe == "tor")
    steps = [r.step for r in tor.records if r.weights.get("kind") == "file"]
    assert steps == [20, 40, 100]
    families = [t.family for t, _ in tor.tables]
    assert families == ["closest", None, "share_all", "share"]  # robust first, shares among hits last
    cols = dict(tor.tables)
    assert [c.key for c in next(v for k, v in cols.items() if k.family == "closest")] == ["1", "2", "3", "4"]


def test_markdown_has_the_study_beneath_its_models(results: Path) -> None:
    from clipprobe.evaluation.collect import find_result_files, load_records

    md = to_markdown(order_records(load_records(find_result_files(str(results)))))
    assert "## tor · comco" in md and "## ior · comco" in md
    assert md.index("## tor · comco") < md.index("## ior · comco")
    lines = md.splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.startswith("| ViT-B-32 | openai |") and "55.0 [" in ln
               and "n=100" in ln)  # fmt: skip
    assert lines[row + 1].startswith("| ↳ *study*") and "50.31 | 20.74 | 14.45 | 6.79" in lines[row + 1]
    ior = next(i for i, ln in enumerate(lines) if ln.startswith("| ViT-B-32 | openai |") and "70.0 [" in ln
               and "n=100" in ln)  # fmt: skip
    assert "65.22 | 17.39 | 8.70 | 8.70" in lines[ior + 1]
    assert sum(ln.startswith("| ↳ *study*") for ln in lines) == 2  # only beneath the study's (shares among hits)
    tiny = [ln for ln in lines if ln.startswith("| clipprobe-tiny |")]
    assert any("| step_20 | 20 | 1,280 |" in ln for ln in tiny)
    assert tiny.index(next(ln for ln in tiny if "| step_20 |" in ln)) < tiny.index(
        next(ln for ln in tiny if "| step_100 |" in ln))  # fmt: skip


def test_min_count_drops_a_one_case_share_bar() -> None:
    thin = position_entries(1.0, n=2, total=100, hits=1)  # one hit: its share is 100% of 1 case
    figs = {f.name: f for f in bar_figures([record("tor", thin)], min_count=30)}
    assert ("bars", "comco", "tor", "", "n2", "share") not in figs  # nothing left to draw
    closest = figs[("bars", "comco", "tor", "", "n2", "closest")]
    assert closest.groups[0].values == [1.0, 0.0] and closest.chance == 0.5
    kept = {f.name: f for f in bar_figures([record("tor", thin)], min_count=1)}
    assert kept[("bars", "comco", "tor", "", "n2", "share")].groups[0].values == [1.0, 0.0]
    mixed = bar_figures([record("tor", thin), record("tor", position_entries(0.5, n=2), weights=tag("x"))], 30)
    share = next(f for f in mixed if f.name[-1] == "share")
    assert math.isnan(share.groups[0].values[0]) and share.groups[1].values == [0.5, 0.5]


def test_report_command_writes_csv_markdown_and_plots(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", str(results), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (
        "skipped 1 file(s) that are not result records" in captured.err
    )  # notes.json; a set's metadata.jsonl is known
    table = read_csv(out / "results.csv")
    assert len(table) == 9 * 14  # 9 records of 14 entries (n=4: hit rate, 3 x 4 positions, bias index)
    row = next(r for r in table if r["weights"] == "step_100" and r["family"] == "share" and r["key"] == "1")
    assert (row["step"], row["samples_seen"], row["n"], row["name"]) == ("100", "6400", "4", "n4/share_1")
    assert float(row["value"]) == pytest.approx(0.6) and float(row["lo"]) < 0.6 < float(row["hi"])
    run_rows = [r for r in table if r["source"] == "callback"]
    assert len(run_rows) == 3 * 14 and run_rows[0]["run"].endswith("run") and run_rows[0]["weights"] == "run"
    assert (out / "results.md").read_text().startswith("# clipprobe results")
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "bars__comco__tor__n4__share.png" in plots and "bars__comco__ior__n4__share.png" in plots
    series = [p for p in plots if p.startswith("series")]
    assert "series0-ckpts__curves__comco__tor__closest.png" in series
    assert "series1-run__index__comco__tor.png" in series
    for p in plots:
        with Image.open(out / "plots" / p) as im:
            im.verify()
    assert "report: 9 results from 8 files" in captured.out


def test_report_takes_several_sources_and_globs(results: Path, tmp_path: Path, capsys) -> None:
    more = tmp_path / "more"
    write_records(more / "x.jsonl", [record("tor", position_entries(0.3), weights=tag("extra"))])
    main(["report", f"[{results / 'run'},{more}]", "--out", str(tmp_path / "r1"), "--plots", "false"])
    assert "4 results from 2 files" in capsys.readouterr().out
    assert not (tmp_path / "r1" / "plots").exists()
    main(["report", str(results / "*tor.jsonl"), "--out", str(tmp_path / "r2"), "--plots", "false"])
    assert "5 results from 5 files" in capsys.readouterr().out


def test_report_user_errors_are_one_line(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    main(["report", str(results), "--out", str(out), "--plots", "false"])
    old = tmp_path / "old"
    old.mkdir()
    (old / "a.json").write_text(json.dumps({"model": "m", "probe": "tor", "metrics": {"n2/share_1": 0.5}}))
    (old / "b.jsonl").write_text(json.dumps({"schema": 1, "probe": "tor", "set": "comco", "metrics": {}}) + "\n")
    capsys.readouterr()
    for argv in (["report", str(results), "--out", str(out)],  # not empty
                 ["report", str(results), "--out", str(results)],  # the results themselves
                 ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")],
                 ["report", str(old / "a.json"), "--out", str(tmp_path / "r3")],  # schema-1 JSON
                 ["report", str(old / "b.jsonl"), "--out", str(tmp_path / "r4")],  # schema-1 JSON Lines
                 ["report", str(results), "--out", str(tmp_path / "r5"), "--x", "epoch"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("clipprobe: error:") and err.count("\n") == 1, err
        if "old" in argv[1]:
            assert "schema-1" in err
    assert not (tmp_path / "r3").exists() and not (tmp_path / "r4").exists()
    main(["report", str(results), "--out", str(out), "--overwrite"])
    assert (out / "plots").is_dir()


def test_report_of_an_evaluation_with_a_planted_encoder(tmp_path: Path, capsys) -> None:
    from planted_encoders import PlantedTextEncoder

    from clipprobe.evaluation.runner import ModelInfo, Target, run_evaluation

    vocab = [f"obj{i:02d}" for i in range(12)]
    target = Target("vocab-test", None, vocab, "test")
    recs = list(run_evaluation(PlantedTextEncoder(vocab, "first"), [(target, "tor")],
                               {"tor": {"num_captions": 40, "n": [2, 3]}}, ModelInfo("planted", {"kind": "random"}),
                               progress=False))  # fmt: skip
    write_records(tmp_path / "res" / "planted.jsonl", recs)
    main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "## tor · vocab-test" in md and "### n = 2 · `closest`" in md and "### n = 3 · `share`" in md
    assert "| planted | random |  |  | 100.0 [" in md  # the first object is always nearest
    assert len(read_csv(tmp_path / "rep" / "results.csv")) == len(recs[0].metrics)
