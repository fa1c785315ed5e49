"""Image probes (PROBES.md, section 3): ``ior``, ``i2tor``, ``ioc`` and ``attention``.

Scenes with a large object are indexed by **role**: ``large``, then ``small_1 .. small_{n-1}``
(the small objects in slot order). Scenes without one (the equal-size variant, or published
folders whose large slot is unknown) are indexed by slot, ``slot_1 .. slot_n``, under the prefix
``equal/``. On COCO (:mod:`clipprobe.data.coco`) a scene's slots are its objects by annotated area, largest
first, so ``large`` is the largest object and ``small_k`` the (k+1)-th largest (the study's Table 4); IOR and
I2TOR keep the images whose objects all have a reference and say how many that is.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from clipprobe.data.coco import KIND as COCO_KIND
from clipprobe.data.probeset import ProbeSet, Scene
from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext, ProbeResult, register
from clipprobe.probes.captions import render
from clipprobe.probes.common import (
    encode_unique,
    linear_probe,
    parse_options,
    probe_options,
    resolve_vocab,
    single_thread,
)
from clipprobe.probes.stats import put_position_shares, put_share
from clipprobe.probes.tallies import ONE_PROCESS, POSITION_COUNTS, PositionShareTally, Shard, tally_counts


def role_order(scene: Scene) -> list[int]:
    """Slot indices in role order: the large object first, then the small ones in slot order
    (plain slot order when the scene has no large object)."""
    big = scene.large_slot
    if big is None:
        return list(range(scene.n))
    return [big, *(k for k in range(scene.n) if k != big)]


def role_names(n: int, large: bool) -> list[str]:
    """``["large", "small_1", ...]`` or ``["slot_1", ...]``."""
    return ["large", *(f"small_{k}" for k in range(1, n))] if large else [f"slot_{k}" for k in range(1, n + 1)]


def _group_key(scene: Scene) -> tuple[str, int]:
    return ("large" if scene.large_slot is not None else "equal", scene.n)


def _require_probe_set(ctx: ProbeContext, probe: str) -> ProbeSet:
    if ctx.probe_set is None:
        raise UserError(f"probe {probe} needs a probe set; pass --probe-set DIR")
    if not ctx.probe_set.scenes:
        raise UserError(f"probe set {ctx.probe_set.root} holds no scenes; regenerate it")
    return ctx.probe_set


def retrieval_result(
    name: str, probe_set: ProbeSet, scene_emb: torch.Tensor, ref_emb: torch.Tensor, references: Sequence[str],
    shard: Shard = ONE_PROCESS,
) -> ProbeResult:  # fmt: skip
    """IOR/I2TOR metrics from scene embeddings ``[S, D]`` (in ``probe_set.scenes`` order) and
    reference embeddings ``[V, D]``, per (variant, n); each rank of ``shard`` tallies its share of the
    scenes and the counts are summed over ranks."""
    index = {r: i for i, r in enumerate(references)}
    missing = sorted({o for s in probe_set.scenes for o in s.names if o not in index})
    if missing:
        raise UserError(f"{name}: scene objects without a reference: {', '.join(missing[:5])}; check the vocabulary")
    rows: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, scene in enumerate(probe_set.scenes):
        rows[_group_key(scene)].append(i)
    result = ProbeResult(name)
    for (variant, n), idx in sorted(rows.items(), key=lambda kv: (kv[0][0] != "large", kv[0][1])):
        mine = [idx[i] for i in shard.rows(len(idx))]  # this rank's scenes; counts summed over ranks
        tally = shard.tally(PositionShareTally, n)
        if mine:
            objects = torch.tensor(
                [[index[probe_set.scenes[i].names[k]] for k in role_order(probe_set.scenes[i])] for i in mine],
                dtype=torch.long,
            )
            tally.update(scene_emb[mine] @ ref_emb.T, objects)
        counts = tally_counts(tally, POSITION_COUNTS)
        put_position_shares(
            result, counts, variant=None if variant == "large" else variant, roles=role_names(n, variant == "large")
        )
    return result


def retrievable(ps: ProbeSet, references: Sequence[str], probe: str) -> tuple[ProbeSet, list[str]]:
    """The scenes IOR or I2TOR can score against ``references``: on COCO those whose objects all have one (an
    image may show an object the references lack), with a note saying how many; a generated or published set
    as it is (:func:`retrieval_result` refuses an object without a reference there: the set is broken).

    Raises:
        UserError: no COCO image has all its objects among the references.
    """
    if ps.kind != COCO_KIND:
        return ps, []
    have = set(references)
    kept = [s for s in ps.scenes if all(o in have for o in s.names)]
    if not kept:
        raise UserError(f"{probe}: none of the {len(ps.scenes)} COCO images has all its objects among the "
                        f"{len(have)} references; give references that cover COCO's names (--coco_references)")  # fmt: skip
    if len(kept) == len(ps.scenes):
        return ps, []
    per_n = ", ".join(f"n{n}: {sum(s.n == n for s in kept)}" for n in sorted({s.n for s in kept}))
    note = (f"{len(kept)} of {len(ps.scenes)} COCO images ({per_n}): those whose objects all have one of the "
            f"{len(have)} references")  # fmt: skip
    return dataclasses.replace(ps, scenes=kept), [note]


def _scene_paths(probe_set: ProbeSet) -> list[str]:
    return [str(probe_set.path(s)) for s in probe_set.scenes]


@probe_options("ior")
@dataclass
class IorOptions:
    """``ior`` has no options."""


@register("ior", needs_probe_set=True, summary="Image-based object retrieval: which object a scene is nearest.")
def ior(ctx: ProbeContext) -> ProbeResult:
    """IOR: each scene's embedding against every reference image; keys ``n{n}/large``,
    ``n{n}/small_k`` (share among hits), ``.._all``, ``closest_..``, ``hit_rate``, ``bias_index``."""
    parse_options(IorOptions, ctx.options, "ior")
    ps = _require_probe_set(ctx, "ior")
    references = list(ps.references)
    if not references:
        raise UserError(f"ior needs reference images; {ps.name} has none (for COCO pass --coco_references DIR)")
    ps, notes = retrievable(ps, references, "ior")
    ref_paths = [str(ps.references[r]) for r in references]
    emb, row = encode_unique(ctx.encoder.encode_images, ref_paths + _scene_paths(ps))
    result = retrieval_result(
        "ior",
        ps,
        emb[[row[p] for p in _scene_paths(ps)]],
        emb[[row[p] for p in ref_paths]],
        references,
        Shard.of(ctx.encoder),
    )
    result.config = {"references": "images", "num_references": len(references), **_roles(ps)}
    result.notes += notes
    return result


def _roles(ps: ProbeSet) -> dict[str, str]:
    return {"roles": "by annotated area, largest first"} if ps.kind == COCO_KIND else {}


@probe_options("i2tor")
@dataclass
class I2torOptions:
    """Options of ``i2tor``: the template of the reference names (``bare`` = the name alone)."""

    template: Literal["bare", "article", "a", "long"] = "bare"


@register(
    "i2tor", needs_probe_set=True, summary="Image-to-text object retrieval: IOR against the names' text embeddings."
)
def i2tor(ctx: ProbeContext) -> ProbeResult:
    """I2TOR: as IOR, with the vocabulary names' text embeddings as references."""
    opts = parse_options(I2torOptions, ctx.options, "i2tor")
    ps = _require_probe_set(ctx, "i2tor")
    vocab = resolve_vocab(ctx)
    ps, notes = retrievable(ps, vocab, "i2tor")
    texts = [render(opts.template, [v]) for v in vocab]
    text_emb, text_row = encode_unique(ctx.encoder.encode_texts, texts)
    img_emb, img_row = encode_unique(ctx.encoder.encode_images, _scene_paths(ps))
    result = retrieval_result(
        "i2tor",
        ps,
        img_emb[[img_row[p] for p in _scene_paths(ps)]],
        text_emb[[text_row[t] for t in texts]],
        vocab,
        Shard.of(ctx.encoder),
    )
    result.config = {**asdict(opts), "references": "texts", "num_references": len(vocab), **_roles(ps)}
    result.notes += notes
    return result


@probe_options("ioc")
@dataclass
class IocOptions:
    """Options of ``ioc`` (defaults: the study's).

    Attributes:
        test_fraction: held-out share of each scene group (study: 0.2).
        lr, batch_size, epochs: Adam training of each linear head (study: 1e-3, batch 8, 25 epochs;
            the study's 128 is its feature-extraction batch, not the classifier's). A smaller batch
            means more steps: ``ceil(train scenes / batch_size)`` per epoch.
        min_scenes: smallest scene group worth a classifier.
        seed: split and training seed.
    """

    test_fraction: float = 0.2
    lr: float = 1e-3
    batch_size: int = 8
    epochs: int = 25
    min_scenes: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        from clipprobe.probes.common import check_option  # out of range: silently 1 test scene or an untrained head

        check_option(self, "test_fraction", 0 < self.test_fraction < 1, "between 0 and 1 (exclusive)")
        for name in ("batch_size", "epochs"):
            check_option(self, name, getattr(self, name) >= 1, "at least 1")
        check_option(self, "lr", self.lr > 0, "greater than 0")


@register(
    "ioc", needs_probe_set=True, summary="Image-based object classification: linear probe per slot.", version=2
)  # 2: the classifier's batch is the study's 8 (was 128)
def ioc(ctx: ProbeContext) -> ProbeResult:
    """IOC: per scene group (n objects, large object in slot j, as the study's folders), one linear
    classifier per slot on frozen scene embeddings predicts that slot's object. Keys
    ``n{n}/acc_large`` and ``n{n}/acc_small`` pool the held-out predictions over groups;
    ``n{n}/large{j}/acc_slot_k`` per group; ``equal/n{n}/acc_slot_k`` for equal-size scenes."""
    opts = parse_options(IocOptions, ctx.options, "ioc")
    ps = _require_probe_set(ctx, "ioc")
    classes = sorted({o for s in ps.scenes for o in s.names})
    label = {c: i for i, c in enumerate(classes)}
    emb, row = encode_unique(ctx.encoder.encode_images, _scene_paths(ps))
    groups: dict[tuple[int, int | None], list[Scene]] = defaultdict(list)
    for s in ps.scenes:
        groups[(s.n, s.large_slot)].append(s)
    pooled: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])  # (n, role) -> [correct, total]
    result = ProbeResult("ioc", config={**asdict(opts), "num_classes": len(classes)})
    with single_thread():  # small tensors: a parallel op here only waits for threads (see linear_probe)
        for (n, big), scenes in sorted(groups.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])):
            if len(scenes) < opts.min_scenes:
                result.notes.append(f"n{n} large slot {big}: {len(scenes)} scenes < min_scenes, skipped")
                continue
            x = emb[[row[str(ps.path(s))] for s in scenes]]
            order = torch.randperm(len(scenes), generator=torch.Generator().manual_seed(opts.seed))
            n_test = max(1, int(len(scenes) * opts.test_fraction))
            train, test = order[n_test:], order[:n_test]
            x_train, x_test = x[train], x[test]
            group = f"n{n}/large{big + 1}" if big is not None else f"equal/n{n}"
            variant = f"large{big + 1}" if big is not None else "equal"
            for k in range(n):
                y = torch.tensor([label[s.names[k]] for s in scenes], dtype=torch.long)
                preds = linear_probe(
                    x_train, y[train], x_test, len(classes), lr=opts.lr, batch_size=opts.batch_size,
                    epochs=opts.epochs, seed=opts.seed + k, progress=ctx.progress, desc=f"ioc n{n} slot {k + 1}",
                )  # fmt: skip
                correct = int((preds == y[test]).sum())
                put_share(result, f"{group}/acc_slot_{k + 1}", correct, n_test, family="accuracy", n=n,
                          key=f"slot_{k + 1}", variant=variant, chance=1 / len(classes))  # fmt: skip
                if big is not None:
                    tally = pooled[(n, "large" if k == big else "small")]
                    tally[0], tally[1] = tally[0] + correct, tally[1] + n_test
    for (n, role), (correct, total) in sorted(pooled.items()):
        put_share(result, f"n{n}/acc_{role}", correct, total, family="accuracy", n=n, key=role,
                  chance=1 / len(classes))  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------
# Attention: the CLS token's attention to the patches in the last block of an open_clip ViT.


@probe_options("attention")
@dataclass
class AttentionOptions:
    """Options of ``attention``: images per forward pass."""

    batch_size: int = 32

    def __post_init__(self) -> None:
        from clipprobe.probes.common import check_option  # fewer than 1 would silently probe no image

        check_option(self, "batch_size", self.batch_size >= 1, "at least 1")


def _vit_parts(model: object) -> tuple[torch.nn.Module, torch.nn.Module] | str:
    """``(visual, last_block)`` of an open_clip ViT whose last block uses ``nn.MultiheadAttention``,
    or the reason it cannot be probed."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if model is None:
        return "skipped: the encoder has no model (attention needs an open_clip ViT)"
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        return f"skipped: attention needs an open_clip VisionTransformer image tower, not {type(visual).__name__}"
    last = visual.transformer.resblocks[-1]
    if not isinstance(last, ResidualAttentionBlock) or not isinstance(last.attn, torch.nn.MultiheadAttention):
        return f"skipped: the last vision block is {type(last).__name__}, not a standard attention block"
    return visual, last


def cls_patch_attention(visual: torch.nn.Module, last: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLS-to-patch attention of the last block, averaged over heads, renormalised over patches.

    The block's input is captured with a forward pre-hook; its attention is recomputed from it with
    ``need_weights=True`` (open_clip itself asks for no weights). Returns ``[B, grid_h, grid_w]``.
    """
    captured: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        visual(images)
    finally:
        handle.remove()
    x = captured[-1]  # [B, L, D] (or [L, B, D] when the transformer is not batch-first; attn matches)
    y = last.ln_1(x)
    _, weights = last.attn(y, y, y, need_weights=True, average_attn_weights=True)  # [B, L, L]
    cls = weights[:, 0, 1:].float()  # token 0 is CLS, then the patches row by row
    cls = cls / cls.sum(dim=-1, keepdim=True)
    grid_h, grid_w = visual.grid_size
    return cls.reshape(-1, grid_h, grid_w)


def box_weights(
    bbox: Sequence[int], image_wh: tuple[int, int], input_hw: tuple[int, int], grid_hw: tuple[int, int]
) -> torch.Tensor:
    """Share of each patch covered by ``bbox`` (x0, y0, x1, y1 in image pixels), ``[grid_h, grid_w]``.

    Maps the box through open_clip's default preprocess: resize the shorter side to the input size,
    then centre-crop (for square scenes every resize mode agrees)."""
    (w, h), (in_h, in_w) = image_wh, input_hw
    scale = max(in_h / h, in_w / w)
    off_x, off_y = (w * scale - in_w) / 2, (h * scale - in_h) / 2
    x0, y0, x1, y1 = (
        bbox[0] * scale - off_x,
        bbox[1] * scale - off_y,
        bbox[2] * scale - off_x,
        bbox[3] * scale - off_y,
    )

    def cover(lo: float, hi: float, size: float, cells: int) -> torch.Tensor:
        edges = torch.arange(cells + 1, dtype=torch.float64) * (size / cells)
        return (torch.minimum(edges[1:], torch.tensor(hi)) - torch.maximum(edges[:-1], torch.tensor(lo))).clamp(
            min=0
        ) / (size / cells)

    return cover(y0, y1, in_h, grid_hw[0])[:, None] * cover(x0, x1, in_w, grid_hw[1])[None, :]


def _attention_maps(ctx: ProbeContext, scenes: list[Scene], batch_size: int, parts: tuple) -> list[tuple]:
    """``(scene, attention map [gh, gw], image (w, h))`` for every scene, in batches."""
    from PIL import Image
    from tqdm.auto import tqdm

    visual, last = parts
    device = torch.device(ctx.encoder.device)
    was_training = visual.training
    visual.eval()
    out = []
    try:
        for lo in tqdm(range(0, len(scenes), batch_size), desc="attention", disable=not ctx.progress, leave=False):
            batch = scenes[lo : lo + batch_size]
            pils = [Image.open(ctx.probe_set.path(s)).convert("RGB") for s in batch]
            images = torch.stack([ctx.encoder.preprocess(p) for p in pils]).to(device)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                maps = cls_patch_attention(visual, last, images).cpu().double()
            out += [(s, m, p.size) for s, m, p in zip(batch, maps, pils, strict=True)]
    finally:
        visual.train(was_training)
    return out


@register("attention", needs_probe_set=True, summary="ViT CLS attention inside each object's box: large vs small.")
def attention(ctx: ProbeContext) -> ProbeResult:
    """Mean CLS attention share inside the large object's box (``n{n}/large``), inside a small
    one's (``n{n}/small``), and the mean per-scene ratio large / mean small (``n{n}/ratio``); for
    equal-size scenes ``equal/n{n}/slot_k``. Means carry normal 95% intervals."""
    from clipprobe.probes.stats import put_mean
    from clipprobe.probes.tallies import mean_compute, mean_update

    opts = parse_options(AttentionOptions, ctx.options, "attention")
    ps = _require_probe_set(ctx, "attention")
    result = ProbeResult("attention", config=asdict(opts))
    parts = _vit_parts(ctx.encoder.model)
    if isinstance(parts, str):
        result.notes.append(parts)
        return result
    scenes = [s for s in ps.scenes if all(o.bbox is not None for o in s.objects)]
    if len(scenes) < len(ps.scenes):
        result.notes.append(f"{len(ps.scenes) - len(scenes)} scenes without bounding boxes not used")
    visual = parts[0]
    values: dict[tuple[str | None, int, str, str], list[float]] = defaultdict(list)  # (variant, n, family, key)
    for scene, amap, wh in _attention_maps(ctx, scenes, opts.batch_size, parts):
        shares = [
            float((amap * box_weights(o.bbox, wh, tuple(visual.image_size), amap.shape)).sum()) for o in scene.objects
        ]
        variant, n = _group_key(scene)
        if variant == "large":
            big = scene.large_slot
            small = [v for k, v in enumerate(shares) if k != big]
            values[(None, n, "mean", "large")].append(shares[big])
            values[(None, n, "mean", "small")] += small
            values[(None, n, "ratio", "large/small")].append(shares[big] / max(sum(small) / len(small), 1e-12))
        else:
            for k, v in enumerate(shares):
                values[("equal", n, "mean", f"slot_{k + 1}")].append(v)
    for (variant, n, family, key), vals in sorted(values.items(), key=lambda kv: (kv[0][0] or "", kv[0][1:])):
        stats = mean_compute(mean_update(torch.tensor(vals, dtype=torch.float64)))
        name = (f"{variant}/" if variant else "") + f"n{n}/" + ("ratio" if family == "ratio" else key)
        put_mean(result, name, float(stats["mean"]), float(stats["std"]), len(vals), family=family, n=n, key=key,
                 variant=variant)  # fmt: skip
    return result
