"""``clipprobe report``: result records -> ``results.csv``, ``results.md`` and ``plots/*.png``.

The one reader of results: ``clipprobe eval``'s files, training runs' ``probes.jsonl`` and experiments' run
folders all hold :class:`~clipprobe.evaluation.records.Record` lines. Everything is grouped and ordered by
the metric entries' fields (variant, n, family, key), never by their names:

- :mod:`.collect` finds and reads the files; :mod:`.structure` labels, groups and orders;
- :mod:`.tables` writes the CSV and the markdown (with the study's values, :mod:`.study`);
- :mod:`.figures` and :mod:`.plots` draw bars, curves per series and the bias index / hit rate view;
- :mod:`.runplots` is ``clipprobe plot`` (one run), :mod:`.views` the experiments' condition views.
"""

from __future__ import annotations

from pathlib import Path

from clipprobe.errors import UserError


def report(
    results: list[str] | str,
    out: str = "report",
    overwrite: bool = False,
    plots: bool = True,
    x: str = "samples_seen",
    min_count: int = 30,
) -> Path:
    """Aggregate result records into ``results.csv``, ``results.md`` and ``plots/*.png``.

    Args:
        results: folders of result files (searched recursively for ``*.jsonl`` and ``*.json``: eval outputs,
            run folders with ``probes.jsonl``), globs (``results/*tor*.jsonl``) or files; several as
            ``[runs,results]``.
        out: report folder (refused if not empty, unless --overwrite; replaced as a whole).
        overwrite: replace a non-empty report folder.
        plots: draw the PNG plots (bars per model; curves and bias index against samples seen per series).
        x: x axis of the curves: ``samples_seen`` or ``step``.
        min_count: shares among hits resting on fewer cases are marked in the tables and left out of the plots.

    Returns:
        The report folder.

    Raises:
        UserError: nothing matches, no file holds a record, a schema-1 result, ``out`` among the results or
            not empty, or a bad option.
    """
    from clipprobe.evaluation.collect import find_result_files, load_records
    from clipprobe.evaluation.structure import check_plot_options, order_records
    from clipprobe.evaluation.tables import csv_rows, to_csv, to_markdown
    from clipprobe.fileio import atomic_write_text, check_output_dir, staged_dir

    check_plot_options(x, min_count)
    files = find_result_files(results)
    target = Path(out).expanduser().resolve()
    if any(target == f.resolve().parent or target in f.resolve().parents for f in files):
        raise UserError(f"--out {out} holds the result files themselves; choose a folder outside them")
    check_output_dir(out, overwrite)
    records = order_records(load_records(files))
    _say_mixed_targets(records)
    with staged_dir(out) as stage:
        rows = csv_rows(records)
        atomic_write_text(stage / "results.csv", to_csv(rows))
        atomic_write_text(stage / "results.md", to_markdown(records, min_count))
        n_plots = 0
        if plots:
            from clipprobe.evaluation.plots import report_plots

            (stage / "plots").mkdir()
            n_plots = len(report_plots(records, stage / "plots", x, min_count))
    print(f"report: {len(records)} results from {len(files)} files, {len(rows)} metric rows, {n_plots} plots -> {out}")
    return Path(out)


def _say_mixed_targets(records: list) -> None:
    """One line per target name that stands for different probe sets or datasets (another manifest or folder
    fingerprint) for one model, weights and step: their rows are not comparable, and a summary cell shows one."""
    import json

    seen: dict[tuple, set[str]] = {}
    for r in records:
        key = (r.model, json.dumps(r.weights, sort_keys=True), r.step, r.target, r.probe)
        seen.setdefault(key, set()).add(
            str((r.probe_set or {}).get("manifest_sha256") or (r.probe_set or {}).get("path"))
        )
    for (model, _, step, target, probe), prints in seen.items():
        if len(prints) > 1:
            at = f" at step {step}" if step is not None else ""
            print(
                f"report: warning: {target} names {len(prints)} different data sets for {model} {probe}{at} (other "
                "manifest or files); their rows are not comparable: report one of them, or give them other names"
            )
