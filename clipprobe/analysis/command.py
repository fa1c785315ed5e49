"""``clipprobe analyze corpus``: is the largest object mentioned first, and where otherwise?"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from clipprobe.analysis.corpus_stats import CorpusStats
from clipprobe.analysis.mentions import SYNONYM_TABLES, Matcher, load_extractor, load_synonyms
from clipprobe.analysis.sources import CocoSource, Sample, ShardSource, canonical_areas, load_detections
from clipprobe.data.tars import expand_urls, is_local
from clipprobe.data.vocab import VOCABULARIES, load_vocab
from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_json, atomic_write_text, check_not_input, check_output_dir, staged_dir

FAIL_FAST = 1000  # this many samples without a caption, and none with one: stop (the caption key is wrong)


def corpus(
    shards: str | None = None,
    coco_captions: str | None = None,
    coco_instances: str | None = None,
    detections: str | None = None,
    vocab: str = "coco",
    synonyms: str = "coco",
    extractor: str | None = None,
    caption_key: str = "txt",
    max_samples: int | None = None,
    out: str = "corpus_stats",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Mention order against object area in a caption corpus (writes stats.json, stats.md, plots/).

    For each caption, the vocabulary objects it mentions that the annotation gives an area, in mention
    order; per number of objects n: the histogram of the largest object's mention position,
    P(largest first) with a Wilson 95% interval against 1/n, and Kendall's tau between mention order
    and area (+1: mentioned from the largest down).

    Args:
        shards: img2dataset tar shards: brace patterns joined by '::', or a folder; areas from each
            sample's key.json (clipprobe's corpus ground truth) unless --detections is given.
        coco_captions: a COCO captions JSON (instead of --shards); one sample per caption.
        coco_instances: the COCO instances JSON giving areas (summed per category per image).
        detections: a JSONL of {"key", "detections": [{"label", "box": [x0, y0, x1, y1], "area"}]}
            rows (e.g. GroundingDINO + SAM); its areas replace the source's.
        vocab: object vocabulary: 'coco', 'simco' or a file with one name a line. Annotation labels it
            lacks (COCO's 'sports ball', a detector's labels) join it.
        synonyms: synonym table: 'coco' (shipped), 'none', or a file of lines 'name: alias, alias'.
        extractor: 'pkg.module:function' called as f(caption, vocab) -> names in mention order,
            instead of the vocabulary matcher (e.g. a language model).
        caption_key: the caption's extension in the shards.
        max_samples: stop after this many samples (default: all).
        out: output folder.
        overwrite: replace a non-empty --out.
        progress: show a progress bar (on a terminal).
    """
    if (shards is None) == (coco_captions is None):
        raise UserError("give exactly one corpus: --shards PATTERN or --coco-captions FILE (with --coco-instances)")
    if coco_instances is not None and coco_captions is None:
        raise UserError("--coco-instances needs --coco-captions")
    if coco_captions is not None and coco_instances is None and detections is None:
        raise UserError("COCO captions have no areas alone; add --coco-instances FILE or --detections FILE")
    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    check_output_dir(out, overwrite)
    urls = expand_urls(shards) if shards else []
    inputs = [u.removeprefix("file:") for u in urls if is_local(u)] + [coco_captions, coco_instances, detections]
    inputs += [vocab if vocab not in VOCABULARIES else None, synonyms if synonyms not in SYNONYM_TABLES else None]
    check_not_input(out, [p for p in inputs if p])

    source: ShardSource | CocoSource
    source = ShardSource(urls, caption_key) if shards else CocoSource(coco_captions, coco_instances)  # type: ignore[arg-type]
    dets = load_detections(detections) if detections else None
    labels = list(getattr(source, "labels", [])) + sorted({label for a in (dets or {}).values() for label in a})
    matcher = build_matcher(vocab, synonyms, labels)
    extract = _user_extractor(extractor, matcher.vocab, matcher.canonical) if extractor else matcher.find

    stats = _tally(source, extract, matcher.canonical, dets, max_samples, progress)
    result = {
        "clipprobe_version": _version(),
        "config": {
            "shards": shards,
            "coco_captions": coco_captions,
            "coco_instances": coco_instances,
            "detections": detections,
            "vocab": vocab,
            "synonyms": synonyms,
            "extractor": extractor,
            "caption_key": caption_key,
            "max_samples": max_samples,
        },  # fmt: skip
        "shard_errors": getattr(source, "errors", []),
        **stats.summary(),
    }
    with staged_dir(out) as stage:
        atomic_write_json(stage / "stats.json", result)
        atomic_write_text(stage / "stats.md", render_markdown(result))
        write_plots(result, stage / "plots")
    return result


def _version() -> str:
    from clipprobe import __version__

    return __version__


def build_matcher(vocab: str, synonyms: str, labels: list[str]) -> Matcher:
    """The matcher for ``vocab`` and ``synonyms``; annotation ``labels`` (COCO categories, detection labels)
    that name no vocabulary object join the vocabulary, so every annotated object can be mentioned."""
    names = load_vocab(vocab)
    table = load_synonyms(synonyms)
    strict = synonyms not in SYNONYM_TABLES  # a user's file: conflicts are errors
    matcher = Matcher(names, table, strict=strict)
    extra = list(dict.fromkeys(c for c in map(matcher.canonical, labels) if c and c not in names))
    return Matcher(names + extra, table, strict=strict) if extra else matcher


def _user_extractor(spec: str, names: list[str], canon: Callable[[str], str]) -> Callable[[str], list[str]]:
    """A user's extractor, its output mapped to vocabulary names (``"dogs" -> "dog"``), each once."""
    fn = load_extractor(spec)

    def extract(caption: str) -> list[str]:
        found = fn(caption, names)
        if not isinstance(found, (list, tuple)):
            raise UserError(f"extractor {spec} returned {type(found).__name__}; it must return a list of names")
        return list(dict.fromkeys(canon(str(name)) for name in found))

    return extract


def _tally(
    source: Iterable[Sample],
    extract: Callable[[str], list[str]],
    canon: Callable[[str], str],
    detections: dict[str, dict[str, float | None]] | None,
    max_samples: int | None,
    progress: bool,
) -> CorpusStats:
    """Stream ``source`` through the extractor into a :class:`CorpusStats`."""
    from tqdm import tqdm

    total = min(filter(None, [len(source) or None, max_samples]), default=None)  # type: ignore[arg-type]
    stats = CorpusStats()
    samples = itertools.islice(source, max_samples)
    for sample in tqdm(samples, total=total, disable=None if progress else True, unit="caption", desc="analyze corpus"):
        if not (sample.caption or "").strip():
            stats.skip("no_caption")
            if stats.seen >= FAIL_FAST and stats.skipped["no_caption"] == stats.seen:
                raise UserError(f"the first {stats.seen} samples have no caption; check --caption-key")
            continue
        if detections is not None:
            areas = detections.get(sample.key)
        elif sample.bad_annotation:
            stats.skip("bad_annotation")
            continue
        else:
            areas = sample.areas
        stats.add(extract(sample.caption), canonical_areas(areas, canon) if areas is not None else None)  # type: ignore[arg-type]
    if stats.seen == 0:
        raise UserError("the corpus holds no samples; check --shards or --coco-captions")
    if stats.skipped["no_caption"] == stats.seen:
        raise UserError(f"none of the {stats.seen} samples has a caption; check --caption-key")
    return stats


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _interval(pair: list[float | None]) -> str:
    return f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def _row(label: str, row: dict[str, Any], shares: str) -> str:
    cells = [
        label, str(row["captions"]), f"{_fmt(row['largest_first'])} {_interval(row['largest_first_interval'])}",
        _fmt(row["baseline"]), f"{_fmt(row['excess'])} {_interval(row['excess_interval'])}",
        _fmt(row["kendall_tau_mean"]), _fmt(row["kendall_tau_pooled"]), shares,
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def render_markdown(result: dict[str, Any]) -> str:
    """The stats as a markdown page: one row per number of objects, then the skipped captions."""
    cfg = result["config"]
    corpus = cfg["shards"] or cfg["coco_captions"]
    areas = cfg["detections"] or cfg["coco_instances"] or "each sample's key.json"
    lines = [
        "# Mention order against object area",
        "",
        f"Corpus: `{corpus}`; areas from `{areas}`.",
        f"Captions seen: {result['captions_seen']}; used: {result['captions_used']}.",
        "",
        "| n | captions | P(largest first) [95%] | baseline | excess [95%] | tau (mean) | tau (pooled) | position shares |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, row in result["by_n"].items():
        lines.append(_row(n, row, " / ".join(_fmt(s, 2) for s in row["position_shares"])))
    if result["captions_used"]:
        lines.append(_row("all", result["overall"], ""))
    lines += [
        "",
        "Baseline: P(largest first) if mention order ignored size (1/n; for 'all', the mean 1/n).",
        "Excess: (P - baseline) / (1 - baseline); 0 = random order, 1 = always largest first, negative = avoided;",
        "it recovers p of the policy 'largest first with probability p, else random'.",
        "Kendall's tau between mention order and area: +1 = mentioned from the largest down.",
    ]
    if result["skipped"]:
        lines += ["", "Skipped captions:", ""]
        lines += [f"- {r}: {k} ({result['skip_reasons'][r]})" for r, k in result["skipped"].items()]
    obj = result["objects"]
    lines += [
        "",
        f"Objects mentioned but not annotated: {obj['mentioned_not_annotated']}; "
        f"annotated but not mentioned: {obj['annotated_not_mentioned']}.",
    ]
    if result["shard_errors"]:
        lines += ["", "Shards that broke off:", ""] + [f"- {e}" for e in result["shard_errors"]]
    return "\n".join(lines) + "\n"


def write_plots(result: dict[str, Any], folder: Path) -> None:
    """``position_hist_n{n}.png``: share of captions by the largest object's mention position, with
    Wilson 95% error bars and the ``1/n`` line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipprobe.probes.stats import wilson

    folder.mkdir(parents=True, exist_ok=True)
    for n, row in result["by_n"].items():
        counts, total = row["position_counts"], row["captions"]
        shares = row["position_shares"]
        bounds = [wilson(k, total) for k in counts]
        err = [
            [s - lo for s, (lo, _) in zip(shares, bounds, strict=True)],
            [hi - s for s, (_, hi) in zip(shares, bounds, strict=True)],
        ]
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        positions = list(range(1, len(counts) + 1))
        ax.bar(positions, shares, yerr=err, capsize=3, color="#4c72b0")
        ax.axhline(1 / int(n), color="grey", linestyle="--", label=f"1/n = {1 / int(n):.2f}")
        ax.set(xticks=positions, ylim=(0, 1.05), xlabel="mention position of the largest object", ylabel="share")
        ax.set_title(f"n = {n} objects ({total} captions)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / f"position_hist_n{n}.png", metadata={"Software": None})
        plt.close(fig)
