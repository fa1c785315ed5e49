"""Image-text matching (PROBES.md, section 4): ``itm``.

For each scene with a large object L (objects in slot order), following the study's script:

- **scenario 1**: right caption = the objects with L swapped into first place; each wrong caption
  replaces that first object (L) by an absent object.
- **scenario 2**: right caption = the objects with L swapped into last place; each wrong caption
  has L swapped into first place and its last object replaced by an absent object.
- **order preference**: L-first caption versus L-last caption (the two right captions): share of
  scenes where L-first scores strictly higher, among scenes where they differ.

Accuracy is the share of (image, right, wrong) triples where the right caption scores strictly
higher. Absent objects are vocabulary names not in the scene, ``absent`` of them per scene drawn
with a seeded generator (0 = all, as in the study).

Each measure is reported pooled over the scenes of n objects (``n{n}/scenario1``) and, as the study
reports it, per folder: per slot j of the large object (``n{n}/large{j}/scenario1``, variant
``large{j}``, j 1-based as in ioc).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from clipprobe.data.probeset import ProbeSet, Scene
from clipprobe.errors import UserError
from clipprobe.probes.base import Encoder, ProbeContext, ProbeResult, register
from clipprobe.probes.captions import render
from clipprobe.probes.common import encode_unique, parse_options, probe_options, resolve_vocab, split_embeddings
from clipprobe.probes.stats import put_share
from clipprobe.probes.tallies import PREFERENCE_COUNTS, PreferenceTally, Shard, tally_counts

Objects = tuple[str, ...]
Counts = dict[str, torch.Tensor]  # preference counts: wins, ties, total
SCENARIOS = ("scenario1", "scenario2", "order")


class ScenarioCounts(dict[str, Counts]):
    """The preference counts of the scenes of one n, per scenario (``scenario1``, ``scenario2``,
    ``order``), pooled over the large slots; ``by_large[j]`` holds the same for the scenes whose large
    object is in slot j (0-based), when :func:`itm_counts` was asked for them (else it is empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_large: dict[int, dict[str, Counts]] = {}


@probe_options("itm")
@dataclass
class ItmOptions:
    """Options of ``itm``.

    Attributes:
        template: caption template (study: ``bare``, "A and B and C").
        absent: absent objects per scene, i.e. wrong captions per scene and scenario (0 = all).
        seed: absent-object sampling seed (default: the run's seed).
    """

    template: Literal["bare", "article", "a", "long"] = "bare"
    absent: int = 10
    seed: int | None = None


def _swap(objs: Objects, i: int, j: int) -> list[str]:
    out = list(objs)
    out[i], out[j] = out[j], out[i]
    return out


def scene_triples(scene: Scene, absent: Sequence[str]) -> dict[str, list[tuple[Objects, Objects]]]:
    """(right, wrong) object lists of one scene per scenario; ``order`` holds (L first, L last)."""
    objs, big, last = scene.names, scene.large_slot, scene.n - 1
    assert big is not None
    first = _swap(objs, big, 0)
    at_end = _swap(objs, big, last)
    return {
        "scenario1": [(tuple(first), (x, *first[1:])) for x in absent],
        "scenario2": [(tuple(at_end), (*first[:-1], x)) for x in absent],
        "order": [(tuple(first), tuple(at_end))],
    }


def _absent(scene: Scene, vocab: Sequence[str], count: int, rng: random.Random) -> list[str]:
    pool = [v for v in vocab if v not in scene.names]
    return pool if not count or count >= len(pool) else rng.sample(pool, count)


@dataclass
class ItmPlan:
    """The scenes ITM uses (those with a large object), their triples, and every object named."""

    probe_set: ProbeSet
    scenes: list[Scene]
    triples: list[dict[str, list[tuple[Objects, Objects]]]]
    names: list[str]


def plan_itm(probe_set: ProbeSet, vocab: Sequence[str], absent: int = 10, seed: int = 0) -> ItmPlan:
    """Triples for every scene with a large object; absent objects drawn from ``vocab`` with a
    generator seeded by ``seed`` (scenes in probe-set order)."""
    scenes = [s for s in probe_set.scenes if s.large_slot is not None]
    rng = random.Random(f"clipprobe:{seed}:itm")
    triples = [scene_triples(s, _absent(s, vocab, absent, rng)) for s in scenes]
    names = sorted({o for t in triples for pairs in t.values() for pair in pairs for c in pair for o in c})
    return ItmPlan(probe_set, scenes, triples, names)


def itm_texts(plan: ItmPlan, template: str, aggregates: Sequence[str]) -> list[str]:
    """Every caption text :func:`itm_counts` needs (whole captions for ``plain``, names alone for ``split``)."""
    texts = []
    if "plain" in aggregates:
        texts += [render(template, c) for t in plan.triples for pairs in t.values() for pair in pairs for c in pair]
    if "split" in aggregates:
        texts += [render(template, [name]) for name in plan.names]
    return texts


def _caption_embeddings(
    captions: list[Objects], agg: str, emb: torch.Tensor, row: Mapping[str, int], template: str, names: list[str]
) -> torch.Tensor:
    if agg == "plain":
        return emb[[row[render(template, c)] for c in captions]]
    index = {name: i for i, name in enumerate(names)}
    single = emb[[row[render(template, [name])] for name in names]]
    return split_embeddings(single, torch.tensor([[index[o] for o in c] for c in captions], dtype=torch.long))


def itm_counts(
    encoder: Encoder,
    plan: ItmPlan,
    emb: torch.Tensor,
    row: Mapping[str, int],
    template: str = "bare",
    aggregates: Sequence[str] = ("plain",),
    by_large: bool = False,
) -> dict[str, dict[int, ScenarioCounts]]:
    """Preference counts ``[agg][n][scenario]`` (:func:`clipprobe.probes.tallies.preference_update`) from
    caption embeddings ``emb`` (``row[text]``); the scene images are encoded here, once each. With
    ``by_large``, also per slot of the large object (``[agg][n].by_large[j][scenario]``): one tally per
    slot over the same pairs, so the slots' counts add up to the pooled ones. Each rank tallies its
    share of the pairs and every tally sums over ranks; the slots come from the whole plan, so every
    rank makes the same tallies in the same order."""
    shard = Shard.of(encoder)
    paths = [str(plan.probe_set.path(s)) for s in plan.scenes]
    images, image_row = encode_unique(encoder.encode_images, paths)
    out: dict[str, dict[int, ScenarioCounts]] = {agg: {} for agg in aggregates}
    for n in sorted({s.n for s in plan.scenes}):  # per n: split embeddings stack n objects a caption
        slots = sorted({s.large_slot for s in plan.scenes if s.n == n and s.large_slot is not None})
        for scenario in SCENARIOS:
            pairs = [(s, p) for s, t in zip(plan.scenes, plan.triples, strict=True) if s.n == n for p in t[scenario]]
            if not pairs:
                continue
            pairs = [pairs[i] for i in shard.rows(len(pairs))]  # this rank's pairs; counts summed over ranks
            img = images[[image_row[str(plan.probe_set.path(s))] for s, _ in pairs]]  # [P, D]
            large = torch.tensor([s.large_slot for s, _ in pairs], dtype=torch.long)  # [P]
            for agg in aggregates:
                tally = shard.tally(PreferenceTally)
                groups = {j: shard.tally(PreferenceTally) for j in (slots if by_large else ())}
                if pairs:
                    right = _caption_embeddings([p[0] for _, p in pairs], agg, emb, row, template, plan.names)
                    wrong = _caption_embeddings([p[1] for _, p in pairs], agg, emb, row, template, plan.names)
                    right_score, wrong_score = (img * right).sum(-1), (img * wrong).sum(-1)
                    tally.update(right_score, wrong_score)
                    for j, group in groups.items():
                        mine = large == j
                        group.update(right_score[mine], wrong_score[mine])
                per = out[agg].setdefault(n, ScenarioCounts())
                per[scenario] = tally_counts(tally, PREFERENCE_COUNTS)
                for j, group in groups.items():
                    per.by_large.setdefault(j, {})[scenario] = tally_counts(group, PREFERENCE_COUNTS)
    return out


def itm_tallies(
    encoder: Encoder,
    probe_set: ProbeSet,
    vocab: Sequence[str],
    template: str = "bare",
    absent: int = 10,
    seed: int = 0,
    aggregates: Sequence[str] = ("plain",),
    by_large: bool = False,
) -> dict[str, dict[int, ScenarioCounts]]:
    """Plan, encode every caption in one call, and count (:func:`itm_counts`)."""
    plan = plan_itm(probe_set, vocab, absent, seed)
    emb, row = encode_unique(encoder.encode_texts, itm_texts(plan, template, aggregates))
    return itm_counts(encoder, plan, emb, row, template, aggregates, by_large)


def _put_scenarios(result: ProbeResult, prefix: str, n: int, per: Mapping[str, Counts], variant: str | None) -> None:
    for scenario in ("scenario1", "scenario2"):
        if scenario in per:  # absent when the vocabulary has no name missing from the scenes
            c = per[scenario]
            put_share(result, f"{prefix}{scenario}", int(c["wins"]), int(c["total"]), family="accuracy", n=n,
                      key=scenario, variant=variant, chance=0.5)  # fmt: skip
    c = per["order"]
    put_share(result, f"{prefix}order_pref", int(c["wins"]), int(c["total"] - c["ties"]), family="preference", n=n,
              variant=variant, chance=0.5)  # fmt: skip
    put_share(result, f"{prefix}order_ties", int(c["ties"]), int(c["total"]), family="tie_rate", n=n,
              variant=variant)  # fmt: skip


def put_itm(result: ProbeResult, tallies: Mapping[int, ScenarioCounts], variant: str | None = None) -> None:
    """Names ``[{variant}/]n{n}/scenario1``, ``/scenario2`` (family ``accuracy``, key the scenario; ties
    lose), ``/order_pref`` (family ``preference``: L first wins, among scenes where the two orders score
    differently) and ``/order_ties`` (family ``tie_rate``), pooled over the large slots; then, where the
    counts hold them per slot j of the large object (:func:`itm_counts`' ``by_large``), the same names as
    ``n{n}/large{j}/...`` with variant ``large{j}`` (j 1-based, the study's per-folder numbers).

    Raises:
        ValueError: per-slot counts with a ``variant``: the entries have one variant, the slot's.
    """
    prefix = f"{variant}/" if variant else ""
    for n, per in sorted(tallies.items()):
        _put_scenarios(result, f"{prefix}n{n}/", n, per, variant)
        if per.by_large and variant:
            raise ValueError(f"itm per large slot under variant {variant!r}: entries have one variant, the slot's")
        for j, counts in sorted(per.by_large.items()):
            _put_scenarios(result, f"n{n}/large{j + 1}/", n, counts, f"large{j + 1}")


@register("itm", needs_probe_set=True, version=2,  # 2: entries per slot of the large object beside the pooled ones
          summary="Image-text matching: large object first vs last, absent-object foils.")  # fmt: skip
def itm(ctx: ProbeContext) -> ProbeResult:
    """ITM on scenes with a large object; keys ``n{n}/scenario1``, ``n{n}/scenario2``,
    ``n{n}/order_pref``, ``n{n}/order_ties`` pooled over the large slots, and the same per slot j of the
    large object (the study's folders): ``n{n}/large{j}/scenario1``, ... (variant ``large{j}``)."""
    opts = parse_options(ItmOptions, ctx.options, "itm")
    if ctx.probe_set is None:
        raise UserError("probe itm needs a probe set; pass --probe-set DIR")
    seed = ctx.seed if opts.seed is None else opts.seed
    vocab = resolve_vocab(ctx)
    tallies = itm_tallies(ctx.encoder, ctx.probe_set, vocab, opts.template, opts.absent, seed, by_large=True)
    result = ProbeResult("itm", config={**asdict(opts), "seed": seed})
    put_itm(result, tallies["plain"])
    skipped = sum(s.large_slot is None for s in ctx.probe_set.scenes)
    if skipped:
        result.notes.append(f"{skipped} scenes without a large object (equal size or unknown roles) not used")
    if not tallies["plain"]:
        result.notes.append("skipped: no scene with a large object")
    return result
