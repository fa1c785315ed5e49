"""What every probe shares: typed options (a dataclass per probe, validated with a clear
:class:`~clipprobe.errors.UserError`), the vocabulary and object counts to use, encoding each unique
input once, and the linear probe that TOC and IOC train on frozen embeddings."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch

from clipprobe.data.vocab import COCO_NAMES
from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext

T = TypeVar("T")

# Probe name -> its options dataclass (filled by @probe_options in the probe modules).
OPTIONS: dict[str, type] = {}

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def probe_options(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register ``cls`` (a dataclass) as probe ``name``'s options."""

    def wrap(cls: type[T]) -> type[T]:
        OPTIONS[name] = cls
        return cls

    return wrap


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (from the CLI, strings such as ``"2,3"`` or ``"true"`` are common)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    fail = UserError(f"{where}={value!r} is not a valid {getattr(tp, '__name__', str(tp))}")
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except UserError:
                continue
        raise fail
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}={value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else value
        items = items if isinstance(items, (list, tuple)) else [items]
        return [_coerce(v.strip() if isinstance(v, str) else v, args[0] if args else Any, where) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise fail
    if tp in (int, float):
        if isinstance(value, bool):
            raise fail
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise fail from None
        if tp is int and isinstance(value, float) and value != out:
            raise fail
        return out
    if tp is str:
        if not isinstance(value, str):
            raise fail
        return value
    return value


def parse_options(cls: type[T], options: Mapping[str, Any] | None, probe: str) -> T:
    """Build ``cls`` (a dataclass) from a plain dict, coercing strings and rejecting unknown keys.

    Raises:
        UserError: an unknown option or a value of the wrong type or outside its choices.
    """
    options = dict(options or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(k for k in options if k.replace("-", "_") not in names)
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for probe {probe}; valid options: {', '.join(names)}")
    values = {k.replace("-", "_"): _coerce(v, hints[k.replace("-", "_")], f"{probe}.{k}") for k, v in options.items()}
    return cls(**values)


def resolve_vocab(ctx: ProbeContext) -> list[str]:
    """The text vocabulary: the one given, else the probe set's, else the study's 90 COCO names."""
    if ctx.vocab:
        return list(ctx.vocab)
    if ctx.probe_set is not None and ctx.probe_set.vocabulary:
        return list(ctx.probe_set.vocabulary)
    return list(COCO_NAMES)


def resolve_counts(ctx: ProbeContext, requested: Sequence[int] | None, default: Sequence[int] = (2, 3, 4)) -> list[int]:
    """Object counts: those requested, else the probe set's (those with at least 2 objects), else ``default``."""
    if requested:
        counts = sorted(set(requested))
    elif ctx.probe_set is not None and ctx.probe_set.counts():
        counts = [n for n in ctx.probe_set.counts() if n >= 2]
    else:
        counts = list(default)
    bad = [n for n in counts if n < 2]
    if bad:
        raise UserError(f"object counts must be at least 2, got {bad[0]}; pass n like 2,3,4")
    return counts


def encode_unique(encode: Callable[[list], torch.Tensor], items: Iterable[Hashable]) -> tuple[torch.Tensor, dict]:
    """Encode each distinct item once, in first-seen order, in one call.

    Returns:
        ``(embeddings [U, D], row)`` with ``row[item]`` the item's row.
    """
    unique = list(dict.fromkeys(items))
    emb = encode(unique) if unique else torch.zeros(0, 0)
    if emb.shape[0] != len(unique):
        raise RuntimeError(f"encoder returned {emb.shape[0]} embeddings for {len(unique)} inputs")
    return emb.float(), {item: i for i, item in enumerate(unique)}


def split_embeddings(single: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """Split and aggregate (PROBES.md, mitigation): the normalised sum of each object's own embedding.

    Args:
        single: ``[V, D]`` embedding of each object encoded alone.
        objects: ``[B, n]`` object indices in mention order.

    Returns:
        ``[B, D]``, L2-normalised. Summed in index order, so every order of the same objects gives
        bit-identical embeddings (order-invariant by construction, not just up to rounding).
    """
    summed = single[objects.sort(dim=1).values].sum(dim=1)
    return torch.nn.functional.normalize(summed, dim=-1)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block: for many tiny steps ([32, D] x [D, C]) thread
    hand-offs cost more than they save, and on a shared machine they contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_eval: torch.Tensor,
    num_classes: int,
    *,
    lr: float = 1e-3,
    batch_size: int = 32,
    epochs: int = 10,
    seed: int = 42,
    progress: bool = False,
    desc: str = "linear probe",
) -> torch.Tensor:
    """Train ``Linear(D, num_classes)`` with Adam and cross-entropy on frozen features; return the
    predicted labels of ``x_eval``. Seeded: same inputs, same predictions (CPU).

    The step is written out (softmax-regression gradient, then Adam with torch's defaults:
    betas 0.9/0.999, eps 1e-8) instead of going through autograd and ``torch.optim.Adam``: the
    same updates (to float rounding; a test checks it) about 8x faster, which matters for TOC at the
    study's size (180,000 sentences, batch 32, 10 epochs, per position).
    """
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(x_train.shape[1], num_classes)  # torch's default initialisation
    params = [head.weight.detach().clone(), head.bias.detach().clone()]  # W [C, D], b [C]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = x_train.float(), y_train.long()
    with single_thread():
        for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
            order = torch.randperm(len(x_train), generator=gen)
            for lo in range(0, len(order), batch_size):
                idx = order[lo : lo + batch_size]
                xb = x_train[idx]  # [B, D]
                grad = torch.softmax(torch.addmm(params[1], xb, params[0].t()), dim=1)  # [B, C]
                grad[torch.arange(len(idx)), y_train[idx]] -= 1.0
                grad /= len(idx)  # d(mean cross-entropy)/d(logits)
                step += 1
                for p, g, (m, v) in zip(params, (grad.t() @ xb, grad.sum(0)), moments, strict=True):
                    m.mul_(beta1).add_(g, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                    p.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
    return torch.addmm(params[1], x_eval.float(), params[0].t()).argmax(dim=1)
