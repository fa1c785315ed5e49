"""Result records built in memory for the report, plot and view tests (entries written by the probes' own
writers, :func:`clipprobe.probes.stats.put_position_shares`). Not a test module."""

from __future__ import annotations

from typing import Any

from clipprobe.evaluation.records import Record
from clipprobe.probes.base import Metric, ProbeResult
from clipprobe.probes.stats import put_position_shares, wilson

PROBE_SET = {"name": "comco", "kind": "comco", "path": "/sets/comco", "manifest_sha256": "ab" * 32}


def position_entries(first: float, n: int = 4, total: int = 100, hits: int | None = None,
                     roles: list[str] | None = None, variant: str | None = None) -> list[Metric]:  # fmt: skip
    """The entries of a tally of ``total`` queries where position 1 is nearest (and top-1) in ``first`` of
    them, the rest shared evenly; ``hits`` queries are hits (default all)."""
    hits = total if hits is None else hits
    rest = (1 - first) / (n - 1)
    closest = [round(first * total)] + [round(rest * total)] * (n - 1)
    top_hits = [round(first * hits)] + [round(rest * hits)] * (n - 1)
    counts = {"total": total, "hits": hits, "top1_hits": top_hits, "top1_all": top_hits, "closest": closest}
    result = ProbeResult("x")
    put_position_shares(result, counts, variant=variant, roles=roles)
    return result.entries


def record(probe: str = "tor", metrics: list[Metric] | None = None, *, model: str = "clipprobe-tiny",
           weights: dict[str, Any] | None = None, step: int | None = None, seen: int | None = None,
           run: dict[str, Any] | None = None, source: str = "eval", target: str = "comco",
           options: dict[str, Any] | None = None) -> Record:  # fmt: skip
    return Record(
        model=model, weights=weights or {"kind": "random", "seed": 0}, probe=probe, probe_version=1,
        options=options or {"run_seed": 0}, target=target, metrics=metrics or position_entries(0.5),
        probe_set=dict(PROBE_SET), step=step, samples_seen=seen, run=run, source=source,
        timestamp="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def tag(name: str) -> dict[str, Any]:
    return {"kind": "tag", "tag": name}


def run_record(run: str, step: int, first: float, probe: str = "tor", *, source: str = "callback",
               extra: dict[str, Any] | None = None, hits: int | None = None) -> Record:  # fmt: skip
    """A training run's record at ``step`` (64 samples a step)."""
    roles = ["large", "small_1", "small_2", "small_3"] if probe == "ior" else None
    weights = {"kind": "run", "run": run, "step": step}
    return record(probe, position_entries(first, 4, 100, hits, roles), weights=weights, step=step, seen=64 * step,
                  run={"dir": run, **(extra or {})}, source=source)  # fmt: skip


def single(name: str, family: str, value: float, count: int, *, n: int | None = 3, key: str | None = None,
           variant: str | None = None, chance: float | None = None) -> Metric:  # fmt: skip
    """One share entry with its Wilson interval."""
    return Metric(name, family, value, count, wilson(value * count, count), n, key, variant, chance)


def standard_record(task: str = "zeroshot_classification", target: str = "cifar10", *, acc1: float = 0.5,
                    acc5: float = 0.8, mpcr: float = 0.45, recall: dict[int, float] | None = None, classes: int = 10,
                    images: int = 1000, texts: int = 5000, model: str = "clipprobe-tiny",
                    weights: dict[str, Any] | None = None, step: int | None = None, seen: int | None = None,
                    run: dict[str, Any] | None = None, source: str = "eval") -> Record:  # fmt: skip
    """A standard evaluation record (CLIP_benchmark's zero-shot classification or retrieval) as ``clipprobe eval``
    and the training callback write it: ``acc1``, ``acc5`` (from 5 classes), ``mean_per_class_recall`` over
    ``images``; or ``image_retrieval_recall@k`` (over ``texts``) and ``text_retrieval_recall@k`` (over
    ``images``) for each k of ``recall`` (k -> value, default {1: 0.3, 5: 0.6})."""
    recall = {1: 0.3, 5: 0.6} if recall is None else recall
    nan = float("nan")
    if task == "zeroshot_classification":
        metrics = [Metric("acc1", "accuracy", acc1, images, wilson(acc1 * images, images), None, "top1", None,
                          1 / classes)]  # fmt: skip
        if classes >= 5:
            metrics.append(Metric("acc5", "accuracy", acc5, images, wilson(acc5 * images, images), None, "top5", None,
                                  min(1.0, 5 / classes)))  # fmt: skip
        metrics.append(Metric("mean_per_class_recall", "mean_per_class_recall", mpcr, images, (nan, nan), None, None,
                              None, 1 / classes))  # fmt: skip
    else:
        metrics = []
        for k, v in recall.items():
            metrics.append(Metric(f"image_retrieval_recall@{k}", "image_retrieval_recall", v, texts,
                                  wilson(v * texts, texts), None, str(k), None, min(1.0, k / images)))  # fmt: skip
            metrics.append(Metric(f"text_retrieval_recall@{k}", "text_retrieval_recall", v, images,
                                  wilson(v * images, images), None, str(k), None, min(1.0, k * texts / images / texts)))  # fmt: skip
    probe_set = {"name": f"wds/{target}", "kind": "benchmark", "task": task, "path": f"/data/{target}",
                 "manifest_sha256": "cd" * 32}  # fmt: skip
    return Record(
        model=model, weights=weights or {"kind": "random", "seed": 0}, probe=task, probe_version=1,
        options={"batch_size": 64, "recall_k": list(recall), "run_seed": 0}, target=target, metrics=metrics,
        probe_set=probe_set, step=step, samples_seen=seen, run=run, source=source,
        timestamp="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def run_standard_record(run: str, step: int, acc1: float, task: str = "zeroshot_classification",
                        target: str = "cifar10", **kwargs: Any) -> Record:  # fmt: skip
    """A training run's standard record at ``step`` (64 samples a step), like :func:`run_record`."""
    weights = {"kind": "run", "run": run, "step": step}
    return standard_record(task, target, acc1=acc1, weights=weights, step=step, seen=64 * step, run={"dir": run},
                           source="callback", **kwargs)  # fmt: skip
