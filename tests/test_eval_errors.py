"""`clipprobe eval` on bad input, as a user hits it: one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

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
