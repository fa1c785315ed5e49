"""The one entry point: ``clipprobe <command> [<subcommand>] [options]``.

Every command is a typed, documented function; jsonargparse turns its signature into options
(parameters without a default are positional, the rest are ``--options``), and ``--config FILE``
reads any of them from YAML. ``fit`` and ``validate`` go to LightningCLI. Commands are looked up in
a registry of ``"module:function"`` strings and imported only when run, so ``clipprobe --help``
starts in a fraction of a second.

User errors (:class:`clipprobe.errors.UserError`, bad options) print one line
``clipprobe: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clipprobe.errors import UserError


@dataclass(frozen=True)
class Command:
    """A subcommand: the function that implements it and a one-line summary for ``--help``."""

    target: str  # "package.module:function"
    summary: str
    lightning: bool = False  # the target takes the raw argv (LightningCLI parses it)


CommandTree = dict[str, "Command | CommandTree"]

COMMANDS: CommandTree = {
    "fit": Command(
        "clipprobe.training.fit:fit", "Train a CLIP model on webdataset shards (LightningCLI).", lightning=True
    ),
    "validate": Command(
        "clipprobe.training.fit:validate", "Validation loss of a checkpoint on shards.", lightning=True
    ),
    "data": {
        "comco": Command("clipprobe.data.generate:comco", "Generate a ComCO probe set (emoji objects, COCO names)."),
        "simco": Command("clipprobe.data.generate:simco", "Generate a SimCO probe set (18 blue shapes)."),
        "preview": Command("clipprobe.data.preview:preview", "Contact sheet of a probe set's scenes and references."),
        "corpus": Command(
            "clipprobe.data.corpus:corpus", "Synthetic image-caption corpus as webdataset shards (img2dataset layout)."
        ),
        "objects": Command("clipprobe.data.generate:objects", "List the objects a probe-set kind can draw."),
        "benchset": Command(
            "clipprobe.data.benchsets:benchset",
            "Offline zero-shot dataset (CLIP_benchmark wds layout): objects or held-out retrieval.",
        ),
    },
    "models": Command("clipprobe.models.load:models", "List model architectures and pretrained tags."),
    "eval": Command(
        "clipprobe.evaluation.evaluate:evaluate", "Run probes on models or checkpoints; one results JSON per job."
    ),
    "report": Command(
        "clipprobe.evaluation.report:report", "Aggregate result records into a CSV, markdown tables and plots."
    ),
    "plot": Command(
        "clipprobe.evaluation.runplots:plot", "PNG probe curves and loss of a training run (probes.jsonl, metrics.csv)."
    ),
    "experiment": {
        "run": Command(
            "clipprobe.experiments.conditions:experiment",
            "Train one tiny CLIP per condition (caption order, fit overrides) and seed; compare bias curves.",
        ),
        "emergence": Command(
            "clipprobe.experiments.conditions:experiment",
            "The caption-order experiment (experiment run's defaults): one tiny CLIP per caption order.",
        ),
    },
    "analyze": {
        "corpus": Command(
            "clipprobe.analysis.command:corpus", "Mention order against object area in a caption corpus."
        ),
    },
}


def _resolve(target: str) -> Callable[..., typing.Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _usage(prefix: str, tree: CommandTree) -> str:
    lines = [f"usage: {prefix} <command> [options]", "", "commands:"]
    width = max(len(k) for k in tree) + 2
    for name, node in tree.items():
        summary = node.summary if isinstance(node, Command) else "Subcommands: " + ", ".join(node)
        lines.append(f"  {name:<{width}}{summary}")
    lines += ["", f"Run '{prefix} <command> --help' for a command's options."]
    return "\n".join(lines)


def _param_types(fn: Callable[..., typing.Any]) -> dict[str, typing.Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: treat every option as plain
        return {}


def _is_list_type(tp: typing.Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (list, tuple, Sequence):
        return True
    if origin is typing.Union or origin is types.UnionType:  # Optional[list[int]], list[int] | None
        return any(_is_list_type(a) for a in typing.get_args(tp))
    return False


def normalize_argv(argv: list[str], fn: Callable[..., typing.Any] | None = None) -> list[str]:
    """Make the command line forgiving in the ways users expect.

    - ``--num-samples`` means ``--num_samples`` (both spellings work).
    - A bare boolean flag ``--overwrite`` means ``--overwrite true``.
    - A list option takes ``--objects 2,3`` as well as ``--objects [2,3]``.
    """
    types = _param_types(fn) if fn is not None else {}
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--") or tok == "--":
            out.append(tok)
            continue
        name, eq, value = tok[2:].partition("=")
        name = name.replace("-", "_")
        tp = types.get(name)
        if eq:
            out.append(f"--{name}={_listify(value) if _is_list_type(tp) else value}")
            continue
        out.append(f"--{name}")
        nxt = argv[i] if i < len(argv) else None
        if tp is bool and (nxt is None or nxt.startswith("--")):
            out.append("true")
        elif _is_list_type(tp) and nxt is not None and not nxt.startswith("--"):
            out.append(_listify(nxt))
            i += 1
    return out


def _listify(value: str) -> str:
    value = value.strip()
    return value if value.startswith("[") else "[" + value + "]"


def _run_function(prog: str, command: Command, argv: list[str]) -> typing.Any:
    from jsonargparse import ActionConfigFile, ArgumentParser
    from jsonargparse import ArgumentError as JAError

    fn = _resolve(command.target)
    doc = inspect.getdoc(fn) or command.summary
    parser = ArgumentParser(prog=prog, description=doc.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_function_arguments(fn, as_positional=True)
    try:
        cfg = parser.parse_args(normalize_argv(argv, fn))
    except (JAError, ValueError, TypeError) as e:
        msg = " ".join(str(e).split())
        raise UserError(f"{msg} (see '{prog} --help')") from None
    kwargs = cfg.as_dict()
    kwargs.pop("config", None)
    return fn(**kwargs)


def _dispatch(argv: list[str], tree: CommandTree, prefix: str) -> typing.Any:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prefix, tree))
        return None
    name, rest = argv[0], argv[1:]
    if name == "--version" and prefix == "clipprobe":
        from clipprobe import __version__

        print(__version__)
        return None
    node = tree.get(name)
    if node is None:
        raise UserError(f"unknown command '{name}' for '{prefix}'; choose one of: {', '.join(tree)}")
    prog = f"{prefix} {name}"
    if isinstance(node, dict):
        return _dispatch(rest, node, prog)
    if node.lightning:
        return _resolve(node.target)(normalize_argv(rest))
    return _run_function(prog, node, rest)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0) or exits with 2 on a user error."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _dispatch(args, COMMANDS, "clipprobe")
    except UserError as e:
        print(f"clipprobe: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("clipprobe: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        fix = _OS_ERROR_FIXES.get(e.errno or 0)
        if fix is None:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"clipprobe: error: {e.strerror or e}{where}; {fix}", file=sys.stderr)
        sys.exit(2)
    return 0


# Errors of the environment, not of clipprobe: one line naming the file instead of a traceback. Outputs
# are written through temporaries (clipprobe.fileio), so what was there before is left as it was.
_OS_ERROR_FIXES: dict[int, str] = {
    errno.ENOSPC: "free some space or choose another --out (nothing already written was touched)",
    errno.EDQUOT: "free some of your quota or choose another --out (nothing already written was touched)",
    errno.EROFS: "the file system is read-only: choose another --out",
}


if __name__ == "__main__":
    main()
