"""`clipprobe eval` on bad input, as a user hits it: one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipprobe.cli import main


def run_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run eval expecting a user error; return its one line."""
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", "clipprobe-tiny", "--progress", "false", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("clipprobe: error:") and err.count("\n") == 1, err
    return err


def test_out_under_a_file_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    err = run_eval(tmp_path, capsys, "--probes", "tor", "--out", str(tmp_path / "afile" / "sub"))
    assert "which is a file" in err
    err = run_eval(tmp_path, capsys, "--probes", "tor", "--out", str(tmp_path / "afile"))
    assert "is a file, not a folder" in err


@pytest.mark.parametrize("workers", ["0", "2"])
def test_truncated_scene_image_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str) -> None:
    from clipprobe.data.generate import ensure_probe_set

    ps = ensure_probe_set("comco", tmp_path / "cache", image_size=64, objects=[2], scenes_per_layout=2,
                          names=["dog", "cat", "car"], workers=1, progress=False)  # fmt: skip
    scene = sorted(ps.glob("scenes/*/*.png"))[0]
    scene.write_bytes(scene.read_bytes()[:100])  # cut short, as by a full disk or an interrupted copy
    out = tmp_path / "r"
    err = run_eval(tmp_path, capsys, "--probes", "ior", "--probe_set", str(ps), "--out", str(out),
                   "--num_workers", workers)  # fmt: skip
    assert str(scene) in err and "cannot be read" in err
    assert not out.exists()


RECIPE = str(Path(__file__).parents[1] / "configs" / "fit" / "tiny-synthetic.yaml")
EVAL = [
    "eval",
    "--model",
    "clipprobe-tiny",
    "--progress",
    "false",
    "--device",
    "cpu",
    "--out",
    "out",
    "--probes",
    "tor",
]
EXP = ["experiment", "emergence", "--out", "o", "--recipe", RECIPE]
SWEEP = [  # (argv, part of the one line)
    (["eval", "--model", "clipprobe-tiny", "--pretrained", "missing.pt", "--out", "out"], "does not exist"),
    (["eval", "--model", "clipprobe-tiny", "--pretrained", "empty.pt", "--out", "out"], "truncated or not a torch"),
    (["eval", "--model", "clipprobe-tiny", "--pretrained", "text.pt", "--out", "out"], "truncated or not a torch"),
    (
        ["eval", "--model", "clipprobe-tiny", "--pretrained", "list.pt", "--out", "out"],
        "holds a list, not a state dict",
    ),
    (["eval", "--model", "clipprobe-tiny", "--pretrained", "tensor.pt", "--out", "out"], "holds a Tensor, not a state"),
    (["eval", "--checkpoints", "nothing/*.pt", "--out", "out"], "no checkpoint files"),
    (["eval", "--models", "missing.txt", "--out", "out"], "models file missing.txt does not exist"),
    (["eval", "--models", "models3.txt", "--out", "out"], "two words at most"),
    (["eval", "--models", "models0.txt", "--out", "out"], "lists no models"),
    ([*EVAL, "--model_index", "-1"], "out of range"),
    ([*EVAL, "--model_index", "99"], "out of range"),
    ([*EVAL, "--probes", "nope"], "unknown probe 'nope'"),
    ([*EVAL, "--probes", "ior"], "needs a probe set"),
    ([*EVAL, "--probe_set", "missingdir"], "does not exist"),
    ([*EVAL, "--probe_set", "afile"], "is a file"),
    ([*EVAL, "--probe_set", "emptydir"], "is not a probe set"),
    ([*EVAL, "--probe_set", "comco", "--generate", "{bogus: 1}"], "unknown probe-set generation option"),
    ([*EVAL, "--probe_set", "comco", "--generate", "{image_size: -5}"], "--image-size"),
    ([*EVAL, "--vocab", "missing.txt"], "neither a known name"),
    ([*EVAL, "--vocab", "emptyvocab.txt"], "holds no names"),
    ([*EVAL, "--options", "{tor: {mode: x}}"], "tor.mode='x' is not one of"),
    ([*EVAL, "--options", "{tor: {num_captions: 0}}"], "tor.num_captions=0 is out of range"),
    ([*EVAL, "--options", "{tor: {num_captions: -5}}"], "tor.num_captions=-5 is out of range"),
    ([*EVAL, "--options", "{tor: {n: [1]}}"], "tor.n=[1] is out of range"),
    ([*EVAL, "--probes", "toc", "--options", "{toc: {n: 1}}"], "toc.n=1 is out of range"),
    ([*EVAL, "--probes", "size_claim", "--options", "{size_claim: {n: [1]}}"], "size_claim.n=[1] is out of range"),
    ([*EVAL, "--options", "{toc: {epochs: many}}"], "toc.epochs='many' is not a valid int"),
    ([*EVAL, "--device", "tpu"], "unknown --device"),
    ([*EVAL, "--device", "cuda"], "CUDA is not available"),
    ([*EVAL, "--batch_size", "0"], "--batch-size must be at least 1"),
    ([*EVAL, "--num_workers", "-2"], "--num-workers must be 0 or more"),
    ([*EVAL, "--probes", "retrieval"], "needs a held-out corpus"),
    ([*EVAL, "--probes", "retrieval", "--options", "{retrieval: {shards: /missing/x.tar}}"], "shards not found"),
    ([*EVAL, "--probes", "retrieval", "--options", "{retrieval: {shards: emptydir, batch: 1}}"], "batch=1"),
    (["eval", "--model", "clipprobe-tiny", "--out", "afile"], "is a file, not a folder"),
    (["report", "missingdir", "--out", "rep"], "no result files match"),
    (["report", "emptydir", "--out", "rep"], "no result files match"),
    (["report", "old", "--out", "rep"], "schema-1 results"),
    (["report", "garbage", "--out", "rep"], "holds a clipprobe result record"),
    (["report", "old", "--x", "bogus"], "--x must be"),
    (["report", "old", "--min_count", "-1"], "--min_count must be 0 or more"),
    (["plot", "missingdir"], "does not exist"),
    (["plot", "afile"], "is a file"),
    (["plot", "emptydir"], "holds neither probes.jsonl nor a metrics.csv"),
    (["plot", "run1"], "schema-1 results"),
    (["plot", "run2"], "nothing to plot"),
    ([*EXP, "--steps", "0"], "need steps >= every >= 1"),
    ([*EXP, "--every", "0"], "need steps >= every >= 1"),
    (["experiment", "emergence", "--out", "o", "--recipe", "missing.yaml"], "recipe missing.yaml not found"),
    ([*EXP, "--plot_n", "7"], "--plot-n 7 must be one of"),
    ([*EXP, "--heldout_samples", "5"], "heldout_samples >= retrieval_batch"),
    ([*EXP[:3], "afile", *EXP[4:]], "is not a folder"),
    ([*EXP, "--objects", "x-y"], "is not a count or range"),
    ([*EXP, "--num_samples", "0"], "num_samples >= batch_size >= 1"),
    ([*EXP, "--batch_size", "0"], "num_samples >= batch_size >= 1"),
    ([*EXP, "--p_order", "2"], "p_order must lie in [0, 1]"),
    ([*EXP, "--tor_n", "1", "--plot_n", "1"], "tor.n=[1] is out of range"),
    ([*EXP, "--tor_captions", "0"], "tor.num_captions=0 is out of range"),
    ([*EXP, "--threads", "-1"], "--threads must be at least 1"),
    ([*EXP, "--conditions", "largest_first"], "unknown condition"),
]


@pytest.fixture()
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Bad inputs of every kind, in a folder that must stay as it is."""
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    (tmp_path / "models3.txt").write_text("a b c\n")
    (tmp_path / "models0.txt").write_text("# nothing\n")
    (tmp_path / "emptyvocab.txt").write_text("\n")
    for d in ("emptydir", "old", "garbage", "run1", "run2"):
        (tmp_path / d).mkdir()
    (tmp_path / "old" / "r.json").write_text(json.dumps({"schema": 1, "metrics": {"n2/share_1": 1.0}}))
    (tmp_path / "garbage" / "r.jsonl").write_text("not json\n{\n")
    (tmp_path / "run1" / "probes.jsonl").write_text(json.dumps({"step": 0, "set": "s", "metrics": {}}) + "\n")
    (tmp_path / "run2" / "metrics.csv").write_text("garbage,,\n1,2\n")
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))
            if "cache" not in p.parts}  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), SWEEP, ids=[" ".join(a[:1] + a[-2:]) for a, _ in SWEEP])
def test_bad_input_sweep(sandbox: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """eval, report, plot and experiment: exit 2, one line naming the problem, nothing written or changed."""
    before = _snapshot(sandbox)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("clipprobe: error:") and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert _snapshot(sandbox) == before
