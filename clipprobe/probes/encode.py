"""The encoding engine: batched, no grad, cached, so each unique text and image is encoded once per run.

Probes ask for embeddings of the same inputs again and again (every TOR caption reuses the
vocabulary names; every image probe reuses the references). :class:`CachedEncoder` keeps every
embedding it has computed, keyed by the text or by the image's resolved path, and sends only new
inputs to the model, in batches. Outputs are L2-normalised float32 tensors on the CPU.

For a model that changes between evaluations (the training callback), ``keep_inputs`` keeps the
tokenized texts and preprocessed images across :meth:`CachedEncoder.refresh`, which forgets only the
embeddings. Under DDP (``world_size > 1``) every rank asks for the same inputs; each encodes its
contiguous share of the new ones and the shares are all-gathered, so every rank holds every embedding
for ``1 / world_size`` of the encoding work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipprobe.errors import UserError
from clipprobe.models.text import encode_text, text_length


class _EmbeddingCache:
    """Embeddings keyed by input: rows of one [N, D] matrix, grown chunk by chunk."""

    def __init__(self) -> None:
        self.index: dict[Hashable, int] = {}
        self._chunks: list[torch.Tensor] = []

    def missing(self, keys: Sequence[Hashable]) -> list[Hashable]:
        """Keys not cached yet, each once, in first-seen order."""
        return list(dict.fromkeys(k for k in keys if k not in self.index))

    def add(self, keys: Sequence[Hashable], rows: torch.Tensor) -> None:
        base = len(self.index)
        self.index.update((k, base + i) for i, k in enumerate(keys))
        self._chunks.append(rows)

    def get(self, keys: Sequence[Hashable]) -> torch.Tensor:
        if len(self._chunks) > 1:  # concatenate lazily, once per batch of additions
            self._chunks = [torch.cat(self._chunks)]
        if not keys:
            dim = self._chunks[0].shape[1] if self._chunks else 0
            return torch.empty(0, dim)
        return self._chunks[0][torch.tensor([self.index[k] for k in keys], dtype=torch.long)]


class _ImageFiles(torch.utils.data.Dataset):
    """Image files through the model's preprocess (a top-level class, so DataLoader workers can pickle it)."""

    def __init__(self, paths: Sequence[str], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        """The preprocessed image ``[3, H, W]``, or a one-line message when the file cannot be read (an
        exception raised in a loader worker would reach the user as a multi-line traceback)."""
        try:
            return load_pixels(self.paths[i], self.preprocess)
        except UserError as exc:
            return str(exc)


def load_pixels(path: str, preprocess: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """Read one image file and preprocess it.

    Raises:
        UserError: the file is missing, truncated or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return preprocess(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise UserError(f"image {path} cannot be read ({exc}); regenerate or replace it") from None


def _stack_checked(items: list[torch.Tensor | str]) -> torch.Tensor:
    """Collate a loader batch: the first unreadable image's message becomes a UserError."""
    bad = next((x for x in items if isinstance(x, str)), None)
    if bad is not None:
        raise UserError(bad)
    return torch.stack(items)  # type: ignore[arg-type]


class CachedEncoder:
    """Encode texts and images with an open_clip model, each unique input once per run.

    Args:
        model: an open_clip CLIP (``encode_text``, ``encode_image``).
        preprocess: the model's eval image transform (PIL image -> [3, H, W]).
        tokenizer: the model's tokenizer (list of str -> [B, L] token ids).
        device: where the model runs; bf16 autocast is used on CUDA only.
        batch_size: inputs per model call.
        progress: show tqdm bars (tqdm hides them when stderr is not a terminal).
        num_workers: DataLoader workers for images; None picks some when there are many images.
        keep_inputs: keep tokenized texts and preprocessed images (up to ``pixel_cache_mb``) across
            :meth:`refresh`, for a model that changes while its inputs do not.
        pixel_cache_mb: memory for kept preprocessed images.
        rank, world_size: this process's rank and the number of processes sharing the encoding (DDP);
            with ``world_size > 1`` every rank must make the same calls in the same order, and
            ``torch.distributed`` must be initialised.

    Counters: ``text_calls``/``image_calls`` count batches sent to the model by this process,
    ``texts_encoded``/``images_encoded`` count unique inputs encoded (by all ranks together),
    ``texts_tokenized``/``images_prepared`` count inputs tokenized or preprocessed by this process.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Any], torch.Tensor] | None,
        tokenizer: Callable[..., torch.Tensor] | None,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        progress: bool = True,
        num_workers: int | None = None,
        keep_inputs: bool = False,
        pixel_cache_mb: float = 2048,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.num_workers = num_workers
        self.text_calls = self.image_calls = 0
        self.texts_encoded = self.images_encoded = 0
        self.keep_inputs = keep_inputs
        self.pixel_budget = int(pixel_cache_mb * 2**20)
        self.rank, self.world_size = rank, world_size
        self.texts_tokenized = self.images_prepared = 0
        self._tokens: dict[str, torch.Tensor] = {}
        self._paths: dict[str, str] = {}  # path as given -> resolved (kept inputs only)
        self._pixels: dict[str, torch.Tensor] = {}
        self._pixel_bytes = 0
        self._batches: dict[Hashable, list[Any]] = {}
        self._texts = _EmbeddingCache()
        self._images = _EmbeddingCache()

    def refresh(self) -> None:
        """Forget every embedding (the model has changed); kept inputs stay."""
        self._texts, self._images = _EmbeddingCache(), _EmbeddingCache()

    def counters(self) -> dict[str, int]:
        """The four counters, for logs and result files."""
        return {
            "text_calls": self.text_calls,
            "texts_encoded": self.texts_encoded,
            "image_calls": self.image_calls,
            "images_encoded": self.images_encoded,
        }

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), D] L2-normalised float32 on CPU."""
        texts = [str(t) for t in texts]
        new = self._texts.missing(texts)
        if new:
            if self.tokenizer is None:
                raise ValueError("this encoder has no tokenizer")
            mine = self._share(new)
            batches = (mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size))
            rows = self._gather(self._run(batches, len(mine), "encode texts", self._text_batch))
            self._texts.add(new, rows)
            self.texts_encoded += len(new)
        return self._texts.get(texts)

    def encode_images(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """[len(paths), D] L2-normalised float32 on CPU; the cache key is the resolved path.

        Raises:
            UserError: an image file is missing.
        """
        keys = [self._resolved(p) for p in paths]
        new = self._images.missing(keys)
        if new:
            if self.preprocess is None:
                raise ValueError("this encoder has no image preprocess")
            absent = [p for p in new if not os.path.isfile(p)]
            if absent:
                raise UserError(f"image {absent[0]} does not exist ({len(absent)} missing); regenerate the probe set")
            mine = self._share(new)
            rows = self._gather(self._run(self._image_batches(mine), len(mine), "encode images", self._image_batch))
            self._images.add(new, rows)
            self.images_encoded += len(new)
        return self._images.get(keys)

    def _resolved(self, path: str | os.PathLike) -> str:
        """The resolved path; remembered when inputs are kept (the training callback asks for the same paths at every
        evaluation, and resolving walks the file system)."""
        if not self.keep_inputs:
            return str(Path(path).resolve())
        key = os.fspath(path)
        found = self._paths.get(key)
        if found is None:
            found = self._paths[key] = str(Path(path).resolve())
        return found

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, D] L2-normalised float32 on CPU for preprocessed images ``[B, 3, H, W]`` (a loader's batch); the
        cache key is the pixels' content, so an image met again in this evaluation is not encoded again."""
        import hashlib

        rows = pixels.detach().cpu().contiguous()
        keys = [("pixels", hashlib.blake2b(r.numpy().tobytes(), digest_size=16).digest()) for r in rows]
        new = self._images.missing(keys)
        if new:
            at = {k: i for i, k in reversed(list(enumerate(keys)))}  # first row of each key
            mine = self._share(new)
            picked = rows[[at[k] for k in mine]] if mine else rows[:0]
            batches = (picked[lo : lo + self.batch_size] for lo in range(0, len(mine), self.batch_size))
            out = self._gather(self._run(batches, len(mine), "encode images", self._image_batch))
            self._images.add(new, out)
            self.images_encoded += len(new)
        return self._images.get(keys)

    def keep_batches(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """A loader's batches: ``make()``'s, and with ``keep_inputs`` kept in memory (within the pixel budget)
        and replayed under ``key`` at the next evaluation instead of decoding the images again."""
        kept = self._batches.get(key)
        if kept is not None:
            yield from kept
            return
        keep: list[Any] | None = [] if self.keep_inputs else None
        size = 0
        for batch in make():
            if keep is not None:
                size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
                if self._pixel_bytes + size <= self.pixel_budget:
                    keep.append(batch)
                else:  # too large to keep: decoded again next time
                    keep = None
            yield batch
        if keep is not None:
            self._batches[key] = keep
            self._pixel_bytes += size

    def _share(self, new: list) -> list:
        """This rank's contiguous share of the new inputs (all of them in one process)."""
        if self.world_size == 1:
            return new
        per = -(-len(new) // self.world_size)  # ceil
        return new[self.rank * per : (self.rank + 1) * per]

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in rank order (= the order of the new inputs)."""
        if self.world_size == 1:
            return rows
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, rows)  # pickled CPU tensors: any backend, empty shares allowed
        return torch.cat([p for p in parts if p.numel()]) if any(p.numel() for p in parts) else rows

    def _image_batches(self, paths: list[str]) -> Any:
        if self.keep_inputs:  # preprocessed pixels are kept: no loader workers to start each time
            return (
                torch.stack([self._pixels_of(p) for p in paths[lo : lo + self.batch_size]])  # [B, 3, H, W]
                for lo in range(0, len(paths), self.batch_size)
            )
        workers = self.num_workers
        if workers is None:  # workers pay off only when decoding dominates
            workers = min(8, max((os.cpu_count() or 1) - 1, 0)) if len(paths) >= 2 * self.batch_size else 0
        loader = torch.utils.data.DataLoader(
            _ImageFiles(paths, self.preprocess),
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=list,  # checked in the main process (_stack_checked): errors stay one line
        )
        return (_stack_checked(items) for items in loader)

    def _pixels_of(self, path: str) -> torch.Tensor:

        pixels = self._pixels.get(path)
        if pixels is None:
            pixels = load_pixels(path, self.preprocess)
            self.images_prepared += 1
            size = pixels.numel() * pixels.element_size()
            if self._pixel_bytes + size <= self.pixel_budget:
                self._pixels[path] = pixels
                self._pixel_bytes += size
        return pixels

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        if self.keep_inputs:
            new = [t for t in dict.fromkeys(texts) if t not in self._tokens]
            if new:
                self._tokens.update(zip(new, self.tokenizer(new), strict=True))  # [L] token ids each
                self.texts_tokenized += len(new)
            tokens = torch.stack([self._tokens[t] for t in texts])
        else:
            tokens = self.tokenizer(texts)
            self.texts_tokenized += len(texts)
        self.text_calls += 1
        return encode_text(self.model, tokens.to(self.device), length=text_length(tokens))  # padding cut (host-side)

    def _image_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return self.model.encode_image(pixels.to(self.device, non_blocking=True))

    def _run(self, batches: Any, total: int, desc: str, step: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """Run ``step`` over batches in eval mode without grad; return [total, D] normalised float32 CPU.

        The model's train/eval mode is restored afterwards (the training callback shares the model).
        """
        from tqdm.auto import tqdm

        was_training = self.model.training
        self.model.eval()
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        )
        # no_grad rather than inference_mode: probes may fit classifiers on these tensors.
        out: list[torch.Tensor] = []
        try:
            with (
                torch.no_grad(),
                autocast,
                tqdm(total=total, desc=desc, disable=None if self.progress else True) as bar,
            ):
                for batch in batches:
                    emb = step(batch)  # [B, D]
                    out.append(F.normalize(emb.float(), dim=-1).cpu())
                    bar.update(emb.shape[0])
        finally:
            self.model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, 0)
