"""The encoding engine: batched, no grad, cached, so each unique text and image is encoded once per run.

Probes ask for embeddings of the same inputs again and again (every TOR caption reuses the
vocabulary names; every image probe reuses the references). :class:`CachedEncoder` keeps every
embedding it has computed, keyed by the text or by the image's resolved path, and sends only new
inputs to the model, in batches. Outputs are L2-normalised float32 tensors on the CPU.
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

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.preprocess(im.convert("RGB"))


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

    Counters: ``text_calls``/``image_calls`` count batches sent to the model,
    ``texts_encoded``/``images_encoded`` count unique inputs encoded.
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.num_workers = num_workers
        self.text_calls = self.image_calls = 0
        self.texts_encoded = self.images_encoded = 0
        self._texts = _EmbeddingCache()
        self._images = _EmbeddingCache()

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
            batches = (new[i : i + self.batch_size] for i in range(0, len(new), self.batch_size))
            rows = self._run(batches, len(new), "encode texts", self._text_batch)
            self._texts.add(new, rows)
            self.texts_encoded += len(new)
        return self._texts.get(texts)

    def encode_images(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """[len(paths), D] L2-normalised float32 on CPU; the cache key is the resolved path.

        Raises:
            UserError: an image file is missing.
        """
        keys = [str(Path(p).resolve()) for p in paths]
        new = self._images.missing(keys)
        if new:
            if self.preprocess is None:
                raise ValueError("this encoder has no image preprocess")
            absent = [p for p in new if not os.path.isfile(p)]
            if absent:
                raise UserError(f"image {absent[0]} does not exist ({len(absent)} missing); regenerate the probe set")
            rows = self._run(self._image_batches(new), len(new), "encode images", self._image_batch)
            self._images.add(new, rows)
            self.images_encoded += len(new)
        return self._images.get(keys)

    def _image_batches(self, paths: list[str]) -> Any:
        workers = self.num_workers
        if workers is None:  # workers pay off only when decoding dominates
            workers = min(8, max((os.cpu_count() or 1) - 1, 0)) if len(paths) >= 2 * self.batch_size else 0
        loader = torch.utils.data.DataLoader(
            _ImageFiles(paths, self.preprocess),
            batch_size=self.batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    def _text_batch(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        self.text_calls += 1
        return self.model.encode_text(tokens)

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
        return torch.cat(out)
