"""The probe suite: importing this module fills the registry (:data:`clipprobe.probes.base.PROBES`)
with every probe; :func:`validate_probes` checks names and options before anything runs, so a typo
fails in a second, not after an hour of encoding. Probes are run by the one evaluation function,
:func:`clipprobe.evaluation.runner.run_evaluation`. This module never imports lightning or wandb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clipprobe.errors import UserError
from clipprobe.probes import image, matching, retrieval, standard, t2i, text  # noqa: F401  (registers the probes)
from clipprobe.probes.base import PROBES
from clipprobe.probes.common import OPTIONS, parse_options

# Registry order = listing order: text probes, then image probes, then matching.
_ORDER = ("tor", "toc", "mitigation", "size_claim", "ior", "i2tor", "ioc", "attention", "itm", "retrieval", "t2i",
          "zeroshot_classification", "zeroshot_retrieval")  # fmt: skip
for _name in sorted(PROBES, key=lambda n: _ORDER.index(n) if n in _ORDER else len(_ORDER)):
    PROBES[_name] = PROBES.pop(_name)

TEXT_PROBES = tuple(name for name, spec in PROBES.items() if not spec.needs_probe_set and not spec.needs_dataset)
STANDARD_TASKS = tuple(name for name, spec in PROBES.items() if spec.needs_dataset)
IMAGE_PROBES = tuple(name for name, spec in PROBES.items() if spec.needs_probe_set)


def available_probes() -> dict[str, str]:
    """Probe name -> one-line summary, in registry order."""
    return {name: spec.summary for name, spec in PROBES.items()}


def validate_probes(
    names: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    has_probe_set: bool = True,
    allow_none: bool = False,
) -> None:
    """Check probe names, their options and whether a probe set is needed, without running anything.

    ``options`` may hold settings for registered probes that are not in ``names`` (a shared config
    file), the standard tasks' included; those are validated too.

    Raises:
        UserError: no probe (unless ``allow_none``: standard tasks alone), an unknown probe, a standard task named
            as a probe, an unknown or ill-typed option, or an image probe without a probe set.
    """
    options = dict(options or {})
    valid = ", ".join(n for n, p in PROBES.items() if not p.needs_dataset)
    if not names and not allow_none:
        raise UserError(f"no probes given; choose from {valid}")
    for name in [*names, *options]:
        if name not in PROBES:
            raise UserError(f"unknown probe {name!r}; choose from {valid}")
    for name in names:
        if PROBES[name].needs_dataset:
            raise UserError(f"{name} is a standard task, not a probe: name its datasets in benchmarks (e.g. "
                            "comco-objects, heldout, cifar10) and leave it out of the probes")  # fmt: skip
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise UserError(f"probe {dupes[0]!r} is listed twice; list each probe once")
    for name, opts in options.items():
        if opts is not None and not isinstance(opts, Mapping):
            raise UserError(f"options for probe {name} must be a mapping of option: value, got {opts!r}")
        parse_options(OPTIONS[name], opts, name)
    if not has_probe_set:
        needing = [n for n in names if PROBES[n].needs_probe_set]
        if needing:
            raise UserError(f"probe {needing[0]} needs a probe set; pass --probe-set DIR or drop it from --probes")
