"""The dispatcher: help, unknown commands, forgiving option spellings, one-line user errors."""

from __future__ import annotations

import pytest

from clipprobe import cli
from clipprobe.errors import UserError


def _opts(out: str = "x", objects: list[int] | None = None, overwrite: bool = False, num_samples: int = 1) -> None:
    """A stand-in command signature for normalize_argv."""


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["nosuchthing"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clipprobe: error: unknown command 'nosuchthing'")
    assert "\n" not in err


def test_normalize_dashes_flags_and_lists() -> None:
    argv = ["--num-samples", "5", "--overwrite", "--objects", "2,3", "--out=my-dir"]
    assert cli.normalize_argv(argv, _opts) == [
        "--num_samples", "5", "--overwrite", "true", "--objects", "[2,3]", "--out=my-dir",
    ]  # fmt: skip
    # an explicit value and a bracketed list stay as they are
    assert cli.normalize_argv(["--overwrite", "false", "--objects", "[4]"], _opts) == [
        "--overwrite", "false", "--objects", "[4]",
    ]  # fmt: skip


def test_bad_option_value_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "probe-test", cli.Command(f"{__name__}:_opts", "test"))
    with pytest.raises(UserError, match="num_samples"):
        cli._dispatch(["probe-test", "--num-samples", "many"], cli.COMMANDS, "clipprobe")
    with pytest.raises(UserError, match="unrecognized"):
        cli._dispatch(["probe-test", "--bogus", "1"], cli.COMMANDS, "clipprobe")
