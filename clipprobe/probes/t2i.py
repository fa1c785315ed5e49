"""Text-to-image prompt order (docs/PROBES.md "Text-to-image prompt order (`t2i`)"): does the first-named object
dominate the image a text-to-image model draws?

Prompts name n objects of the vocabulary (``num_sets`` seeded n-subsets) in every order, in each template, and
each prompt is drawn with ``images_per_prompt`` seeds by a generator: a diffusers text-to-image pipeline (a hub id
or a local folder: ``AutoPipelineForText2Image``, its own scheduler, ``steps`` and ``guidance`` fixed and
recorded), a folder of clipprobe's tiny t2i model (:mod:`clipprobe.models.diffusion`), or a plugged-in callable
(``package.module:factory``, the factory returning ``(prompt, seed, size) -> PIL image``). Images are written
once into a cache keyed by everything that made them (in batches when the generator can draw several at once).

Prominence is scored by the probed CLIP itself (``detector: clip``, always available): an image's embedding
against the text embeddings of the prompt's objects (as I2TOR), the nearest being the *prominent* object, and an
object *found* when it is among the n vocabulary names nearest the image; or by an open-vocabulary detector from
transformers (``detector``: a model id or folder for its ``zero-shot-object-detection`` pipeline, OWL-ViT, OWLv2,
Grounding DINO): an object is found with a box scoring at least ``threshold``, the prominent object is the one
with the largest box, and ``area_k`` is the mean box area (a share of the image) of the object at position k.

Names per n (pooled over templates; ``<template>/`` prefixes the same per template): ``n{n}/prominent_k`` (share of
images whose prominent object is the one named at position k; chance 1/n), ``n{n}/found_k``, ``n{n}/area_k``
(detector only) and ``n{n}/first_minus_last`` (prominent_1 - prominent_n with its 95% interval): the effect.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from clipprobe.errors import UserError
from clipprobe.probes.base import Metric, ProbeContext, ProbeResult, register
from clipprobe.probes.captions import render
from clipprobe.probes.common import check_option, encode_unique, parse_options, probe_options, resolve_vocab
from clipprobe.probes.stats import Z95, put_mean, put_share

Generator = Callable[[str, int, int | None], Any]  # (prompt, seed, size) -> PIL image
DRAW_BATCH = 32  # images drawn at once by a generator that can batch


@probe_options("t2i")
@dataclass
class T2iOptions:
    """Options of ``t2i``.

    Attributes:
        pipeline: the generator: a diffusers hub id or local pipeline folder, or ``package.module:factory``.
        n: objects per prompt (2 or 3; every order of each set is drawn).
        num_sets: object sets drawn from the vocabulary (seeded).
        templates: prompt templates (``bare``: "dog and pizza", ``article``: "a dog and a pizza").
        images_per_prompt: seeds per prompt.
        steps, guidance, size: the pipeline's inference steps, guidance scale and image side (None: its default).
        detector: ``clip`` (the probed model scores its own images) or a transformers zero-shot-object-detection
            model id or folder.
        threshold: the detector's box score needed to count an object as found.
        dtype: the pipeline's weights and compute (float16 / bfloat16 on GPUs).
        seed: object-set sampling and image seeds (default: the run's).
    """

    pipeline: str | None = None
    n: int = 2
    num_sets: int = 10
    templates: list[Literal["bare", "article"]] = field(default_factory=lambda: ["bare", "article"])
    images_per_prompt: int = 2
    steps: int = 25
    guidance: float = 7.5
    size: int | None = None
    detector: str = "clip"
    threshold: float = 0.1
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    seed: int | None = None

    def __post_init__(self) -> None:
        check_option(self, "n", 2 <= self.n <= 3, "2 or 3")
        for name in ("num_sets", "images_per_prompt", "steps"):
            check_option(self, name, getattr(self, name) >= 1, "at least 1")
        check_option(self, "templates", bool(self.templates), "at least one template")
        check_option(self, "size", self.size is None or self.size >= 8, "at least 8 pixels (or null)")
        check_option(self, "threshold", 0 <= self.threshold <= 1, "within 0..1")

    def identity(self) -> dict[str, str]:
        """Content hashes of a local pipeline or detector folder (their paths alone could hide a changed model). A hub
        id is recorded as given: it names whatever the hub serves, so pin a model with a local folder; a plugin is
        known by its ``module:factory`` name."""
        out = {}
        for name in ("pipeline", "detector"):
            path = Path(str(getattr(self, name) or "")).expanduser()
            if getattr(self, name) and path.is_dir():
                out[f"{name}_sha256"] = _folder_sha(path)
        return out


# ---------------------------------------------------------------------------------------------
# Generators


@dataclass
class LoadedGenerator:
    """A generator and how it is described in the record and in the image cache's key."""

    draw: Generator
    describe: dict[str, Any]
    many: Callable[[list[str], list[int], int | None], list[Any]] | None = None  # a batch at once, if it can


def _is_plugin(spec: str) -> bool:
    return ":" in spec and not Path(spec).exists() and "/" not in spec.split(":", 1)[0]


def load_generator(opts: T2iOptions, device: str) -> LoadedGenerator:
    """The generator ``opts.pipeline`` names, loaded once.

    Raises:
        UserError: no pipeline given, a plugin that does not import, a hub id that cannot be reached (offline),
            or a pipeline that is not text-to-image.
    """
    spec = opts.pipeline
    if not spec:
        raise UserError("t2i needs a generator: --options '{t2i: {pipeline: HUB_ID|FOLDER|module:factory}}'")
    if _is_plugin(spec):
        module, _, name = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise UserError(f"t2i pipeline {spec}: cannot import it ({e}); give module:factory on the Python path") \
                from None  # fmt: skip
        return LoadedGenerator(factory(), {"kind": "plugin", "name": spec})
    from clipprobe.models.diffusion import TinyT2I, is_tiny_t2i

    local = Path(spec).expanduser()
    if local.is_dir() and is_tiny_t2i(local):  # clipprobe's own tiny pixel-space model (scripts/t2i_demo.py)
        if opts.dtype != "float32":
            raise UserError(f"t2i pipeline {spec} is a clipprobe tiny t2i model, which draws in float32: drop dtype")
        tiny = TinyT2I(local, device, opts.steps, opts.guidance)
        return LoadedGenerator(tiny, {"kind": "folder", "path": str(local.resolve()), "sha256": _folder_sha(local),
                                      "pipeline": "clipprobe.TinyT2I", "scheduler": type(tiny.scheduler).__name__,
                                      "dtype": opts.dtype}, many=tiny.many)  # fmt: skip
    return _load_diffusers(spec, opts, device)


def _load_diffusers(spec: str, opts: T2iOptions, device: str) -> LoadedGenerator:
    try:
        from diffusers import AutoPipelineForText2Image
    except ImportError:
        raise UserError("t2i with a diffusers pipeline needs diffusers: pip install diffusers") from None
    local = Path(spec).expanduser()
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            str(local) if local.is_dir() else spec, torch_dtype=getattr(torch, opts.dtype)
        )
    except ValueError as e:
        raise UserError(f"t2i pipeline {spec} is not a text-to-image pipeline ({' '.join(str(e).split())[:160]})") \
            from None  # fmt: skip
    except OSError as e:
        raise UserError(f"t2i pipeline {spec} cannot be loaded ({' '.join(str(e).split())[:160]}); offline, give a "
                        "local pipeline folder") from None  # fmt: skip
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    accepts = set(inspect.signature(pipe.__call__).parameters)
    if not {"prompt", "num_inference_steps"} <= accepts:
        raise UserError(f"t2i pipeline {spec} ({type(pipe).__name__}) does not take a prompt; give a text-to-image one")

    def draw(prompt: str, seed: int, size: int | None) -> Any:
        kwargs: dict[str, Any] = {"num_inference_steps": opts.steps, "output_type": "pil",
                                  "generator": torch.Generator(device="cpu").manual_seed(seed)}  # fmt: skip
        if "guidance_scale" in accepts:
            kwargs["guidance_scale"] = opts.guidance
        if size is not None:
            kwargs.update(height=size, width=size)
        with torch.no_grad():
            return pipe(prompt, **kwargs).images[0]

    where = {"kind": "folder", "path": str(local.resolve()), "sha256": _folder_sha(local)} if local.is_dir() else {
        "kind": "hub", "id": spec}  # fmt: skip
    scheduler = type(getattr(pipe, "scheduler", None)).__name__
    return LoadedGenerator(
        draw, {**where, "pipeline": type(pipe).__name__, "scheduler": scheduler, "dtype": opts.dtype}
    )


def _folder_sha(path: Path) -> str:
    from clipprobe.fileio import folder_sha256

    return folder_sha256(path)


# ---------------------------------------------------------------------------------------------
# Prompts and images


@dataclass(frozen=True)
class Prompt:
    """One prompt: its object set, the objects in the prompt's order, the template and the text."""

    set_index: int
    objects: tuple[str, ...]
    template: str
    text: str


def prompts(vocab: list[str], opts: T2iOptions, seed: int) -> list[Prompt]:
    """``num_sets`` seeded n-subsets of the vocabulary, each in every order and template."""
    if len(vocab) < opts.n:
        raise UserError(f"t2i needs at least n={opts.n} vocabulary names, got {len(vocab)}")
    rng = random.Random(f"clipprobe:{seed}:t2i:{opts.n}")
    total = math.comb(len(vocab), opts.n)
    sets: list[tuple[str, ...]] = []
    seen: set[frozenset[str]] = set()
    while len(sets) < min(opts.num_sets, total):
        objs = tuple(rng.sample(vocab, opts.n))
        if frozenset(objs) not in seen:
            seen.add(frozenset(objs))
            sets.append(objs)
    return [Prompt(i, order, t, render(t, order)) for i, objs in enumerate(sets)
            for order in itertools.permutations(objs) for t in opts.templates]  # fmt: skip


def draw_images(gen: LoadedGenerator, items: list[Prompt], opts: T2iOptions, seed: int, folder: Path,
                progress: bool) -> list[tuple[Prompt, int, Path]]:  # fmt: skip
    """Each prompt drawn with ``images_per_prompt`` seeds into ``folder`` (an image already there is reused:
    the folder is keyed by the generator and the settings); ``(prompt, image seed, path)`` per image. The image
    seed hashes (seed, object set, j): every order of a set is drawn from the same noise, so the orders differ only
    in the prompt."""
    from tqdm.auto import tqdm

    from clipprobe.fileio import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    out, todo = [], []
    for p in items:
        for j in range(opts.images_per_prompt):
            image_seed = int.from_bytes(hashlib.sha256(f"{seed}:{p.set_index}:{j}".encode()).digest()[:4], "big")
            path = folder / f"{p.set_index:04d}-{'_'.join(p.objects).replace(' ', '-')}-{p.template}-{j}.png"
            out.append((p, image_seed, path))
            if not path.is_file():
                todo.append((p, image_seed, path))
    chunk = DRAW_BATCH if gen.many is not None else 1
    with tqdm(total=len(todo), desc="t2i images", disable=not progress or not todo, leave=False) as bar:
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            if gen.many is not None:
                images = gen.many([p.text for p, _, _ in part], [s for _, s, _ in part], opts.size)
            else:
                images = [gen.draw(p.text, s, opts.size) for p, s, _ in part]
            for (_, _, path), image in zip(part, images, strict=True):
                buf = io.BytesIO()
                image.convert("RGB").save(buf, format="PNG")
                atomic_write_bytes(path, buf.getvalue())
            bar.update(len(part))
    return out


def image_folder(gen: LoadedGenerator, opts: T2iOptions, seed: int, vocab: list[str]) -> Path:
    """``<cache>/t2i/<hash>``: one folder per generator, drawing settings, seed and vocabulary (the scorer's
    settings are left out: scoring the same images another way draws nothing again)."""
    from clipprobe.data.generate import default_cache_dir

    drawing = {k: v for k, v in asdict(opts).items() if k not in ("detector", "threshold")}  # scoring only
    key = json.dumps({"generator": gen.describe, "options": drawing, "seed": seed, "vocab": vocab}, sort_keys=True)
    return default_cache_dir().parent / "t2i" / hashlib.sha256(key.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Score:
    """What a scorer says of one image: the prominent object's position (None: none), whether each position's
    object was found, and each one's area (None without boxes)."""

    prominent: int | None
    found: list[bool]
    area: list[float] | None = None


def clip_scores(ctx: ProbeContext, images: list[tuple[Prompt, int, Path]], vocab: list[str]) -> list[Score]:
    """The probed model as scorer: nearest of the prompt's object names (prominent); found = among the n
    vocabulary names nearest the image."""
    texts = [render("bare", [v]) for v in vocab]
    text_emb, text_row = encode_unique(ctx.encoder.encode_texts, texts)
    img_emb, img_row = encode_unique(ctx.encoder.encode_images, [str(p) for _, _, p in images])
    names = text_emb[[text_row[t] for t in texts]]
    index = {v: i for i, v in enumerate(vocab)}
    out = []
    for prompt, _, path in images:
        sims = img_emb[img_row[str(path)]] @ names.T
        own = torch.tensor([index[o] for o in prompt.objects])
        top = set(torch.topk(sims, len(own)).indices.tolist())
        out.append(Score(int(torch.argmax(sims[own])), [int(i) in top for i in own]))
    return out


def load_detector(spec: str, vocab: list[str], device: str) -> Any:
    """The transformers zero-shot-object-detection pipeline ``spec``, checked to take every vocabulary name
    (loaded before any image is drawn, so a bad detector costs no drawing).

    Raises:
        UserError: the detector cannot be loaded (offline without a local folder), is not a detector, or a
            vocabulary name is longer than its text encoder takes.
    """
    try:
        from transformers import pipeline as hf_pipeline

        detect = hf_pipeline("zero-shot-object-detection", model=spec, device=device)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"t2i detector {spec} cannot be loaded as a zero-shot object detector "
                        f"({' '.join(str(e).split())[:160]}); use detector: clip, or a local detector folder") \
            from None  # fmt: skip
    tokenizer = getattr(detect, "tokenizer", None)
    limit = _text_limit(detect)
    if tokenizer is not None and limit:
        for name in vocab:
            length = len(tokenizer(name)["input_ids"])  # the pipeline tokenizes each label as it is
            if length > limit:
                raise UserError(f"t2i detector {spec} cannot take the vocabulary name {name!r} ({length} tokens, at "
                                f"most {limit}); shorten it in --vocab or use detector: clip")  # fmt: skip
    return detect


def _text_limit(detect: Any) -> int | None:
    """The detector's text length limit in tokens (its text config's positions), if it says."""
    config = getattr(getattr(detect, "model", None), "config", None)
    text = getattr(config, "text_config", None)
    limit = getattr(text, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) else None


def detector_scores(detect: Any, images: list[tuple[Prompt, int, Path]], threshold: float) -> list[Score]:
    """A transformers zero-shot-object-detection pipeline (:func:`load_detector`) as scorer (candidate labels: the
    prompt's objects)."""
    from PIL import Image

    out = []
    for prompt, _, path in images:
        with Image.open(path) as im:
            image = im.convert("RGB")
        boxes = detect(image, candidate_labels=list(prompt.objects))
        best = [0.0] * len(prompt.objects)
        found = [False] * len(prompt.objects)
        for box in boxes:
            if box["label"] not in prompt.objects or box["score"] < threshold:
                continue
            k = prompt.objects.index(box["label"])
            b = box["box"]
            area = max(0, b["xmax"] - b["xmin"]) * max(0, b["ymax"] - b["ymin"]) / (image.width * image.height)
            found[k], best[k] = True, max(best[k], area)
        prominent = max(range(len(best)), key=lambda k: best[k]) if any(found) else None
        out.append(Score(prominent, found, best))
    return out


# ---------------------------------------------------------------------------------------------
# The probe


def put_t2i(result: ProbeResult, scores: list[Score], n: int, variant: str | None) -> None:
    """The entries of one group of images (see the module docstring)."""
    prefix = (f"{variant}/" if variant else "") + f"n{n}/"
    total = len(scores)
    where = {"n": n, "variant": variant}
    for k in range(n):
        put_share(result, f"{prefix}prominent_{k + 1}", sum(s.prominent == k for s in scores), total,
                  family="prominent", key=str(k + 1), chance=1 / n, **where)  # fmt: skip
        put_share(result, f"{prefix}found_{k + 1}", sum(s.found[k] for s in scores), total, family="found",
                  key=str(k + 1), **where)  # fmt: skip
        areas = [s.area[k] for s in scores if s.area is not None]
        if areas:
            mean = sum(areas) / len(areas)
            std = math.sqrt(sum((a - mean) ** 2 for a in areas) / (len(areas) - 1)) if len(areas) > 1 else 0.0
            put_mean(result, f"{prefix}area_{k + 1}", mean, std, len(areas), family="area", key=str(k + 1), **where)
    first = sum(s.prominent == 0 for s in scores) / total if total else math.nan
    last = sum(s.prominent == n - 1 for s in scores) / total if total else math.nan
    diff = first - last
    # the two shares come from one multinomial: var(p1 - pn) = (p1 + pn - (p1 - pn)^2) / N
    half = Z95 * math.sqrt(max(0.0, first + last - diff * diff) / total) if total else math.nan
    result.add(Metric(f"{prefix}first_minus_last", "difference", diff, total, (diff - half, diff + half), n, None,
                      variant, 0.0))  # fmt: skip


@register("t2i", needs_probe_set=False, by_default=False,
          summary="Text-to-image prompt order: is the first-named object the prominent one in generated images?")  # fmt: skip
def t2i(ctx: ProbeContext) -> ProbeResult:
    """Draw every order of each object set with the generator, score prominence (the probed CLIP or a detector)
    and tally it by the object's position in the prompt."""
    opts = parse_options(T2iOptions, ctx.options, "t2i")
    seed = ctx.seed if opts.seed is None else opts.seed
    vocab = resolve_vocab(ctx)
    device = str(getattr(ctx.encoder, "device", "cpu"))
    detect = None if opts.detector == "clip" else load_detector(opts.detector, vocab, device)
    gen = load_generator(opts, device)
    items = prompts(vocab, opts, seed)
    folder = image_folder(gen, opts, seed, vocab)
    images = draw_images(gen, items, opts, seed, folder, ctx.progress)
    if opts.detector == "clip":
        scores = clip_scores(ctx, images, vocab)
    else:
        scores = detector_scores(detect, images, opts.threshold)
    result = ProbeResult("t2i", config={**asdict(opts), "seed": seed, "generator": gen.describe,
                                        "images": str(folder), "num_images": len(images),
                                        "num_prompts": len(items)})  # fmt: skip
    put_t2i(result, scores, opts.n, None)
    if len(opts.templates) > 1:
        for t in opts.templates:
            put_t2i(result, [s for s, (p, _, _) in zip(scores, images, strict=True) if p.template == t], opts.n, t)
    result.notes.append(f"{len(images)} images of {len(items)} prompts in {folder}; scored by {opts.detector}")
    return result
