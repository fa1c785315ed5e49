"""Never silently wrong: bad input gets one line ``clipprobe: error: ...``, exit status 2, and nothing written.

The sweep runs each command line of :data:`ROWS` in a sandbox holding good inputs (a tiny probe set, a
tiny corpus), damaged copies of them, bad side files and existing outputs, and checks that the sandbox
is byte-for-byte (and mode-for-mode) the same afterwards: no output created, none changed, no temporary
left. Further tests: files honour the umask, stale temporaries of killed runs are cleaned (and live
ones kept), folders without write permission are refused up front, bad ``--generate`` mappings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clipprobe import cli
from clipprobe.data.generate import ensure_probe_set, resolve_config
from clipprobe.data.limits import choose_workers, memory_limit
from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json, check_output_dir, host_name, staged_dir

REPO = Path(__file__).resolve().parents[1]
SET_ARGS = ["--objects", "2", "--scenes-per-layout", "2", "--image-size", "64", "--names", "dog,cat", "--workers", "1",
            "--progress", "false"]  # fmt: skip
CORPUS_ARGS = ["--num-samples", "4", "--shard-size", "2", "--image-size", "16", "--workers", "1", "--progress", "false"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``clipprobe argv`` in process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` (hidden ones too): its mode and a hash of its bytes."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
            snap[str(path.relative_to(root))] = (st.st_mode, digest)
    return snap


def _copy_set(src: Path, dst: Path, damage: Callable[[Path], None]) -> None:
    shutil.copytree(src, dst)
    damage(dst)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox: good inputs, damaged copies, bad side files and existing outputs."""
    root = tmp_path_factory.mktemp("box")
    assert _run(["data", "comco", "--out", str(root / "set"), *SET_ARGS])[0] == 0
    assert _run(["data", "corpus", "--out", str(root / "corpus"), *CORPUS_ARGS])[0] == 0
    scene = "scenes/2obj_equal/00000.png"
    _copy_set(root / "set", root / "damaged_png", lambda d: _truncate(d / scene))
    _copy_set(root / "set", root / "damaged_ref", lambda d: _truncate(d / "references" / "dog.png"))
    _copy_set(root / "set", root / "not_png", lambda d: (d / scene).write_bytes(b"this is no image"))
    _copy_set(root / "set", root / "no_scene", lambda d: (d / scene).unlink())
    first = (root / "set" / "metadata.jsonl").read_text().splitlines()[0]
    _copy_set(root / "set", root / "dup_meta", lambda d: (d / "metadata.jsonl").open("a").write(first + "\n"))
    _copy_set(root / "set", root / "bad_row", lambda d: (d / "metadata.jsonl").open("a").write('{"n": 2}\n'))
    _copy_set(root / "set", root / "bad_json_row", lambda d: (d / "metadata.jsonl").open("a").write("{oops\n"))
    _copy_set(root / "set", root / "no_ref", lambda d: (d / "references" / "cat.png").unlink())
    _copy_set(root / "set", root / "bad_manifest", lambda d: (d / "manifest.json").write_text("{not json"))
    _copy_set(root / "set", root / "list_manifest", lambda d: (d / "manifest.json").write_text("[1, 2]"))
    _copy_set(root / "set", root / "latin1_meta", lambda d: (d / "metadata.jsonl").write_bytes(b'{"x": "\xe9"}\n'))
    (root / "plain").mkdir()
    (root / "plain" / "a.txt").write_text("not a probe set")
    (root / "no_tars").mkdir()
    (root / "existing").mkdir()
    (root / "existing" / "keep.txt").write_text("mine")
    (root / "existing.png").write_bytes(b"\x89PNG not really, but mine")
    (root / "file.txt").write_text("a regular file")
    (root / "latin1.txt").write_bytes(b"dog\ncaf\xe9\n")
    (root / "empty_vocab.txt").write_text("# nothing\n\n")
    (root / "dup_vocab.txt").write_text("dog\ncat\ndog\n")
    (root / "syn_bad.txt").write_text("dog sofa\n")
    (root / "syn_latin1.txt").write_bytes(b"dog: chien, caf\xe9\n")
    (root / "syn_unknown.txt").write_text("unicorn: horse with a horn\n")
    (root / "det_bad.jsonl").write_text("not json\n")
    (root / "det_dup.jsonl").write_text('{"key": "a", "detections": []}\n{"key": "a", "detections": []}\n')
    (root / "det_latin1.jsonl").write_bytes(b'{"key": "\xe9", "detections": []}\n')
    (root / "cap_notjson.json").write_text("{")
    (root / "cap_wrong.json").write_text('{"annotations": [{"id": 1}]}')
    (root / "cap_good.json").write_text('{"annotations": [{"image_id": 1, "caption": "a dog and a cat"}]}')
    (root / "inst_wrong.json").write_text('{"categories": "dog", "annotations": []}')
    (root / "not_callable.py").write_text("f = 3\n")
    return root


# Each row: the command line (run with the sandbox as the current folder) and a part of the message.
ROWS: list[tuple[list[str], str]] = [
    # data comco / simco / objects
    (["data", "comco", "--out", "o", *SET_ARGS, "--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--seed", "x"], "seed"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--workers", "-2"], "--workers must be at least 1, got -2"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--workers", "0"], "--workers must be at least 1, got 0"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--workers", "100000"], "more processes than"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--workers", "two"], "workers"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--objects", "7"], "invalid object count"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--objects", "1"], "invalid object count"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--objects", "x"], "objects"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--scenes-per-layout", "0"], "--scenes-per-layout must be at least 1"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--scenes-per-layout", "-3"], "--scenes-per-layout must be at least 1"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--scenes-per-layout", "100000000000"], "of memory (limit"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--image-size", "8"], "--image-size must be between 16 and 4096"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--image-size", "100000"], "--image-size must be between 16 and 4096"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--image-size", "24"], "too small"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--size-ratio", "0.5"], "--size-ratio must be a number >= 1"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--size-ratio", "nan"], "size_ratio"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--size-ratio", "inf"], "size_ratio"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--names", "dog,unicorn"], "unknown comco object(s): 'unicorn'"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--names", "dog,dog"], "lists an object more than once"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--names", "dog"], "need at least 2"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--equal-size", "maybe"], "equal_size"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--progress", "maybe"], "progress"),
    (["data", "comco", "--out", "o", *SET_ARGS, "--bogus", "1"], "unrecognized"),
    (["data", "comco", "--out", "file.txt/sub", *SET_ARGS], "file.txt is a file, not a folder"),
    (["data", "comco", "--out", "file.txt", *SET_ARGS], "exists and is not a folder"),
    (["data", "comco", "--out", "existing", *SET_ARGS], "output folder existing is not empty"),
    (["data", "comco", "--out", ".", *SET_ARGS, "--overwrite"], "is the current folder"),
    (["data", "comco", "--out", "x" * 300, *SET_ARGS], "is over 255 bytes"),
    (
        ["data", "comco", "--out", "o", "--image-size", "4096", "--workers", "4"],
        "--image-size 4096 (69 objects) with --workers 4 would take about",
    ),
    (["data", "simco", "--out", "o", "--seed", "-1"], "--seed must be 0 or more"),
    (["data", "simco", "--out", "o", "--names", "cube,unicorn"], "unknown simco object(s): 'unicorn'"),
    (["data", "simco", "--out", "o", "--workers", "-2"], "--workers must be at least 1"),
    (["data", "simco", "--out", "file.txt/sub"], "file.txt is a file, not a folder"),
    (["data", "objects", "dragons"], "unknown probe-set kind 'dragons'"),
    (["data", "nosuch"], "unknown command 'nosuch'"),
    # data corpus
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--seed", "-1"], "--seed must be 0 or more, got -1"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--workers", "-2"], "--workers must be at least 1, got -2"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--workers", "100000"], "more processes than"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--num-samples", "0"], "--num-samples must be at least 1"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--num-samples", "many"], "num_samples"),
    (
        ["data", "corpus", "--out", "o", *CORPUS_ARGS, "--num-samples", "1000000000", "--shard-size", "1"],
        "shards (limit 100000)",
    ),  # fmt: skip
    (
        ["data", "corpus", "--out", "o", *CORPUS_ARGS, "--num-samples", str(10**18), "--shard-size", str(10**15)],
        "are free in",
    ),  # fmt: skip
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--shard-size", "0"], "--shard-size must be at least 1"),
    (
        ["data", "corpus", "--out", "o", "--num-samples", "100000", "--image-size", "1024", "--workers", "8"],
        "--image-size 1024 with --workers 8 would take about",
    ),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--order", "sideways"], "unknown --order 'sideways'"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--p-order", "1.5"], "--p-order must lie in [0, 1]"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--p-order", "nan"], "p_order"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--p-size-word", "-0.1"], "--p-size-word must lie in [0, 1]"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--objects", "0-3"], "must lie between 1 and 6"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--objects", "9"], "must lie between 1 and 6"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--objects", "a-b"], "is not a count or range"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--image-size", "8"], "--image-size must be between 16 and 1024"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--image-size", "5000"], "--image-size must be between 16"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--quality", "0"], "--quality must be between 1 and 100"),
    (["data", "corpus", "--out", "o", *CORPUS_ARGS, "--quality", "101"], "--quality must be between 1 and 100"),
    (["data", "corpus", "--out", "file.txt/sub", *CORPUS_ARGS], "file.txt is a file, not a folder"),
    (["data", "corpus", "--out", "existing", *CORPUS_ARGS], "output folder existing is not empty"),
    (["data", "corpus", "--out", "corpus", *CORPUS_ARGS], "output folder corpus is not empty"),
    # data preview
    (["data", "preview", "missing", "--out", "p.png"], "probe set missing does not exist"),
    (["data", "preview", "plain", "--out", "p.png"], "plain is not a probe set"),
    (["data", "preview", "file.txt", "--out", "p.png"], "probe set file.txt is a file"),
    (
        ["data", "preview", "damaged_png", "--out", "p.png", "--scenes", "100"],
        "cannot read image damaged_png/scenes/2obj_equal/00000.png (image file is truncated)",
    ),  # fmt: skip
    (
        ["data", "preview", "not_png", "--out", "p.png", "--scenes", "100"],
        "cannot read image not_png/scenes/2obj_equal/00000.png",
    ),  # fmt: skip
    (
        ["data", "preview", "no_scene", "--out", "p.png", "--scenes", "100"],
        "cannot read image no_scene/scenes/2obj_equal/00000.png (No such file or directory)",
    ),  # fmt: skip
    (["data", "preview", "damaged_ref", "--out", "p.png"], "cannot read image damaged_ref/references/dog.png"),
    (
        ["data", "preview", "dup_meta", "--out", "p.png"],
        "lists scene scenes/2obj_large0/00000.png twice (lines 1 and 7)",
    ),
    (["data", "preview", "bad_row", "--out", "p.png"], "metadata.jsonl line 7 is not a scene row"),
    (
        ["data", "preview", "bad_json_row", "--out", "p.png"],
        "metadata.jsonl line 7 is not a scene row (JSONDecodeError",
    ),
    (["data", "preview", "latin1_meta", "--out", "p.png"], "is unreadable"),
    (["data", "preview", "no_ref", "--out", "p.png"], "lacks reference images for cat"),
    (["data", "preview", "bad_manifest", "--out", "p.png"], "is unreadable"),
    (["data", "preview", "list_manifest", "--out", "p.png"], "manifest.json is not a JSON object"),
    (["data", "preview", "set", "--out", "plain"], "--out plain is a folder; give the file to write"),
    (["data", "preview", "set", "--out", "sheet.jpg"], "must end in .png"),
    (["data", "preview", "set", "--out", "file.txt/p.png"], "file.txt is a file, not a folder"),
    (["data", "preview", "set", "--out", "set/p.png"], "is inside the probe set"),
    (["data", "preview", "set", "--out", "existing.png", "--tile", "100000"], "of memory (limit"),
    (["data", "preview", "set", "--out", "p.png", "--reference-tile", "100000"], "of memory (limit"),
    (["data", "preview", "set", "--out", "p.png", "--columns", "100000"], "of memory (limit"),
    (["data", "preview", "set", "--out", "p.png", "--tile", "8"], "--tile >= 32"),
    (["data", "preview", "set", "--out", "p.png", "--reference-tile", "8"], "--reference-tile >= 16"),
    (["data", "preview", "set", "--out", "p.png", "--columns", "0"], "--columns >= 1"),
    (["data", "preview", "set", "--out", "p.png", "--scenes", "-1"], "--scenes >= 0"),
    (["data", "preview", "set", "--out", "p.png", "--seed", "-1"], "--seed must be 0 or more"),
    (["data", "preview", "set", "--out", "p.png", "--tile", "big"], "tile"),
    # analyze corpus
    (["analyze", "corpus", "--out", "o"], "give exactly one corpus"),
    (["analyze", "corpus", "--shards", "corpus", "--coco-captions", "cap_good.json", "--out", "o"], "exactly one"),
    (
        ["analyze", "corpus", "--coco-instances", "inst_wrong.json", "--shards", "corpus", "--out", "o"],
        "--coco-instances needs --coco-captions",
    ),  # fmt: skip
    (["analyze", "corpus", "--coco-captions", "cap_good.json", "--out", "o"], "COCO captions have no areas alone"),
    (["analyze", "corpus", "--shards", "nowhere/{00000..00003}.tar", "--out", "o"], "4 of 4 shards not found"),
    (["analyze", "corpus", "--shards", "no_tars", "--out", "o"], "names no shards"),
    (
        ["analyze", "corpus", "--shards", "corpus", "--caption-key", "text", "--out", "o"],
        "--caption-key 'text': the first sample (000000000 in corpus/00000.tar) has no such member; its members are: "
        "jpg, json, txt",
    ),  # fmt: skip
    (
        ["analyze", "corpus", "--shards", "corpus", "--vocab", "latin1.txt", "--out", "o"],
        "vocabulary file latin1.txt is not UTF-8 text (byte 0xe9 on line 2)",
    ),  # fmt: skip
    (["analyze", "corpus", "--shards", "corpus", "--vocab", "empty_vocab.txt", "--out", "o"], "holds no names"),
    (["analyze", "corpus", "--shards", "corpus", "--vocab", "dup_vocab.txt", "--out", "o"], "names dog more than once"),
    (["analyze", "corpus", "--shards", "corpus", "--vocab", "nosuch", "--out", "o"], "neither a known name"),
    (["analyze", "corpus", "--shards", "corpus", "--vocab", "plain", "--out", "o"], "neither a known name"),
    (["analyze", "corpus", "--shards", "corpus", "--synonyms", "nosuch", "--out", "o"], "neither a table"),
    (["analyze", "corpus", "--shards", "corpus", "--synonyms", "syn_bad.txt", "--out", "o"], "line 1: write 'name:"),
    (["analyze", "corpus", "--shards", "corpus", "--synonyms", "syn_latin1.txt", "--out", "o"], "is not UTF-8"),
    (
        ["analyze", "corpus", "--shards", "corpus", "--synonyms", "syn_unknown.txt", "--out", "o"],
        "synonyms given for unicorn",
    ),  # fmt: skip
    (["analyze", "corpus", "--shards", "corpus", "--detections", "nosuch.jsonl", "--out", "o"], "is not readable"),
    (["analyze", "corpus", "--shards", "corpus", "--detections", "det_bad.jsonl", "--out", "o"], "line 1: expected"),
    (["analyze", "corpus", "--shards", "corpus", "--detections", "det_dup.jsonl", "--out", "o"], "key a appears twice"),
    (["analyze", "corpus", "--shards", "corpus", "--detections", "det_latin1.jsonl", "--out", "o"], "is not UTF-8"),
    (
        ["analyze", "corpus", "--coco-captions", "cap_notjson.json", "--coco-instances", "cap_good.json", "--out", "o"],
        "is not readable JSON",
    ),  # fmt: skip
    (
        ["analyze", "corpus", "--coco-captions", "cap_wrong.json", "--coco-instances", "cap_good.json", "--out", "o"],
        "needs 'annotations' rows with image_id and caption",
    ),  # fmt: skip
    (
        ["analyze", "corpus", "--coco-captions", "cap_good.json", "--coco-instances", "inst_wrong.json", "--out", "o"],
        "is not in COCO's format",
    ),  # fmt: skip
    (
        ["analyze", "corpus", "--coco-captions", "missing.json", "--coco-instances", "x.json", "--out", "o"],
        "COCO captions file missing.json does not exist",
    ),  # fmt: skip
    (["analyze", "corpus", "--shards", "corpus", "--extractor", "nocolon", "--out", "o"], "must be an import path"),
    (["analyze", "corpus", "--shards", "corpus", "--extractor", "nomodule_xyz:f", "--out", "o"], "cannot import"),
    (["analyze", "corpus", "--shards", "corpus", "--extractor", "json:nothing", "--out", "o"], "has no 'nothing'"),
    (["analyze", "corpus", "--shards", "corpus", "--extractor", "json:__doc__", "--out", "o"], "is not callable"),
    (
        ["analyze", "corpus", "--shards", "corpus", "--max-samples", "0", "--out", "o"],
        "--max-samples must be at least 1",
    ),
    (["analyze", "corpus", "--shards", "corpus", "--out", "file.txt/sub"], "file.txt is a file, not a folder"),
    (["analyze", "corpus", "--shards", "corpus", "--out", "existing"], "output folder existing is not empty"),
    (
        ["analyze", "corpus", "--shards", "corpus", "--out", "corpus", "--overwrite"],
        "--out corpus holds the input corpus/00000.tar",
    ),  # fmt: skip
    (
        ["analyze", "corpus", "--shards", "corpus", "--vocab", "existing/keep.txt", "--out", "existing", "--overwrite"],
        "holds the input existing/keep.txt",
    ),  # fmt: skip
]


def _row_id(argv: list[str]) -> str:
    """The command line with the shared tiny-size options left out."""
    text = " ".join(argv)
    for common in (SET_ARGS, CORPUS_ARGS):
        text = text.replace(" ".join(common), "...")
    return text[:100]


@pytest.mark.parametrize(("argv", "needle"), ROWS, ids=[_row_id(a) for a, _ in ROWS])
def test_bad_input(box: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], needle: str) -> None:
    monkeypatch.chdir(box)
    before = _snapshot(box)
    code, out, err = _run(argv)
    assert code == 2, (code, err)
    assert err.endswith("\n") and err.count("\n") == 1, err  # exactly one line
    assert err.startswith("clipprobe: error: ") and "Traceback" not in err
    assert needle in err, err
    assert out == ""
    assert _snapshot(box) == before  # nothing created, changed or left behind


def test_default_workers_fit_in_memory() -> None:
    limit = memory_limit()
    assert choose_workers(None, 64, limit // 3, "x", "y") == 3
    assert choose_workers(None, 2, 1000, "x", "y") == 2
    assert choose_workers(5, 2, limit // 5, "x", "y") == 5
    with pytest.raises(
        UserError, match=r"x with --workers 6 would take about .* of memory \(limit .*\); lower --workers or y"
    ):
        choose_workers(6, 2, limit // 5, "x", "y")


def test_sweep_covers_every_command() -> None:
    commands = {tuple(argv[:2]) for argv, _ in ROWS}
    assert {
        ("data", "comco"),
        ("data", "simco"),
        ("data", "corpus"),
        ("data", "preview"),
        ("analyze", "corpus"),
    } <= commands
    assert len(ROWS) >= 100


# ---------------------------------------------------------------------------------------------
# Files and folders honour the umask


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    with _umask(mask):
        assert _run(["data", "comco", "--out", str(tmp_path / "set"), *SET_ARGS])[0] == 0
        assert _run(["data", "corpus", "--out", str(tmp_path / "corpus"), *CORPUS_ARGS])[0] == 0
        assert _run(["data", "preview", str(tmp_path / "set"), "--out", str(tmp_path / "p" / "sheet.png")])[0] == 0
        argv = ["analyze", "corpus", "--shards", str(tmp_path / "corpus"), "--out", str(tmp_path / "stats"),
                "--progress", "false"]  # fmt: skip
        assert _run(argv)[0] == 0
        atomic_write_json(tmp_path / "j" / "x.json", {"a": 1})
    seen = {"file": 0, "dir": 0}
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for name in dirnames:
            assert stat.S_IMODE((Path(dirpath) / name).stat().st_mode) == dir_mode, Path(dirpath) / name
            seen["dir"] += 1
        for name in filenames:
            assert stat.S_IMODE((Path(dirpath) / name).stat().st_mode) == file_mode, Path(dirpath) / name
            seen["file"] += 1
    assert seen["dir"] >= 10 and seen["file"] >= 20


# ---------------------------------------------------------------------------------------------
# Stale temporaries of killed runs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path: Path, hours: float) -> Path:
    t = time.time() - hours * 3600
    os.utime(path, (t, t))
    return path


def test_stale_temporaries_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    host, dead, live = host_name(), _dead_pid(), os.getpid()
    stale = [
        tmp_path / f".out.{host}-{dead}.0badf00d.partial",  # its process is gone
        tmp_path / f".f.json.{host}-{dead}.01234567.tmp",
        tmp_path / f".g.txt.{host}-{dead}.11111111.tmp",  # another file's, in the same folder
        tmp_path / ".f.json.otherhost-7.89abcdef.tmp",  # another host's, a day old
        tmp_path / ".out.ab_12xyz.partial",  # tempfile's names (from before pids were recorded), a day old
    ]
    kept = [
        tmp_path / f".out.{host}-{live}.cafebabe.partial",  # a live process's
        tmp_path / ".f.json.otherhost-7.fedcba98.tmp",  # another host's, fresh
        tmp_path / ".out.cd_34xyz.partial",  # fresh
        tmp_path / f".other.{host}-{dead}.0badf00d.partial",  # another output folder's
        tmp_path / f".g.txt.{host}-{live}.22222222.tmp",  # a live write of another file
    ]
    for path in stale + kept:
        if path.name.endswith(".partial"):
            path.mkdir(exist_ok=True)
            (path / "half.png").write_bytes(b"half")
        else:
            path.write_bytes(b"half")
    for path in stale[3:]:
        _age(path, 25)
    with staged_dir(tmp_path / "out") as stage:
        (stage / "done.txt").write_text("done")
    atomic_write_json(tmp_path / "f.json", {})
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert (tmp_path / "out" / "done.txt").read_text() == "done"


def test_old_contents_of_a_killed_swap_come_back(tmp_path: Path) -> None:
    """Killed between moving the old folder aside and renaming the new one in: the old one is restored."""
    old = tmp_path / f".out.{host_name()}-{_dead_pid()}.0badf00d.old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        check_output_dir(tmp_path / "out", overwrite=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine" and not old.exists()


def test_sigkill_leftovers_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    argv = [sys.executable, "-m", "clipprobe.cli", "data", "corpus", "--out", str(out), "--num-samples", "200000",
            "--shard-size", "20", "--image-size", "16", "--workers", "1", "--progress", "false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".corpus.*.partial/00000.tar")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = list(tmp_path.glob(".corpus.*.partial"))
    assert len(left) == 1 and f"-{proc.pid}." in left[0].name and not out.exists()
    assert _run(["data", "corpus", "--out", str(out), *CORPUS_ARGS])[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


# ---------------------------------------------------------------------------------------------
# Folders without write permission (root ignores permissions: the check runs as nobody, in a fork)


def _as_nobody(fn: Callable[[], None]) -> tuple[int, str]:
    """Run ``fn`` in a forked child with uid and gid 65534; (exit status, what it wrote to stderr)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 3
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            sys.stderr = io.StringIO()
            try:
                fn()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: BLE001 - report anything to the parent
                sys.stderr.write(f"{type(e).__name__}: {e}\n")
                code = 4
            os.write(write, sys.stderr.getvalue().encode())
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


@pytest.fixture
def read_only_folder(box: Path) -> Iterator[tuple[Path, Path]]:
    """A folder nobody may write in, inside one everybody may enter, and a regular file next to it."""
    if not hasattr(os, "fork") or not hasattr(os, "setuid"):
        pytest.skip("needs fork and setuid")
    base = Path(tempfile.mkdtemp(prefix="clipprobe-ro-", dir="/tmp"))
    try:
        base.chmod(0o755)
        (base / "ro").mkdir(mode=0o555)
        (base / "ro").chmod(0o555)
        (base / "file").write_text("x")
        shutil.copytree(box / "set", base / "set")
        shutil.copytree(box / "corpus", base / "corpus")
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                (Path(dirpath) / name).chmod(0o644)
            Path(dirpath).chmod(0o555 if dirpath == str(base / "ro") else 0o755)
        yield base / "ro", base
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "comco", *SET_ARGS, "--out"],
        ["data", "simco", "--out"],
        ["data", "corpus", *CORPUS_ARGS, "--out"],
        ["data", "preview", "{base}/set", "--out"],
        ["analyze", "corpus", "--shards", "{base}/corpus", "--out"],
    ],
    ids=["comco", "simco", "corpus", "preview", "analyze"],
)
def test_folder_without_write_permission(read_only_folder: tuple[Path, Path], argv: list[str]) -> None:
    ro, base = read_only_folder
    argv = [a.replace("{base}", str(base)) for a in argv]
    name = "sheet.png" if "preview" in argv else "out"
    run = (lambda: cli.main([*argv, str(ro / name)])) if os.geteuid() == 0 else None
    if run is None:  # not root: permissions apply in this process
        code, _, err = _run([*argv, str(ro / name)])
    else:
        _run([*argv, str(base / "file" / name)])  # the same code path as root first: modules imported before the fork
        code, err = _as_nobody(run)
        if code == 4 and "PermissionError: [Errno 1]" in err:
            pytest.skip("cannot switch to uid 65534 here")
    assert code == 2, err
    assert (
        err
        == f"clipprobe: error: cannot write --out {ro / name}: no permission to write in {ro}; choose another --out\n"
    )
    assert list(ro.iterdir()) == []


def test_read_only_probe_set_cache(read_only_folder: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    ro, base = read_only_folder
    params = {"objects": [2], "scenes_per_layout": 2, "image_size": 64, "names": ["dog", "cat"], "workers": 1}
    monkeypatch.setenv("CLIPPROBE_CACHE", str(ro))

    def run() -> None:
        try:
            ensure_probe_set("comco", **params)
        except UserError as e:
            sys.stderr.write(f"{e}\n")
            sys.exit(2)

    if os.geteuid() == 0:
        monkeypatch.setenv("CLIPPROBE_CACHE", str(base / "file"))
        with pytest.raises(UserError, match="is a file, not a folder; set \\$CLIPPROBE_CACHE"):
            ensure_probe_set("comco", **params)
        monkeypatch.setenv("CLIPPROBE_CACHE", str(ro))
        code, err = _as_nobody(run)
        if code == 4 and "PermissionError: [Errno 1]" in err:
            pytest.skip("cannot switch to uid 65534 here")
    else:
        with pytest.raises(SystemExit) as e:
            run()
        code, err = e.value.code, ""
    assert code == 2
    if err:
        assert f"no permission to write in {ro}; set $CLIPPROBE_CACHE to a folder you can write" in err, err
    assert list(ro.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# --generate mappings (clipprobe eval, the probe callback) reach resolve_config / ensure_probe_set


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"image_sise": 64}, "unknown probe-set generation option(s) image_sise (in --generate)"),
        ({"image_size": "big"}, "--image-size must be a whole number of pixels, got 'big'"),
        ({"objects": 3}, "--objects must be a list of object counts, got 3"),
        ({"names": "dog"}, "--names must be a list of object names"),
        ({"equal_size": "yes"}, "--equal-size must be true or false"),
        ({"seed": -5}, "--seed must be 0 or more, got -5"),
        ({"seed": 1.5}, "--seed must be a whole number"),
        ({"kind": "simco"}, "cannot be set for a cached set"),
        ({"out": "x"}, "cannot be set for a cached set"),
        ({"workers": -2}, "--workers must be at least 1"),
    ],
)
def test_bad_generate_mapping(tmp_path: Path, params: dict, needle: str) -> None:
    base = {"objects": [2], "scenes_per_layout": 2, "image_size": 64, "names": ["dog", "cat"]}
    with pytest.raises(UserError) as e:
        ensure_probe_set("comco", tmp_path / "cache", **{**base, **params})
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_resolve_config_refuses_unknown_options() -> None:
    with pytest.raises(UserError, match="unknown probe-set generation option"):
        resolve_config("comco", sizes=[2])  # type: ignore[call-arg]


def test_eval_generate_unknown_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user meets it: ``clipprobe eval --probe-set comco --generate '{...}'``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache"))
    code, _, err = _run(["eval", "--model", "clipprobe-tiny", "--probe-set", "comco", "--generate",
                         json.dumps({"image_sise": 64}), "--out", "results", "--progress", "false"])  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "unknown probe-set generation option(s) image_sise" in err, err
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# A full disk mid-run: one line, and the output as it was


def test_disk_full_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from clipprobe.data import generate

    out = tmp_path / "set"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    calls = {"n": 0}
    real = generate.save_png

    def full(img: object, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(img, path)  # type: ignore[arg-type]

    monkeypatch.setattr(generate, "save_png", full)
    code, _, err = _run(["data", "comco", "--out", str(out), *SET_ARGS, "--overwrite"])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("clipprobe: error: No space left on device; free some space or choose another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"] and (out / "keep.txt").read_text() == "mine"
