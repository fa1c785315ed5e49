"""End to end: a tiny random model and a small generated ComCO set, through `clipprobe eval` to record
files (JSON Lines, schema 2) and through `clipprobe report` to CSV, markdown and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipprobe.cli import main

PROBES = "tor,ior,itm"
NAMES = ["apple", "pizza", "dog", "cat", "car", "cup"]


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory):
    from clipprobe.data.generate import ensure_probe_set

    cache = tmp_path_factory.mktemp("cache")
    return ensure_probe_set(
        "comco", cache_dir=cache, image_size=64, objects=[2, 3], scenes_per_layout=6, names=NAMES, workers=1
    )


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three training exports of clipprobe-tiny with different weights (steps 10, 200, 30)."""
    from clipprobe.models.load import load_model

    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(1)
    model = load_model("clipprobe-tiny").model
    for step in (10, 200, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        meta = {"arch": "clipprobe-tiny", "step": step, "samples_seen": step * 128, "epoch": 0}
        torch.save({"state_dict": model.state_dict(), "clipprobe": meta}, d / f"export_step{step}.pt")
    return d


SMALL_TOR = '{"tor": {"n": [2, 3], "num_captions": 60}}'


def run_eval(*argv: str) -> None:
    assert main(["eval", "--device", "cpu", "--batch-size", "16", "--progress", "false", *argv]) == 0


def records(folder) -> dict[str, dict]:
    """File name -> its one record (JSON)."""
    out = {}
    for f in sorted(folder.glob("*.jsonl")):
        lines = f.read_text().splitlines()
        assert len(lines) == 1, f
        out[f.name] = json.loads(lines[0])
    return out


def by_name(rec: dict) -> dict[str, dict]:
    return {m["name"]: m for m in rec["metrics"]}


def test_eval_writes_one_record_per_job_then_report(probe_set, tmp_path, capsys):
    out = tmp_path / "results"
    run_eval("--model", "clipprobe-tiny", "--probes", PROBES, "--probe-set", str(probe_set), "--out", str(out))
    recs = records(out)
    label = json.loads((probe_set / "manifest.json").read_text())["name"]
    assert sorted(n.rsplit("__", 1)[0] for n in recs) == sorted(
        f"clipprobe-tiny__random__{label}__{p}" for p in PROBES.split(",")
    )
    for name, rec in recs.items():
        assert rec["schema"] == 2 and rec["source"] == "eval" and rec["probe"] in name
        assert rec["model"] == "clipprobe-tiny" and rec["weights"] == {"kind": "random", "seed": 0}
        assert rec["probe_set"]["kind"] == "comco" and rec["probe_set"]["image_size"] == 64
        assert len(rec["probe_set"]["manifest_sha256"]) == 64
        assert rec["clipprobe_version"] and rec["timestamp"] and rec["config"]["eval"]["device"] == "cpu"
        assert rec["metrics"] and all(
            {"family", "n", "key", "value", "count", "interval"} <= set(m) for m in rec["metrics"]
        )
        for m in rec["metrics"]:
            lo, hi = m["interval"]
            assert m["value"] is None or lo - 1e-9 <= m["value"] <= hi + 1e-9, m["name"]
    tor = by_name(next(r for r in recs.values() if r["probe"] == "tor"))
    assert {"n2/share_1", "n3/closest_3", "n3/hit_rate"} <= set(tor)
    assert (tor["n3/closest_3"]["family"], tor["n3/closest_3"]["n"], tor["n3/closest_3"]["key"]) == ("closest", 3, "3")
    assert sum(tor[f"n3/closest_{k}"]["value"] for k in (1, 2, 3)) == pytest.approx(1.0)
    ior = by_name(next(r for r in recs.values() if r["probe"] == "ior"))
    assert {"n2/large", "n3/small_2"} <= set(ior) and ior["n2/large"]["key"] == "large"
    # Every unique image (6 references + 42 scenes) is encoded once, whatever the probes ask.
    assert max(r["timing"]["encoder"]["images_encoded"] for r in recs.values()) <= 6 + 42

    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}
    run_eval("--model", "clipprobe-tiny", "--probes", PROBES, "--probe-set", str(probe_set), "--out", str(out),
             "--skip-existing")  # fmt: skip
    assert capsys.readouterr().out.count("(same identity exists)") == 3
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*.jsonl")}

    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    assert "## tor · " in (report / "results.md").read_text()
    assert len((report / "results.csv").read_text().splitlines()) == 1 + sum(len(r["metrics"]) for r in recs.values())
    assert any(p.suffix == ".png" for p in (report / "plots").iterdir())


def test_skip_existing_reruns_when_the_identity_changes(probe_set, tmp_path, capsys):
    """Another option, another seed or other weights is another identity: another file, never a skip."""
    out = tmp_path / "r"
    base = ["--model", "clipprobe-tiny", "--probes", "tor", "--vocab", "simco", "--out", str(out), "--skip-existing"]
    run_eval(*base, "--options", SMALL_TOR)
    run_eval(*base, "--options", '{"tor": {"n": [2, 3], "num_captions": 60, "mode": "paper"}}')
    run_eval(*base, "--options", SMALL_TOR, "--seed", "5")
    assert "same identity" not in capsys.readouterr().out
    assert len(records(out)) == 3
    run_eval(*base, "--options", SMALL_TOR)
    assert capsys.readouterr().out.count("(same identity exists)") == 1
    cut = sorted(out.glob("*.jsonl"))[0]
    cut.write_text(cut.read_text()[:40])  # a truncated record does not count as done
    run_eval(*base, "--options", SMALL_TOR, "--seed", "5")
    run_eval(*base, "--options", SMALL_TOR)
    run_eval(*base, "--options", '{"tor": {"n": [2, 3], "num_captions": 60, "mode": "paper"}}')
    assert capsys.readouterr().out.count("(same identity exists)") == 2
    assert len(records(out)) == 3


def test_same_seed_same_metrics(probe_set, tmp_path):
    for run in ("a", "b"):
        run_eval("--model", "clipprobe-tiny", "--probes", "tor,ior", "--probe-set", str(probe_set),
                 "--out", str(tmp_path / run), "--seed", "3")  # fmt: skip
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["metrics"] == b[name]["metrics"]


def test_checkpoint_series_and_models_file(series, tmp_path):
    out = tmp_path / "results"
    run_eval("--checkpoints", str(series / "*.pt"), "--probes", "tor", "--vocab", "simco", "--out", str(out),
             "--options", SMALL_TOR)  # fmt: skip
    recs = list(records(out).values())
    assert sorted((r["step"], r["samples_seen"]) for r in recs) == [(10, 1280), (30, 3840), (200, 25600)]
    assert all(r["target"] == "vocab-simco" and r["vocab"] == "simco" for r in recs)
    assert {Path(r["weights"]["path"]).name for r in recs} == {
        "export_step10.pt",
        "export_step30.pt",
        "export_step200.pt",
    }
    assert all(r["weights"]["kind"] == "file" and len(r["weights"]["sha256"]) == 64 for r in recs)
    assert all(r["weights"]["path"].startswith(str(series)) for r in recs)
    assert len({json.dumps(r["metrics"], sort_keys=True) for r in recs}) == 3  # different weights, different results

    models = tmp_path / "models.txt"
    models.write_text(
        f"# name pretrained\nclipprobe-tiny\n\nclipprobe-tiny {series / 'export_step30.pt'}  # one file\n"
    )
    run_eval("--models", str(models), "--probes", "tor", "--vocab", "simco", "--out", str(tmp_path / "m"),
             "--options", SMALL_TOR)  # fmt: skip
    assert sorted(p.rsplit("__", 1)[0] for p in records(tmp_path / "m")) == [
        "clipprobe-tiny__export_step30__vocab-simco__tor",
        "clipprobe-tiny__random__vocab-simco__tor",
    ]
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    assert any(p.suffix == ".png" for p in (report / "plots").iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "ViT-Q-99"], "unknown model architecture 'ViT-Q-99'"),
        (["--model", "clipprobe-tiny", "--pretrained", "laion9b"], "unknown pretrained tag 'laion9b'"),
        (["--model", "clipprobe-tiny", "--pretrained", "missing/w.pt"], "does not exist"),
        (["--checkpoints", "missing/*.pt"], "no checkpoint files"),
        (["--model", "clipprobe-tiny", "--probes", "tor,nope"], "unknown probe 'nope'"),
        (["--model", "clipprobe-tiny", "--probes", "ior"], "needs a probe set"),
        (["--model", "clipprobe-tiny", "--probes", "tor", "--options", '{"tor": {"mode": "exact"}}'], "tor.mode"),
        (["--model", "clipprobe-tiny", "--probes", "tor", "--options", '{"nope": {}}'], "unknown probe 'nope'"),
        (["--model", "clipprobe-tiny", "--probes", "tor", "--device", "tpu9"], "unknown --device"),
        (["--probes", "tor"], "no model given"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("clipprobe: error:") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "r").exists()


def test_shipped_eval_configs_name_real_options(monkeypatch):
    """Every configs/eval/*.yaml parses as `clipprobe eval` options with valid probe options
    (paper.yaml is not run: it downloads the study's models)."""
    from pathlib import Path

    import yaml

    import clipprobe.evaluation.evaluate as ev
    from clipprobe.evaluation.jobs import ModelSpec
    from clipprobe.probes.suite import validate_probes

    seen = {}
    monkeypatch.setattr(ev, "_run", lambda plan, config, skip: seen.update(config=config, jobs=plan.jobs) or [])
    monkeypatch.setattr(ev, "load_probe_sets", lambda entries, generate: [])
    monkeypatch.setattr(ev, "model_specs", lambda *a, **k: [ModelSpec("clipprobe-tiny")])
    configs = sorted((Path(__file__).parents[1] / "configs" / "eval").glob("*.yaml"))
    assert {p.name for p in configs} >= {"paper.yaml", "tiny.yaml"}
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        validate_probes(cfg["probes"], cfg.get("options"), has_probe_set=True)
        assert main(["eval", "--config", str(path), "--probes", "tor"]) == 0  # jsonargparse accepts every key
        assert seen["config"]["out"] == cfg["out"]


@pytest.mark.slow
def test_tiny_config_runs(tmp_path, monkeypatch):
    """configs/eval/tiny.yaml end to end (generates its set into a temporary cache)."""
    from pathlib import Path

    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache"))
    config = Path(__file__).parents[1] / "configs" / "eval" / "tiny.yaml"
    assert main(["eval", "--config", str(config), "--out", str(tmp_path / "r"), "--progress", "false"]) == 0
    assert sorted(p.name.split("__")[-2] for p in (tmp_path / "r").glob("*.jsonl")) == ["ior", "itm", "tor"]
