"""``clipprobe experiment emergence``: does caption order cause the first-mention bias? (PROBES.md, section 5)

One tiny CLIP per *condition* trains through ``clipprobe fit`` (same recipe, seed, steps and checkpoint
cadence) on a synthetic corpus (:mod:`clipprobe.data.corpus`) that differs only in caption order:
``size_first`` / ``small_first`` name the largest / smallest object first with probability ``p_order``,
``random`` shuffles. The corpora share their images: sample ``i`` draws its objects, sizes and places
before the order policy runs (its template is drawn after, so it may differ, with the same distribution).

The exported checkpoints are probed post hoc: ``tor`` (balanced, on the corpus' object names), ``ior``
on a ComCO probe set at the corpus' image size, and image-to-caption retrieval on a held-out corpus
(seed + 1) within batches of ``retrieval_batch`` (chance ``1 / retrieval_batch``). ``--out`` gets,
atomically, ``emergence.png`` (one line per condition, Wilson 95% bands), ``results.md`` (final values),
``results.json`` (every checkpoint) and ``timing.json``. Corpora, runs and probe sets live in ``--work``,
which is reused: finished corpora and runs are not redone, an interrupted run resumes.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipprobe.errors import UserError
from clipprobe.experiments.emergence_report import plot, table


@dataclass(frozen=True)
class Condition:
    """One arm of the experiment: a caption order policy and its probability."""

    order: str
    p_order: float

    @property
    def name(self) -> str:
        return self.order if self.order == "random" else f"{self.order}_p{self.p_order:g}"


TRAINING = ("recipe", "fit_args", "num_samples", "heldout_samples", "objects", "image_size", "steps", "batch_size",
            "every", "seed")  # fmt: skip  # the Settings a run folder's corpora and checkpoints depend on


@dataclass(frozen=True)
class Settings:
    """Everything the experiment depends on besides the conditions (see :func:`emergence` for meanings)."""

    recipe: str
    fit_args: tuple[str, ...]
    num_samples: int
    heldout_samples: int
    objects: str
    image_size: int
    steps: int
    batch_size: int
    every: int
    seed: int
    tor_n: tuple[int, ...]
    tor_captions: int
    probe_scenes: int
    retrieval_batch: int
    plot_n: int
    progress: bool


# ---------------------------------------------------------------------------------------------
# Data and training.


def _corpus(cond: Condition, s: Settings, out: Path, num_samples: int, seed: int) -> Path:
    """Generate (once) the corpus of ``cond``; return its folder."""
    from clipprobe.data.corpus import CorpusConfig, generate_corpus, parse_counts

    if not (out / "corpus.json").is_file():
        cfg = CorpusConfig(num_samples, parse_counts(s.objects), cond.order, cond.p_order, 0.0, s.image_size,
                           1000, seed, 90)  # fmt: skip
        generate_corpus(cfg, out, overwrite=True, progress=s.progress)
    return out


def _last_step(run: Path) -> int:
    last = run / "checkpoints" / "last.pt"
    return int(torch.load(last, map_location="cpu")["clipprobe"]["step"]) if last.is_file() else 0


def _claim(run: Path, settings: dict[str, Any]) -> None:
    """Record what a run folder trains; refuse to reuse one made with other settings."""
    from clipprobe.fileio import atomic_write_json

    record = run / "experiment.json"
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != settings:
        raise UserError(f"{run} was trained with other settings (see {record}); pass another --work or delete it")
    atomic_write_json(record, settings)


def train(cond: Condition, s: Settings, corpus: Path, run: Path) -> None:
    """``clipprobe fit`` with the recipe on ``corpus``, keeping every export; resume an unfinished run."""
    from clipprobe.cli import main

    done = _last_step(run)
    if done >= s.steps:
        return
    shards = json.loads((corpus / "corpus.json").read_text(encoding="utf-8"))["num_shards"]
    argv = ["fit", "--config", s.recipe, "--data.train_data", str(corpus / f"{{00000..{shards - 1:05d}}}.tar"), "--data.batch_size", str(s.batch_size),
            "--data.seed", str(s.seed), "--seed_everything", str(s.seed), "--trainer.max_steps", str(s.steps),
            "--trainer.default_root_dir", str(run), "--checkpoint.every_n_train_steps", str(s.every),
            "--checkpoint.save_top_k", "-1", "--trainer.enable_progress_bar", str(s.progress).lower(),
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run),
            "--trainer.logger.name", "csv", *s.fit_args]  # fmt: skip
    main(argv + (["--ckpt_path", "last"] if done else []))


# ---------------------------------------------------------------------------------------------
# Evaluation of one checkpoint.


def read_heldout(folder: Path) -> tuple[list[bytes], list[str]]:
    """JPEG bytes and captions of every sample of a corpus, in key order."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
    keys = sorted(samples)
    return [samples[k]["jpg"] for k in keys], [samples[k]["txt"].decode("utf-8") for k in keys]


@torch.no_grad()
def retrieval(model: Any, preprocess: Any, tokenizer: Any, images: list[bytes], texts: list[str],
              batch: int) -> dict[str, Any]:  # fmt: skip
    """Image-to-caption recall@1 and @5 within consecutive batches of ``batch`` held-out samples.

    A retrieved caption counts as right when its text equals the true caption (duplicates in a batch).
    """
    from PIL import Image

    from clipprobe.probes.stats import wilson

    hits = {1: 0, 5: 0}
    total = 0
    for start in range(0, len(images) - batch + 1, batch):  # whole batches only: chance is 1/batch
        pixels = torch.stack(
            [preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images[start : start + batch]]
        )
        caps = texts[start : start + batch]
        img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)  # [B, D]
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer(caps)), dim=-1)  # [B, D]
        ranked = (img @ txt.T).argsort(dim=1, descending=True)[:, :5]  # [B, 5] caption indices
        for i, row in enumerate(ranked.tolist()):
            right = [caps[j] == caps[i] for j in row]
            hits[1] += right[0]
            hits[5] += any(right)
        total += len(caps)
    out: dict[str, Any] = {"metrics": {}, "counts": {}, "intervals": {}, "chance": {}}
    for k, h in hits.items():
        key = f"recall@{k}"
        out["metrics"][key], out["counts"][key] = (h / total if total else math.nan), total
        out["intervals"][key], out["chance"][key] = list(wilson(h, total)), min(1.0, k / batch)
    return out


def probe_options(s: Settings) -> dict[str, dict[str, Any]]:
    """The probes' options (tor: balanced captions in the bare template, on the corpus' objects)."""
    return {"tor": {"mode": "balanced", "template": "bare", "n": list(s.tor_n), "num_captions": s.tor_captions}}


def evaluate(model: Any, preprocess: Any, tokenizer: Any, probe_set: Any, vocab: list[str],
             heldout: tuple[list[bytes], list[str]], s: Settings) -> dict[str, Any]:  # fmt: skip
    """tor, ior and held-out retrieval of one model: ``{probe: {"metrics", "counts", "intervals", ...}}``."""
    from clipprobe.probes.encode import CachedEncoder
    from clipprobe.probes.suite import run_probes

    model.eval()
    encoder = CachedEncoder(model, preprocess, tokenizer, progress=False, num_workers=0)
    results = run_probes(encoder, ["tor", "ior"], probe_set, vocab, probe_options(s), seed=s.seed, progress=False)
    out = {r.probe: {"metrics": r.metrics, "counts": r.counts, "intervals": r.intervals} for r in results}
    out["retrieval"] = retrieval(model, preprocess, tokenizer, *heldout, s.retrieval_batch)
    return out


def evaluate_series(run: Path, probe_set: Any, vocab: list[str], heldout: tuple[list[bytes], list[str]],
                    s: Settings) -> list[dict[str, Any]]:  # fmt: skip
    """Evaluate the random initialisation (seeded) and every ``step=*.pt`` export of ``run``, by step."""
    from clipprobe.models.load import expand_checkpoints, load_model, read_checkpoint

    paths = expand_checkpoints(str(run / "checkpoints" / "step=*.pt"))
    arch = read_checkpoint(paths[0]).arch
    torch.manual_seed(s.seed)  # same init for every condition; step 0 of the curves
    models = [(None, load_model(arch))] + [(p.name, load_model(arch, str(p))) for p in paths]
    rows = []
    for name, m in models:
        row = evaluate(m.model, m.preprocess, m.tokenizer, probe_set, vocab, heldout, s)
        rows.append({"arch": arch, "step": m.step or 0, "samples_seen": m.samples_seen or 0, "checkpoint": name, **row})
    return sorted(rows, key=lambda r: r["step"])


def parse_condition(spec: str, p_order: float) -> Condition:
    """``"size_first"`` (with ``p_order``), ``"size_first:1.0"``, ``"random"``.

    Raises:
        UserError: an unknown order or a probability outside [0, 1].
    """
    from clipprobe.data.corpus import ORDER_POLICIES

    order, _, p = spec.partition(":")
    if order not in ORDER_POLICIES:
        raise UserError(f"unknown condition {spec!r}; choose from {', '.join(ORDER_POLICIES)} (optionally :P)")
    try:
        prob = float(p) if p else p_order
    except ValueError:
        raise UserError(f"condition {spec!r}: {p!r} is not a probability; write e.g. size_first:0.9") from None
    if not 0.0 <= prob <= 1.0:
        raise UserError(f"condition {spec!r}: p_order must lie in [0, 1], got {prob}")
    return Condition(order, 1.0 if order == "random" else prob)


def _check(s: Settings, conditions: list[Condition]) -> None:
    checks = [
        (bool(conditions), "no --conditions given; e.g. --conditions size_first,random"),
        (len({c.name for c in conditions}) == len(conditions), "--conditions lists a condition twice"),
        (Path(s.recipe).is_file(), f"recipe {s.recipe} not found; pass --recipe configs/fit/tiny-synthetic.yaml"),
        (s.steps >= s.every >= 1, f"need steps >= every >= 1, got steps={s.steps}, every={s.every}"),
        (s.heldout_samples >= s.retrieval_batch >= 2, "need heldout_samples >= retrieval_batch >= 2"),
        (s.plot_n in s.tor_n, f"--plot-n {s.plot_n} must be one of --tor-n {list(s.tor_n)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def _rounded(obj: Any, digits: int = 6) -> Any:
    """Floats rounded (a small results file); containers rebuilt, tuples as lists."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    return [_rounded(v, digits) for v in obj] if isinstance(obj, list | tuple) else obj


def default_work_dir(s: Settings) -> Path:
    """``<cache>/emergence/<hash of the training settings>`` (cache: see ``default_cache_dir``)."""
    import hashlib

    from clipprobe.data.generate import default_cache_dir

    blob = json.dumps({k: getattr(s, k) for k in TRAINING}, sort_keys=True)
    return default_cache_dir().parent / "emergence" / hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def run_condition(
    cond: Condition, s: Settings, work: Path, probe_set: Any
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Corpora, training and evaluation of one condition: the evaluated series and the seconds of each part."""
    from clipprobe.data.sprites import object_names

    _claim(work / "runs" / cond.name, {"condition": cond.__dict__, **{k: getattr(s, k) for k in TRAINING}})
    t0 = time.perf_counter()
    corpus = _corpus(cond, s, work / "corpora" / cond.name, s.num_samples, s.seed)
    heldout = _corpus(cond, s, work / "corpora" / f"{cond.name}-heldout", s.heldout_samples, s.seed + 1)
    t1 = time.perf_counter()
    train(cond, s, corpus, work / "runs" / cond.name)
    t2 = time.perf_counter()
    rows = evaluate_series(work / "runs" / cond.name, probe_set, list(object_names("comco")),
                           read_heldout(heldout), s)  # fmt: skip
    return rows, {"data": t1 - t0, "train": t2 - t1, "eval": time.perf_counter() - t2}


def emergence(
    out: str = "docs/emergence",
    conditions: list[str] = ["size_first", "random"],  # noqa: B006 (jsonargparse reads the default)
    p_order: float = 0.9,
    recipe: str = "configs/fit/tiny-synthetic.yaml",
    fit_args: list[str] = [],  # noqa: B006
    num_samples: int = 40_000,
    heldout_samples: int = 1_000,
    objects: str = "1-4",
    image_size: int = 64,
    steps: int = 2_000,
    batch_size: int = 128,
    every: int = 250,
    seed: int = 0,
    tor_n: list[int] = [2, 3, 4],  # noqa: B006
    tor_captions: int = 1_000,
    probe_scenes: int = 138,
    retrieval_batch: int = 100,
    plot_n: int = 3,
    threads: int | None = None,
    work: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Train one tiny CLIP per caption-order condition and compare their bias curves (PROBES.md, section 5).

    Args:
        out: Output folder: emergence.png, results.md, results.json (written atomically).
        conditions: Caption orders: size_first, small_first, random; ORDER:P sets that condition's p.
        p_order: Probability that size_first (small_first) names the largest (smallest) object first.
        recipe: The ``clipprobe fit`` recipe every condition trains with.
        fit_args: Extra ``clipprobe fit`` options, e.g. --model.lr,5e-4 (same for every condition).
        num_samples: Training corpus size per condition (identical images across conditions).
        heldout_samples: Held-out corpus size per condition (seed + 1) for retrieval.
        objects: Objects per corpus image, e.g. 1-4.
        image_size: Corpus and probe-set image side in pixels.
        steps: Training steps per condition.
        batch_size: Training batch size.
        every: Export a checkpoint every this many steps (the probe cadence).
        seed: Seed of the corpora, the data order, the model initialisation and the probes.
        tor_n: Object counts of the tor captions and of the ior probe set's scenes.
        tor_captions: tor balanced captions per n.
        probe_scenes: ior probe-set scenes per group (n objects, large slot).
        retrieval_batch: Held-out retrieval batch size (chance recall@1 = 1 / this).
        plot_n: The n shown in the plot.
        threads: torch intra-op threads (default: torch's).
        work: Folder for corpora, runs and probe sets, reused when run again (default: a folder in the cache
            beside the probe sets, named after a hash of the training settings).
        overwrite: Replace a non-empty output folder.
        progress: Show progress bars.
    """
    from clipprobe.data.generate import ensure_probe_set
    from clipprobe.data.probeset import ProbeSet
    from clipprobe.fileio import atomic_write_json, atomic_write_text, check_output_dir, staged_dir

    s = Settings(recipe, tuple(fit_args), num_samples, heldout_samples, objects, image_size, steps, batch_size, every,
                 seed, tuple(tor_n), tor_captions, probe_scenes, retrieval_batch, plot_n, progress)  # fmt: skip
    conds = [parse_condition(c, p_order) for c in conditions]
    _check(s, conds)
    out_path = check_output_dir(out, overwrite)
    work_path = Path(work) if work else default_work_dir(s)
    probe_set = ProbeSet.load(ensure_probe_set("comco", work_path / "probesets", objects=tuple(tor_n),
                                               scenes_per_layout=probe_scenes, image_size=image_size,
                                               equal_size=False, seed=seed, progress=progress))  # fmt: skip
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or old_threads)
    start = time.perf_counter()
    try:
        done = {c.name: run_condition(c, s, work_path, probe_set) for c in conds}
    finally:
        torch.set_num_threads(old_threads)
    results = {name: rows for name, (rows, _) in done.items()}
    timing = {"total": time.perf_counter() - start, **{name: secs for name, (_, secs) in done.items()}}
    settings = {**s.__dict__, "conditions": [c.__dict__ for c in conds]}
    with staged_dir(out_path) as root:  # results.json: same settings, same bytes; timings apart
        plot(results, s, root / "emergence.png")
        atomic_write_text(root / "results.md", table(results, s))
        summary = {"settings": settings, "probe_options": probe_options(s), "results": results}
        atomic_write_text(root / "results.json", json.dumps(_rounded(summary), sort_keys=True, separators=(",", ":")))
        atomic_write_json(root / "timing.json", {**timing, "threads": threads or old_threads})
    print(table(results, s) + f"\nwrote {out_path} in {timing['total'] / 60:.1f} min (work: {work_path})")
    return out_path
