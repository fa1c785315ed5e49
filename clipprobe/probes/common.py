"""What every probe shares: typed options (a dataclass per probe, validated by jsonargparse, with a
one-line :class:`~clipprobe.errors.UserError`), the vocabulary and object counts to use, encoding each unique
input once, and the linear probe that TOC and IOC train on frozen embeddings."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
from jsonargparse import ArgumentError, ArgumentParser

from clipprobe.data.vocab import COCO_NAMES
from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext

T = TypeVar("T")

# Probe name -> its options dataclass (filled by @probe_options in the probe modules).
OPTIONS: dict[str, type] = {}

_TRUE, _FALSE, _NULL = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}, {"none", "null"}
_REMEMBER = 256  # validated option sets remembered per options class (then forgotten all at once)
_JA_ERRORS = (ArgumentError, TypeError, ValueError)  # what jsonargparse's parse_object raises on bad input


@dataclasses.dataclass
class _Spec:
    """One options class as :func:`parse_options` uses it, built once: its jsonargparse parser, field
    names and types, and the option sets already validated (``repr(options)`` -> typed values)."""

    parser: ArgumentParser
    names: list[str]
    hints: dict[str, Any]
    done: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


_SPECS: dict[type, _Spec] = {}


def probe_options(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register ``cls`` (a dataclass) as probe ``name``'s options."""

    def wrap(cls: type[T]) -> type[T]:
        OPTIONS[name] = cls
        return cls

    return wrap


def check_option(opts: object, name: str, ok: bool, allowed: str) -> None:
    """For an options dataclass's ``__post_init__``: reject a value of the right type but outside its range.

    Args:
        opts: the options dataclass (its probe's name is looked up in :data:`OPTIONS`).
        name: the option checked.
        ok: whether its value is valid.
        allowed: the valid range, completing "must be ...", e.g. ``"at least 1"``.

    Raises:
        UserError: ``ok`` is false, e.g. ``tor.num_captions=0 is out of range; must be at least 1``.
    """
    if not ok:
        probe = next((p for p, c in OPTIONS.items() if c is type(opts)), type(opts).__name__)
        raise UserError(f"{probe}.{name}={getattr(opts, name)!r} is out of range; must be {allowed}")


def parse_options(cls: type[T], options: Mapping[str, Any] | None, probe: str) -> T:
    """Build ``cls`` (a probe's options dataclass) from a plain dict, validated by jsonargparse.

    Values come typed from YAML or as strings from the command line; besides what jsonargparse reads
    (``"50"``, ``"1e-2"``, ``"true"``, ``"null"``, ``[2, 3]``), lists may be given as ``"2,3"`` or one item,
    null as ``"none"``, an int as an integral float (``50.0``; ``1.5`` is rejected), a bool as ``"1"``/``"0"``,
    ``"yes"``/``"no"`` or ``"on"``/``"off"`` in any case, and a name with ``-`` for ``_``. The jsonargparse parser
    is built once per class and each option set validated is remembered, so a repeated call (a training
    callback evaluates every N steps) costs a dict lookup and the dataclass's construction.

    Raises:
        UserError: in one line naming the probe and option: an unknown option (with the valid ones), a
            value of the wrong type or not among its choices, or out of range (the dataclass's ``__post_init__``).
    """
    options = dict(options or {})
    spec = _spec(cls)
    memo = repr(options)
    values = spec.done.get(memo)
    if values is None:
        values = _validate(spec, options, probe)
        opts = cls(**copy.deepcopy(values))  # its __post_init__ checks ranges before the set is remembered
        if len(spec.done) >= _REMEMBER:
            spec.done.clear()
        spec.done[memo] = values
        return opts
    return cls(**copy.deepcopy(values))  # a copy: callers may change their options' lists


def _spec(cls: type) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        spec = _SPECS[cls] = _Spec(parser, names, typing.get_type_hints(cls))
    return spec


def _validate(spec: _Spec, options: dict[str, Any], probe: str) -> dict[str, Any]:
    """The typed values of the options given (defaults are left to the dataclass), checked by jsonargparse."""
    values = _prepare(spec, options)
    for key, value in options.items():
        tp = spec.hints.get(_field(key))
        # jsonargparse accepts None for every option, also one whose type does not allow it: reject it here.
        if values[_field(key)] is None and tp is not None and not _is_optional(tp):
            raise UserError(_bad_value(probe, key, value, tp))
    try:
        return spec.parser.parse_object(values, defaults=False).as_dict()
    except _JA_ERRORS as e:
        raise _one_line(spec, options, probe, e) from None


def _prepare(spec: _Spec, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` by field name, in the forms jsonargparse reads; copies, as it converts lists in place."""
    return {_field(k): _cli_form(copy.deepcopy(v), spec.hints.get(_field(k), Any)) for k, v in options.items()}


def _field(key: object) -> str:
    return str(key).replace("-", "_")


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _cli_form(value: Any, tp: Any) -> Any:
    """``value`` for a field of type ``tp``, with the forms that jsonargparse's ``parse_object`` rejects but
    this project accepts rewritten: ``"2,3"`` or ``3`` for a list (``[2, 3]``, ``[3]``), ``"none"``/``"None"``
    for null, ``2.0`` for an int (``2``) and ``"1"``, ``"0"``, ``"Off"``, ... for a bool. Everything else is
    left for jsonargparse to check."""
    if _is_optional(tp):
        if isinstance(value, str) and value.lower() in _NULL:
            return None
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple) and value is not None:
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        items = list(items) if isinstance(items, (list, tuple)) else [items]
        item_tp = args[0] if args and (origin is list or args[-1] is Ellipsis) else Any
        return [_cli_form(v, item_tp) for v in items]
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is bool and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    return value


def _one_line(spec: _Spec, options: dict[str, Any], probe: str, error: Exception) -> UserError:
    """jsonargparse's rejection of ``options`` as one line. Its own message spans several lines (for a
    union, the error of each member type), so the option it rejects is found by checking each alone and
    the message is written from that option's value and type."""
    unknown = [k for k in options if _field(k) not in spec.hints]
    if unknown:
        valid = ", ".join(spec.names) or "(none)"
        return UserError(f"unknown option {unknown[0]!r} for probe {probe}; valid options: {valid}")
    values = _prepare(spec, options)
    for key, value in options.items():
        try:
            spec.parser.parse_object({_field(key): values[_field(key)]}, defaults=False)
        except _JA_ERRORS:
            return UserError(_bad_value(probe, key, value, spec.hints[_field(key)]))
    return UserError(f"invalid options for probe {probe}: {' '.join(str(error).split())}")


def _bad_value(probe: str, key: object, value: Any, tp: Any) -> str:
    """``tor.mode='fancy' is not one of paper, balanced``, ``tor.n='two' is not a valid list[int] | None``."""
    inner = [a for a in typing.get_args(tp) if a is not type(None)] if _is_optional(tp) else [tp]
    if len(inner) == 1 and typing.get_origin(inner[0]) is typing.Literal:
        choices = ", ".join(map(str, typing.get_args(inner[0])))
        return f"{probe}.{key}={value!r} is not one of {choices}{' or null' if _is_optional(tp) else ''}"
    name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
    return f"{probe}.{key}={value!r} is not a valid {name}"


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


_GATHER_ROWS = 4096  # training rows gathered into shuffled order at once (bounds the copy for TOC's 135,000)


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

    Each epoch visits the training set in a fresh order (``torch.randperm`` of a generator seeded by
    ``seed``) in ``ceil(len(x_train) / batch_size)`` minibatches, the last one possibly smaller, with one
    Adam step each. The step is written out (softmax-regression gradient, then Adam with torch's
    defaults: betas 0.9/0.999, eps 1e-8) instead of going through autograd and ``torch.optim.Adam``:
    the same updates (to float rounding; a test checks it) several times faster, which matters for TOC
    at the study's size (180,000 sentences, batch 32, 10 epochs, per position) and for IOC's batch of 8.
    Shuffled rows are gathered a chunk of batches at a time, so a minibatch is a view; weight and bias
    live in one flat tensor, so each Adam op updates both; gradients and Adam's denominator go to
    preallocated buffers; no autograd.
    """
    from tqdm.auto import tqdm

    # one thread throughout: for these small tensors thread hand-offs cost more than they save, and on a
    # loaded machine a parallel op (even a zero fill) can wait milliseconds for a descheduled thread
    with single_thread(), torch.no_grad():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = torch.nn.Linear(x_train.shape[1], num_classes)  # torch's default initialisation
        dim, classes = x_train.shape[1], num_classes
        params = torch.cat([head.weight.detach().flatten(), head.bias.detach()])  # W [C, D] then b [C], flat
        weight, bias = params[: classes * dim].view(classes, dim), params[classes * dim :]
        grads = torch.zeros_like(params)
        grad_w, grad_b = grads[: classes * dim].view(classes, dim), grads[classes * dim :]
        m, v, denom = torch.zeros_like(params), torch.zeros_like(params), torch.empty_like(params)
        beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
        gen = torch.Generator().manual_seed(seed)
        x_train, y_train = x_train.float(), y_train.long()
        minus_one = torch.full((min(batch_size, len(x_train)), 1), -1.0)
        chunk = batch_size * max(1, _GATHER_ROWS // batch_size)  # whole batches, so batch boundaries stay put
        for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
            order = torch.randperm(len(x_train), generator=gen)
            for start in range(0, len(order), chunk):  # gather a chunk of batches at once; a batch is a view
                xs, ys = x_train[order[start : start + chunk]], y_train[order[start : start + chunk]].unsqueeze(1)
                for lo in range(0, len(xs), batch_size):
                    xb, yb = xs[lo : lo + batch_size], ys[lo : lo + batch_size]  # [B, D], [B, 1]
                    grad = torch.softmax(torch.addmm(bias, xb, weight.t()), dim=1)  # [B, C]
                    grad.scatter_add_(1, yb, minus_one[: len(yb)])  # minus the one-hot target
                    grad /= len(yb)  # d(mean cross-entropy)/d(logits)
                    torch.mm(grad.t(), xb, out=grad_w)
                    torch.sum(grad, dim=0, out=grad_b)
                    step += 1
                    m.mul_(beta1).add_(grads, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
                    torch.sqrt(v, out=denom).div_(math.sqrt(1 - beta2**step)).add_(eps)
                    params.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        return torch.addmm(bias, x_eval.float(), weight.t()).argmax(dim=1)
