"""Atomic writes and staged folders leave nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json, atomic_write_text, check_output_dir, staged_dir


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "a" / "f.json"
    atomic_write_json(p, {"b": 1, "a": 2})
    atomic_write_json(p, {"b": 1, "a": 2})
    assert p.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert [q.name for q in p.parent.iterdir()] == ["f.json"]


def test_staged_dir_failure_keeps_old_contents(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    atomic_write_text(out / "old.txt", "keep me")
    with pytest.raises(RuntimeError), staged_dir(out) as stage:
        (stage / "new.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    assert (out / "old.txt").read_text() == "keep me"


def test_staged_dir_success_replaces(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_dir(out) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_check_output_dir(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "missing", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        check_output_dir(tmp_path / "full", overwrite=False)
    check_output_dir(tmp_path / "full", overwrite=True)
    with pytest.raises(UserError, match="not a folder"):
        check_output_dir(tmp_path / "full" / "x", overwrite=True)
