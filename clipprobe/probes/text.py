"""Text probes (PROBES.md, section 2): ``tor``, ``mitigation``, ``size_claim`` and ``toc``.

TOR compares each caption's embedding with the embedding of every vocabulary name (the bare names,
as in the study) and tallies, per number of objects n, which position the nearest name holds. A
caption is a *hit* when its n nearest names are exactly its objects (``hits: exact``, the default) or,
as the study's script counts, when each of them is a substring of the caption (``hits: substring``).
On COCO (:mod:`clipprobe.data.coco`) ``tor`` is the study's COCO-TOR: COCO's own captions that name 2-5
vocabulary objects, the objects in mention order, instead of generated ones.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch

from clipprobe.data.vocab import study_vocab
from clipprobe.errors import UserError
from clipprobe.probes.base import Encoder, ProbeContext, ProbeResult, register
from clipprobe.probes.captions import Caption, make_captions, render
from clipprobe.probes.common import (
    encode_unique,
    linear_probe,
    parse_options,
    probe_options,
    resolve_counts,
    resolve_vocab,
    split_embeddings,
)
from clipprobe.probes.stats import put_position_shares, put_share
from clipprobe.probes.tallies import (
    ONE_PROCESS,
    POSITION_COUNTS,
    PositionShareTally,
    Shard,
    substring_hits,
    tally_counts,
)

Aggregate = Literal["plain", "split"]
HitTest = Literal["exact", "substring"]
K = TypeVar("K", bound=Hashable)
_CHUNK = 8192  # captions per similarity block: [chunk, V] floats


@probe_options("tor")
@dataclass
class TorOptions:
    """Options of ``tor``.

    Attributes:
        mode: ``balanced`` (random subsets in random orders) or ``paper`` (the study's combinations).
        template: ``bare``, ``article``, ``a`` or ``long`` (see :mod:`clipprobe.probes.captions`).
        n: object counts (default: the probe set's, else 2,3,4).
        max_captions: paper mode's cap per n (seeded, order-keeping subsample); None or 0 = all.
        num_captions: balanced mode's captions per n.
        orders: balanced mode's ``random`` (one order per subset) or ``all`` (n! orders).
        hits: what makes a caption a hit, the denominator of ``share_k``: ``exact`` (its n nearest names
            are exactly its objects) or ``substring`` (each of its n nearest names is a substring of the
            caption's text, as the study's script tests ``name in caption``: "bench and hot dog" retrieving
            {hot dog, dog} is a hit). With ``substring`` a hit's nearest name need not be one of its objects
            ("dog"), so the ``share_k`` of a row may sum below 1; they are not renormalised. Only
            ``hit_rate`` and ``share_k`` depend on it; ``share_k_all``, ``closest_k`` and ``bias_index`` do not.
        seed: caption sampling seed (default: the run's seed).
    """

    mode: Literal["paper", "balanced"] = "balanced"
    template: Literal["bare", "article", "a", "long"] = "bare"
    n: list[int] | None = None
    max_captions: int | None = 20_000
    num_captions: int = 2_000
    orders: Literal["random", "all"] = "random"
    hits: HitTest = "exact"
    seed: int | None = None

    def __post_init__(self) -> None:
        from clipprobe.probes.common import check_option  # fewer than 1 would silently run 1 caption per n

        check_option(self, "num_captions", self.num_captions >= 1, "at least 1")
        check_option(self, "n", self.n is None or all(k >= 2 for k in self.n), "object counts of at least 2")


def tor_vocab(ctx: ProbeContext, opts: TorOptions) -> tuple[list[str], list[str]]:
    """TOR's reference names and a note on them. Paper mode without a vocabulary given (``--vocab``) uses
    the study's (:func:`~clipprobe.data.vocab.study_vocab`: the 90 COCO names in the study's order, SimCO's
    18 shapes for a SimCO set), not the probe set's own: the study's caption set is the combinations of its
    vocabulary in its order, and a set's names may be fewer or otherwise ordered (the published layout's are
    those found in its folders, alphabetical). Balanced mode uses :func:`resolve_vocab` (the set's own)."""
    own = resolve_vocab(ctx)
    if opts.mode != "paper" or ctx.vocab:
        return own, []
    study = study_vocab(ctx.probe_set.kind if ctx.probe_set is not None else None)
    if ctx.probe_set is None or own == study:
        return study, []
    return study, [f"paper mode: the study's {len(study)} names in its order, not the probe set's {len(own)} "
                   "(give a vocabulary to choose another)"]  # fmt: skip


def _captions(opts: TorOptions, vocab: list[str], counts: list[int], seed: int) -> dict[int, list[Caption]]:
    return {
        n: make_captions(
            vocab,
            n,
            opts.mode,
            opts.template,
            max_captions=opts.max_captions,
            num_captions=opts.num_captions,
            orders=opts.orders,
            seed=seed,
        )
        for n in counts
    }


def tor_texts(
    references: Sequence[str], captions: Mapping[K, list[Caption]], template: str, aggregates: Sequence[Aggregate]
) -> list[str]:
    """Every text :func:`tor_counts` needs: the reference names, the captions (``plain``) and each
    name rendered alone (``split``)."""
    texts = list(references)
    if "plain" in aggregates:
        texts += [c.text for caps in captions.values() for c in caps]
    if "split" in aggregates:
        texts += [render(template, [name]) for name in references]
    return texts


def tor_counts(
    emb: torch.Tensor,
    row: Mapping[str, int],
    references: Sequence[str],
    captions: Mapping[K, list[Caption]],
    template: str,
    aggregates: Sequence[Aggregate] = ("plain",),
    shard: Shard = ONE_PROCESS,
    hits: HitTest = "exact",
) -> dict[str, dict[K, dict[str, torch.Tensor]]]:
    """Position-share counts of captions against reference names, per aggregate and caption group
    (the keys of ``captions``, e.g. n), from text embeddings ``emb`` (``row[text]`` = its row); each
    rank of ``shard`` tallies its share of the captions and the counts are summed over ranks.

    ``plain`` embeds each caption whole; ``split`` embeds each object alone (rendered with the same
    template) and takes the normalised sum. ``hits`` is the hit test (:class:`TorOptions`); ``substring``
    tests the caption's text under either aggregate.
    """
    ref_index = {name: i for i, name in enumerate(references)}
    names = emb[[row[r] for r in references]]  # [V, D]
    single = emb[[row[render(template, [name])] for name in references]] if "split" in aggregates else None
    out: dict[str, dict[K, dict[str, torch.Tensor]]] = {}
    for agg in aggregates:
        out[agg] = {}
        for key, caps in captions.items():
            tally = shard.tally(PositionShareTally, len(caps[0].objects) if caps else 1)
            mine = caps[shard.rows(len(caps)).start : shard.rows(len(caps)).stop]  # this rank's captions
            for lo in range(0, len(mine), _CHUNK):
                chunk = mine[lo : lo + _CHUNK]
                objects = torch.tensor([[ref_index[o] for o in c.objects] for c in chunk], dtype=torch.long)
                if agg == "plain":
                    cap_emb = emb[[row[c.text] for c in chunk]]
                else:
                    cap_emb = split_embeddings(single, objects)
                sims = cap_emb @ names.T
                hit = None
                if hits == "substring":
                    hit = substring_hits(sims, objects.shape[1], [c.text for c in chunk], references)
                tally.update(sims, objects, hit)
            out[agg][key] = tally_counts(tally, POSITION_COUNTS)
    return out


def tor_tallies(
    encoder: Encoder,
    references: Sequence[str],
    captions: Mapping[K, list[Caption]],
    template: str,
    aggregates: Sequence[Aggregate] = ("plain",),
    hits: HitTest = "exact",
) -> dict[str, dict[K, dict[str, torch.Tensor]]]:
    """:func:`tor_counts` after encoding every needed text in one call."""
    emb, row = encode_unique(encoder.encode_texts, tor_texts(references, captions, template, aggregates))
    return tor_counts(emb, row, references, captions, template, aggregates, Shard.of(encoder), hits)


def _config(opts: object, **extra: object) -> dict[str, object]:
    return {**dataclasses.asdict(opts), **extra}  # type: ignore[call-overload]


def _paper_notes(opts: TorOptions, vocab: list[str], captions: dict[int, list[Caption]]) -> list[str]:
    notes = []
    for n, caps in captions.items():
        total = math.comb(len(vocab), n)
        if opts.mode == "paper" and len(caps) < total:
            notes.append(f"n{n}: {len(caps)} of {total} combinations (seeded subsample; max_captions=0 for all)")
    return notes


# Version 2: the hits option; paper mode on the study's vocabulary unless one is given (was the probe set's).
@register("tor", needs_probe_set=False, version=2,
          summary="Text-based object retrieval: which named object a caption is nearest.")  # fmt: skip
def tor(ctx: ProbeContext) -> ProbeResult:
    """TOR: for each caption naming n objects, the n nearest vocabulary names (a hit when they are the
    caption's objects, or with ``hits: substring`` when each is a substring of the caption) and the nearest
    one's position; keys ``n{n}/hit_rate``, ``n{n}/share_k``, ``n{n}/share_k_all``, ``n{n}/closest_k``,
    ``n{n}/bias_index``."""
    opts = parse_options(TorOptions, ctx.options, "tor")
    if ctx.probe_set is not None and ctx.probe_set.captions:
        return _real_tor(ctx, opts)
    seed = ctx.seed if opts.seed is None else opts.seed
    vocab, vocab_notes = tor_vocab(ctx, opts)
    counts = resolve_counts(ctx, opts.n)
    captions = _captions(opts, vocab, counts, seed)
    tallies = tor_tallies(ctx.encoder, vocab, captions, opts.template, hits=opts.hits)
    result = ProbeResult("tor", config=_config(opts, seed=seed, n=counts, vocab=vocab))
    for n in counts:
        put_position_shares(result, tallies["plain"][n])
    result.notes += vocab_notes + _paper_notes(opts, vocab, captions)
    return result


def real_captions(ctx: ProbeContext, counts: Sequence[int] | None) -> dict[int, list[Caption]]:
    """A real data set's captions (COCO's) by number of objects named: ``counts``, else every n they hold.

    Raises:
        UserError: a caption names an object outside the vocabulary in use (the set was read with another).
    """
    ps = ctx.probe_set
    assert ps is not None
    vocab = set(resolve_vocab(ctx))
    stray = next((o for objects, _ in ps.captions for o in objects if o not in vocab), None)
    if stray is not None:
        raise UserError(f"tor: {ps.name}'s captions name '{stray}', not in the vocabulary; read the set with the "
                        "vocabulary the probes use")  # fmt: skip
    ns = sorted(set(counts)) if counts else sorted({len(objects) for objects, _ in ps.captions})
    return {n: [Caption(o, text) for o, text in ps.captions if len(o) == n] for n in ns}


def _real_tor(ctx: ProbeContext, opts: TorOptions) -> ProbeResult:
    """COCO-TOR: TOR over a real data set's captions; the options that make captions (mode, template,
    max_captions, num_captions, orders, seed) do not apply."""
    ps = ctx.probe_set
    assert ps is not None
    vocab = resolve_vocab(ctx)
    captions = real_captions(ctx, opts.n)
    empty = [n for n, caps in captions.items() if not caps]
    captions = {n: caps for n, caps in captions.items() if caps}
    tallies = tor_tallies(ctx.encoder, vocab, captions, "bare", hits=opts.hits)
    result = ProbeResult("tor", config={"captions": ps.kind, "hits": opts.hits, "n": list(captions), "vocab": vocab,
                                        "num_captions": {str(n): len(c) for n, c in captions.items()}})  # fmt: skip
    for n in captions:
        put_position_shares(result, tallies["plain"][n])
    result.notes.append(f"{ps.name}'s own captions naming n objects, in mention order (mode, template and the "
                        "caption counts do not apply)")  # fmt: skip
    result.notes += [f"n{n}: no caption names {n} objects" for n in empty]
    return result


@probe_options("mitigation")
@dataclass
class MitigationOptions(TorOptions):
    """Options of ``mitigation``: those of ``tor``, plus whether to rerun ``itm`` (needs a probe set)
    and its number of absent objects per scene (0 = all)."""

    itm: bool = True
    absent: int = 10


@register(
    "mitigation",
    needs_probe_set=False,
    version=2,  # 2: the hits option; paper-mode TOR on the study's vocabulary unless one is given
    summary="Split and aggregate: TOR (and ITM with a probe set) with order-invariant caption embeddings.",
)
def mitigation(ctx: ProbeContext) -> ProbeResult:
    """Split and aggregate beside the plain result: TOR keys under ``plain/`` and ``split/``
    (``split/n4/share_1``), and with a probe set ITM's under the same prefixes (``split/n3/scenario2``)."""
    from clipprobe.probes import matching

    opts = parse_options(MitigationOptions, ctx.options, "mitigation")
    seed = ctx.seed if opts.seed is None else opts.seed
    vocab, vocab_notes = tor_vocab(ctx, opts)
    counts = resolve_counts(ctx, opts.n)
    captions = _captions(opts, vocab, counts, seed)
    aggs: tuple[Aggregate, ...] = ("plain", "split")
    run_itm = opts.itm and ctx.probe_set is not None
    # ITM draws its absent objects from the vocabulary the itm probe uses (the set's own), whatever TOR's mode.
    plan = matching.plan_itm(ctx.probe_set, resolve_vocab(ctx), opts.absent, seed) if run_itm else None
    texts = tor_texts(vocab, captions, opts.template, aggs)
    texts += matching.itm_texts(plan, opts.template, aggs) if plan else []
    emb, row = encode_unique(ctx.encoder.encode_texts, texts)  # one call for TOR and ITM
    tallies = tor_counts(emb, row, vocab, captions, opts.template, aggs, Shard.of(ctx.encoder), opts.hits)
    result = ProbeResult("mitigation", config=_config(opts, seed=seed, n=counts, vocab=vocab))
    for agg in aggs:
        for n in counts:
            put_position_shares(result, tallies[agg][n], variant=agg)
    if plan is not None:
        itm = matching.itm_counts(ctx.encoder, plan, emb, row, opts.template, aggs)
        for agg in aggs:
            matching.put_itm(result, itm[agg], variant=agg)
    elif opts.itm:
        result.notes.append("itm skipped: no probe set given")
    result.notes += vocab_notes + _paper_notes(opts, vocab, captions)
    return result


# Physical size groups from the COCO vocabulary (the study's claim 1 used its own longer lists).
LARGE_OBJECTS = ["airplane", "bus", "train", "truck", "boat", "elephant", "giraffe", "bed", "refrigerator", "couch",
                 "horse", "cow", "bear", "dining table"]  # fmt: skip
MEDIUM_OBJECTS = ["chair", "bicycle", "dog", "sheep", "suitcase", "tv", "bench", "fire hydrant", "toilet", "sink",
                  "umbrella", "potted plant"]  # fmt: skip
SMALL_OBJECTS = ["fork", "spoon", "knife", "toothbrush", "cell phone", "scissors", "remote", "mouse", "cup", "apple",
                 "banana", "donut", "orange", "wine glass"]  # fmt: skip


@probe_options("size_claim")
@dataclass
class SizeClaimOptions:
    """Options of ``size_claim``.

    Attributes:
        large, medium, small: the three name lists (defaults from COCO names).
        n: object counts (default 2,3,4).
        num_captions: captions per group and n; first objects cycle through the group's list.
        design: ``medium`` (first object, then n-1 medium ones) or ``swap`` (the study's script:
            first object, n-2 medium ones, and an object of the other group last).
        template: caption template.
        seed: sampling seed (default: the run's seed).
    """

    large: list[str] = field(default_factory=lambda: list(LARGE_OBJECTS))
    medium: list[str] = field(default_factory=lambda: list(MEDIUM_OBJECTS))
    small: list[str] = field(default_factory=lambda: list(SMALL_OBJECTS))
    n: list[int] = field(default_factory=lambda: [2, 3, 4])
    num_captions: int = 1_000
    design: Literal["medium", "swap"] = "medium"
    template: Literal["bare", "article", "a", "long"] = "bare"
    seed: int | None = None

    def __post_init__(self) -> None:
        from clipprobe.probes.common import check_option  # checked before any model is built

        check_option(self, "num_captions", self.num_captions >= 1, "at least 1")
        check_option(self, "n", bool(self.n) and all(k >= 2 for k in self.n), "object counts of at least 2")


def size_claim_captions(opts: SizeClaimOptions, group: str, n: int, seed: int) -> list[Caption]:
    """Captions whose first object comes from ``group`` (``large`` or ``small``)."""
    first_list = opts.large if group == "large" else opts.small
    other = opts.small if group == "large" else opts.large
    n_medium = n - 1 if opts.design == "medium" else n - 2
    if n_medium > len(opts.medium):
        raise UserError(f"size_claim needs {n_medium} medium names for n={n}, has {len(opts.medium)}")
    rng = random.Random(f"clipprobe:{seed}:size_claim:{group}:{n}")
    caps = []
    for i in range(opts.num_captions):
        objs = [first_list[i % len(first_list)], *rng.sample(opts.medium, n_medium)]
        if opts.design == "swap":
            objs.append(rng.choice(other))
        caps.append(Caption(tuple(objs), render(opts.template, objs)))
    return caps


@register("size_claim", needs_probe_set=False, summary="TOR first share for captions led by a large vs a small object.")
def size_claim(ctx: ProbeContext) -> ProbeResult:
    """The study's claim 1: the first-mention share is higher when the first object is physically
    large. Keys ``large/n{n}/share_1``, ``small/n{n}/share_1`` (and the other TOR keys under those
    prefixes); references are the three lists' names (as in the study's script)."""
    opts = parse_options(SizeClaimOptions, ctx.options, "size_claim")
    seed = ctx.seed if opts.seed is None else opts.seed
    lists = {"large": opts.large, "medium": opts.medium, "small": opts.small}
    if any(not names for names in lists.values()):
        raise UserError("size_claim needs non-empty large, medium and small name lists")
    references = list(dict.fromkeys(opts.large + opts.medium + opts.small))
    if len(references) < sum(map(len, lists.values())):
        raise UserError("size_claim's large, medium and small lists overlap; give each name one group")
    captions = {
        (group, n): size_claim_captions(opts, group, n, seed)
        for group in ("large", "small")
        for n in resolve_counts(ctx, opts.n)
    }
    tallies = tor_tallies(ctx.encoder, references, captions, opts.template)
    result = ProbeResult("size_claim", config=_config(opts, seed=seed))
    for (group, _n), counts in tallies["plain"].items():
        put_position_shares(result, counts, variant=group)
    return result


@probe_options("toc")
@dataclass
class TocOptions:
    """Options of ``toc`` (defaults: the study's; reduce ``per_label`` and ``epochs`` for speed).

    Attributes:
        n: objects per sentence.
        positions: target positions to classify (default 1..n).
        per_label: sentences per label and position (study: 2,000, i.e. 180,000 for 90 names).
        template: sentence template (study: ``a`` = "a A and a B and a C and a D").
        split: train / validation / test fractions (study: 0.75, 0.10, 0.15; validation is held out
            and unused, so the test set matches the study's).
        lr, batch_size, epochs: Adam training of the linear head (study: 1e-3, 32, 10, as its TOC script
            trains it on the frozen sentence embeddings; its batch 32 is the training batch).
        seed: sentence sampling, split and training seed (study: 42).
    """

    n: int = 4
    positions: list[int] | None = None
    per_label: int = 2_000
    template: Literal["bare", "article", "a", "long"] = "a"
    split: list[float] = field(default_factory=lambda: [0.75, 0.10, 0.15])
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        from clipprobe.probes.common import check_option  # out of range: silently no sentences or an untrained head

        for name in ("batch_size", "epochs", "per_label"):
            check_option(self, name, getattr(self, name) >= 1, "at least 1")
        check_option(self, "lr", self.lr > 0, "greater than 0")
        check_option(self, "n", self.n >= 2, "at least 2")
        check_option(self, "positions", all(1 <= k <= self.n for k in self.positions or []), f"within 1..n={self.n}")
        check_option(self, "split", len(self.split) == 3 and all(f >= 0 for f in self.split) and 0 < self.split[0]
                     and 0 < self.split[2] and sum(self.split) <= 1 + 1e-9, "three fractions (train, val, test), "
                     "train and test above 0, summing to at most 1")  # fmt: skip


def toc_sentences(vocab: Sequence[str], n: int, k: int, per_label: int, seed: int) -> list[tuple[int, tuple[str, ...]]]:
    """``(label, objects)`` pairs: for each vocabulary name (the label), up to ``per_label`` distinct
    object sequences with that name at position ``k`` (1-based) and n-1 other random names."""
    rng = random.Random(f"clipprobe:{seed}:toc:{n}:{k}")
    out: list[tuple[int, tuple[str, ...]]] = []
    for label, name in enumerate(vocab):
        others = [v for v in vocab if v != name]
        want = min(per_label, math.perm(len(others), n - 1))
        seen: dict[tuple[str, ...], None] = {}
        while len(seen) < want:
            rest = rng.sample(others, n - 1)
            seen[(*rest[: k - 1], name, *rest[k - 1 :])] = None
        out += [(label, objs) for objs in seen]
    return out


def _split_sizes(total: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split must be three fractions summing to 1 (train,val,test), got {list(fractions)}")
    val, test = int(total * fractions[1]), int(total * fractions[2])
    return total - val - test, val, test


@register("toc", needs_probe_set=False, summary="Text-based object classification: linear probe per position.")
def toc(ctx: ProbeContext) -> ProbeResult:
    """TOC: for each position k, a linear classifier on frozen, normalised sentence embeddings
    predicts the object named at k; key ``n{n}/acc_k`` = held-out (test) accuracy."""
    opts = parse_options(TocOptions, ctx.options, "toc")
    vocab = resolve_vocab(ctx)
    positions = opts.positions or list(range(1, opts.n + 1))
    if opts.n < 2 or opts.n > len(vocab) or any(not 1 <= k <= opts.n for k in positions):
        raise UserError(f"toc needs 2 <= n <= {len(vocab)} and positions within 1..n, got n={opts.n}, {positions}")
    data = {k: toc_sentences(vocab, opts.n, k, opts.per_label, opts.seed) for k in positions}
    texts = {objs: render(opts.template, objs) for pairs in data.values() for _, objs in pairs}
    emb, row = encode_unique(ctx.encoder.encode_texts, texts.values())
    result = ProbeResult("toc", config=_config(opts, positions=positions, vocab=vocab))
    result.notes.append(f"chance accuracy 1/{len(vocab)} = {1 / len(vocab):.4f}")
    for k, pairs in data.items():
        x = emb[[row[texts[objs]] for _, objs in pairs]]
        y = torch.tensor([label for label, _ in pairs], dtype=torch.long)
        n_train, _, n_test = _split_sizes(len(pairs), opts.split)
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(opts.seed))
        train, test = order[:n_train], order[len(pairs) - n_test :]
        preds = linear_probe(
            x[train], y[train], x[test], len(vocab), lr=opts.lr, batch_size=opts.batch_size, epochs=opts.epochs,
            seed=opts.seed, progress=ctx.progress, desc=f"toc position {k}",
        )  # fmt: skip
        put_share(result, f"n{opts.n}/acc_{k}", int((preds == y[test]).sum()), n_test, family="accuracy", n=opts.n,
                  key=str(k), chance=1 / len(vocab))  # fmt: skip
    return result
