"""Training data from webdataset tar shards (img2dataset layout), through webdataset's public API.

Data order is a pure function of the batch index. Each Lightning rank runs ``W`` loader workers;
logical worker ``w`` of rank ``r`` owns a *slot* ``k = r * W + w`` and reads an endless,
seeded stream of samples from its share of the shards (or, in resampled mode, from shards drawn
with replacement). Within an epoch of ``L`` batches ("chunk" ``c``), batch ``g`` (0 <= g < L) is
the ``g // W``-th batch of slot ``w = g % W``'s stream for chunk ``c``. A loader iteration that
starts at global batch ``B`` (read from the trainer: exact resume) rotates which torch worker plays
which slot, so that the DataLoader's round-robin yields batches ``B, B+1, ...`` in order.

The known traps (DESIGN.md) are avoided explicitly: ranks and workers split shards by slot, and
when there are fewer shards than slots, slots sharing a shard split its samples; the node
splitter is never used; every stream cycles, so no worker runs dry and every rank sees the same
number of batches. Bad samples (undecodable image, missing caption, unreadable tar) are skipped and
counted; a stream that yields nothing raises instead of spinning.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipprobe.data.tars import expand_urls, is_local
from clipprobe.errors import UserError

log = logging.getLogger(__name__)
MAX_DECODE_FAILURES = 10_000  # consecutive undecodable samples before a stream gives up
PEEK_SAMPLES = 64  # samples read at setup to check the image and caption keys


def stats_path(url: str) -> Path:
    """img2dataset's per-shard statistics file beside a local shard: ``00012.tar`` -> ``00012_stats.json``."""
    path = Path(url.removeprefix("file:"))
    return path.with_name(path.name.removesuffix(".tar") + "_stats.json")


def count_samples(urls: list[str]) -> int | None:
    """Samples in the shards according to their ``*_stats.json`` (``successes``); None if any is missing."""
    total = 0
    for url in urls:
        if not is_local(url) or not stats_path(url).is_file():
            return None
        total += int(json.loads(stats_path(url).read_text(encoding="utf-8"))["successes"])
    return total


def _seed(*parts: int) -> int:
    """A 63-bit seed from non-negative parts (seed, purpose, positions...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ShardStream(IterableDataset):
    """Batches ``{"image": [B,3,H,W], "text": [B,T], "skipped": []}`` from tar shards (see module doc).

    Images are whatever ``transform`` returns, stacked: with :class:`ShardDataModule`'s transforms, uint8 pixels,
    normalised on the device by the data module (:meth:`ShardDataModule.on_after_batch_transfer`).

    Set ``start`` (global batch index) before each iteration; the loader yields batches
    ``start .. end of its epoch``. ``skipped`` counts bad samples met since the worker's last batch.
    """

    def __init__(self, urls: list[str], batch_size: int, batches_per_epoch: int, transform: Callable[[Any], Any],
                 tokenizer: Callable[[list[str]], torch.Tensor], image_keys: list[str], caption_key: str,
                 shuffle_buffer: int = 1000, resampled: bool = False, seed: int = 0, rank: int = 0,
                 world_size: int = 1, order_augment: bool = False) -> None:  # fmt: skip
        self.urls, self.batch_size, self.batches_per_epoch = urls, batch_size, batches_per_epoch
        self.order_augment = order_augment
        self.transform, self.tokenizer = transform, tokenizer
        self.image_keys, self.caption_key = image_keys, caption_key
        self.shuffle_buffer, self.resampled, self.seed = shuffle_buffer, resampled, seed
        self.rank, self.world_size = rank, world_size
        self.start = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        s, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        chunk, offset = divmod(self.start, self.batches_per_epoch)
        w = (offset + s) % workers  # the slot this torch worker plays in this iteration
        skip = max(0, -(-(offset - w) // workers))  # this slot's batches before `offset`
        batches = range(skip, -(-(self.batches_per_epoch - w) // workers))
        if not batches:
            return
        slot = self.rank * workers + w
        samples = self._decoded(chunk, slot, self.world_size * workers)
        for _ in range(skip * self.batch_size):  # resume: fast-forward without preprocessing
            next(samples)
        self._skipped = 0  # bad samples before `start` were counted by the run that saw them
        for j in batches:
            yield self._batch(samples, chunk, j * workers + w)

    # -- streams -------------------------------------------------------------------------------

    def _round(self, chunk: int, slot: int, slots: int, rnd: int) -> tuple[list[str], int, int]:
        """One round of a slot's stream: its shards in order, and which samples of them it keeps."""
        rng = np.random.default_rng(_seed(self.seed, 0, chunk, slot, rnd))
        n = len(self.urls)
        if self.resampled:
            return [self.urls[i] for i in rng.integers(0, n, size=n)], 1, 0
        if n >= slots:
            mine = self.urls[slot::slots]
            return [mine[i] for i in rng.permutation(len(mine))], 1, 0
        # fewer shards than slots: the slots on one shard take every m-th of its samples
        sharing = len(range(slot % n, slots, n))
        return [self.urls[slot % n]], sharing, slot // n

    def _raw(self, chunk: int, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        """Endless raw samples having an image and a caption; raises if a whole round has none."""
        import webdataset as wds

        def handler(exn: Exception) -> bool:
            self._skipped += 1
            log.warning("skipping unreadable shard data: %s", str(exn)[:200])
            return True

        for rnd in range(2**62):
            urls, every, mine = self._round(chunk, slot, slots, rnd)
            found = 0
            for i, sample in enumerate(wds.tarfile_samples(iter([{"url": u} for u in urls]), handler=handler)):
                if i % every != mine:
                    continue
                if self.caption_key in sample and any(k in sample for k in self.image_keys):
                    found += 1
                    yield sample
                else:
                    self._skipped += 1
            if not found:
                raise RuntimeError(
                    f"no sample with an image ({';'.join(self.image_keys)}) and a caption ({self.caption_key}) in "
                    f"{len(urls)} shard(s) starting {urls[0]}; check the shards and --data.image_key/caption_key"
                )

    def _decoded(self, chunk: int, slot: int, slots: int) -> Iterator[tuple[Any, str, Any]]:
        """Shuffled (PIL image, caption, metadata) triples (metadata: the sample's ``json`` when caption order is
        augmented, else None); undecodable samples are skipped and counted."""
        import webdataset as wds
        from PIL import Image

        self._skipped = 0
        raw = self._raw(chunk, slot, slots)
        if self.shuffle_buffer > 1:
            rng = random.Random(_seed(self.seed, 1, chunk, slot))
            raw = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(raw)
        failures = 0
        for sample in raw:
            try:
                data = next(sample[k] for k in self.image_keys if k in sample)
                with Image.open(io.BytesIO(data)) as im:
                    image = im.convert("RGB")
                text = sample[self.caption_key].decode("utf-8").strip()
                if not text:
                    raise ValueError("empty caption")
                meta = json.loads(sample["json"]) if self.order_augment and "json" in sample else None
            except Exception as exn:
                self._skipped += 1
                failures += 1
                if failures >= MAX_DECODE_FAILURES:
                    raise RuntimeError(f"{failures} samples in a row failed to decode; last: {exn!r}") from exn
                continue
            failures = 0
            yield image, text, meta

    def _batch(self, samples: Iterator[tuple[Any, str]], chunk: int, index: int) -> dict[str, torch.Tensor]:
        images, texts = [], []
        # augmentation draws from a generator seeded by the batch's position: same batch, same crops
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.seed, 2, self.rank, chunk, index))
            while len(images) < self.batch_size:
                image, text, meta = next(samples)
                try:
                    images.append(self.transform(image))
                except Exception:
                    self._skipped += 1
                    continue
                texts.append(self._reorder(text, meta) if self.order_augment else text)
        skipped, self._skipped = self._skipped, 0
        return {"image": torch.stack(images), "text": self.tokenizer(texts), "skipped": torch.tensor(skipped)}

    def _reorder(self, text: str, meta: Any) -> str:
        """Caption-order augmentation: the caption with its mentions in a random order (drawn from the batch's
        seeded generator), or as it is, with one warning per stream, when the sample cannot be re-ordered."""
        from clipprobe.data.corpus import reordered_caption

        names = meta.get("mentioned") if isinstance(meta, dict) else None
        order = torch.randperm(len(names)).tolist() if isinstance(names, list) else []
        new = reordered_caption(meta, order)
        if new is None:
            if not getattr(self, "_warned", False):
                self._warned = True
                log.warning("--data.order_augment: a sample without clipprobe corpus metadata (key.json 'mentioned', "
                            "'template'), or whose caption was edited, keeps its order: %r", text[:80])  # fmt: skip
            return text
        return new


class ShardLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that starts each iteration at ``position()``."""

    def __init__(self, dataset: ShardStream, position: Callable[[], int], **kwargs: Any) -> None:
        self.position = position
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)

    def __iter__(self) -> Any:
        self.dataset.start = int(self.position())  # workers start after this and copy the dataset
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """For Lightning's resumable-loader protocol; the position itself comes from the restored trainer step."""
        return {"position": int(self.position())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore: ``position()`` reads the restored trainer."""


def check_order_metadata(url: str) -> None:
    """``--data.order_augment`` needs the corpus metadata to re-order a caption: check the first sample of ``url``.

    Raises:
        UserError: the sample has no ``json`` member, or it holds no ``mentioned`` names and ``template``.
    """
    import webdataset as wds

    from clipprobe.data.corpus import reordered_caption

    sample = next(iter(wds.tarfile_samples(iter([{"url": url}]))), None)
    meta = json.loads(sample["json"]) if sample is not None and "json" in sample else None
    names = meta.get("mentioned") if isinstance(meta, dict) else None
    if not isinstance(names, list) or reordered_caption(meta, list(range(len(names)))) is None:
        raise UserError(f"--data.order_augment needs shards of 'clipprobe data corpus' (key.json with the mentioned "
                        f"objects and the template); the first sample of {url} has none: drop "
                        "--data.order_augment or regenerate the corpus")  # fmt: skip


def peek_keys(urls: list[str], image_keys: list[str], caption_key: str) -> None:
    """Read a few samples from the first readable shards; a missing image or caption key fails fast.

    Raises:
        UserError: no sample could be read, or none has the caption or image key (open_clip #1016).
    """
    import webdataset as wds

    seen: set[str] = set()
    errors: list[str] = []
    for url in urls[:3]:
        try:
            for i, sample in enumerate(wds.tarfile_samples(iter([{"url": url}]))):
                seen.update(k for k in sample if not k.startswith("__"))
                if i + 1 >= PEEK_SAMPLES:
                    break
        except Exception as exn:
            errors.append(f"{url}: {exn}")
        if seen:
            break
    if not seen:
        raise UserError(f"could not read any sample from {urls[0]} ({'; '.join(errors)[:300]}); check --data paths")
    found = ", ".join(sorted(seen))
    if caption_key not in seen:
        raise UserError(f"no sample in {url} has a caption under key '{caption_key}' (keys: {found}); "
                        "set --data.caption_key")  # fmt: skip
    if not seen.intersection(image_keys):
        raise UserError(f"no sample in {url} has an image under {';'.join(image_keys)} (keys: {found}); "
                        "set --data.image_key")  # fmt: skip


def pil_to_uint8(image: Any) -> torch.Tensor:
    """A PIL RGB image as a ``[3, H, W]`` uint8 tensor (a view: stacking a batch makes it contiguous)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class BatchNormalize:
    """ToTensor's scaling and Normalize for a whole uint8 batch ``[B, 3, H, W]``, on the batch's device.

    The same operations as torchvision's per-image ``ToTensor`` then ``Normalize`` (divide by 255, subtract the mean,
    divide by the standard deviation, in float32), so the result is the same to the bit; done once per batch after
    the copy to the device, so loader workers send and the host copies a quarter of the bytes.
    """

    def __init__(self, mean: Any, std: Any) -> None:
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._on:
            shape = (1, len(self.mean), 1, 1)
            self._on[images.device] = (torch.tensor(self.mean, device=images.device).view(shape),
                                       torch.tensor(self.std, device=images.device).view(shape))  # fmt: skip
        mean, std = self._on[images.device]
        return images.to(torch.float32).div_(255).sub_(mean).div_(std)


def split_normalize(transform: Any) -> tuple[Callable[[Any], Any], BatchNormalize | None]:
    """An open_clip image transform ending in ``MaybeToTensor``/``ToTensor`` and ``Normalize``, split into a
    per-image part that ends in uint8 tensors and the batch normalisation; any other transform is kept whole."""
    from torchvision.transforms import Compose, Normalize

    steps = list(getattr(transform, "transforms", []))
    if (len(steps) >= 2 and isinstance(steps[-1], Normalize) and type(steps[-2]).__name__ in ("MaybeToTensor", "ToTensor")
            and not isinstance(steps[-1].mean, torch.Tensor)):  # fmt: skip
        return Compose([*steps[:-2], pil_to_uint8]), BatchNormalize(steps[-1].mean, steps[-1].std)
    return transform, None


def _transforms(model_name: str, augment: bool) -> tuple[Callable[[Any], Any], Callable[[Any], Any], Any,
                                                          BatchNormalize | None]:  # fmt: skip
    """open_clip's train and eval image transforms (ending in uint8 tensors where they can), tokenizer, and the batch
    normalisation that completes them."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from clipprobe.models import create_random_model

    cfg = PreprocessCfg(**create_random_model(model_name, device="meta").visual.preprocess_cfg)  # type: ignore[attr-defined]
    train, normalize = split_normalize(image_transform_v2(cfg, is_train=augment))
    val, val_normalize = split_normalize(image_transform_v2(cfg, is_train=False))
    if (normalize is None) != (val_normalize is None):  # both uint8 or both float: one normalisation for both
        train, val, normalize = image_transform_v2(cfg, is_train=augment), image_transform_v2(cfg, is_train=False), None
    return train, val, open_clip.get_tokenizer(model_name), normalize


class ShardDataModule(L.LightningDataModule):
    """Image-caption batches from webdataset shards for :class:`clipprobe.training.module.CLIPModule`.

    Args:
        train_data: Training shards: a brace pattern, folder or ``::``-separated list of paths or URLs
            (``/data/laion/{00000..01023}.tar``, ``pipe:aws s3 cp s3://b/{0..9}.tar -``); see
            :func:`clipprobe.data.tars.expand_urls`.
        val_data: Validation shards (optional), same forms.
        model_name: open_clip architecture whose preprocessing and tokenizer to use (linked from the model).
        batch_size: Batch size per device.
        num_workers: Loader worker processes per device. Data order depends on it: resume with the same value.
        num_samples: Samples per epoch over all devices (default: sum of ``successes`` in ``*_stats.json``).
        val_num_samples: Validation samples per pass (default: from ``*_stats.json``).
        resampled: Draw shards with replacement (multi-node runs on many shards) instead of splitting them.
        shuffle_buffer: Samples in each worker's shuffle buffer (0 or 1: no shuffling).
        image_key: Image file extensions to try, ``;``-separated.
        caption_key: Caption file extension.
        augment: Random resized crops (open_clip's training transform) instead of the eval transform.
        seed: Seed of the data order and augmentation.
        order_augment: Caption-order augmentation (training only): each caption is re-rendered with its mentions
            in a random order, drawn per batch from the seeded generator, from the sample's ``key.json``
            (``mentioned``, ``template``: the shards of ``clipprobe data corpus``); a mitigation of the
            first-mention bias. The first sample is checked at setup.
    """

    def __init__(self, train_data: str | None = None, val_data: str | None = None, model_name: str = "clipprobe-tiny",
                 batch_size: int = 256, num_workers: int = 4, num_samples: int | None = None,
                 val_num_samples: int | None = None, resampled: bool = False, shuffle_buffer: int = 1000,
                 image_key: str = "jpg;jpeg;png;webp", caption_key: str = "txt", augment: bool = True,
                 seed: int = 0, order_augment: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or num_workers < 0:
            raise UserError("--data.batch_size must be >= 1 and --data.num_workers >= 0")
        self.image_keys = [k.strip().lower() for k in image_key.split(";") if k.strip()]
        self._built: dict[str, tuple[list[str], int]] = {}

    def _urls(self, spec: str | None, what: str) -> tuple[list[str], int]:
        if not spec:
            raise UserError(f"no {what} shards given; set --data.{what}_data (e.g. 'corpus/{{00000..00009}}.tar')")
        urls = expand_urls(spec, option=f"--data.{what}_data")  # raises when local shards are missing
        peek_keys(urls, self.image_keys, self.hparams.caption_key)
        if what == "train" and self.hparams.order_augment:
            check_order_metadata(urls[0])
        given = self.hparams.num_samples if what == "train" else self.hparams.val_num_samples
        total = given or count_samples(urls)
        if not total:
            raise UserError(f"the number of {what} samples is unknown (no *_stats.json beside the shards); "
                            f"set --data.{'num_samples' if what == 'train' else 'val_num_samples'}")  # fmt: skip
        return urls, int(total)

    def setup(self, stage: str) -> None:
        """Resolve shards and sample counts (fail fast on bad paths or keys) and build the transforms."""
        if stage in ("fit", None) and "train" not in self._built:
            self._built["train"] = self._urls(self.hparams.train_data, "train")
        if stage in ("validate",) or (stage == "fit" and self.hparams.val_data):
            self._built.setdefault("val", self._urls(self.hparams.val_data, "val"))
        if not hasattr(self, "tokenizer"):
            self.train_transform, self.val_transform, self.tokenizer, self.normalize = _transforms(
                self.hparams.model_name, self.hparams.augment
            )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Note the longest caption's length (``text_length``, read on the host: no device sync), so the model can
        leave out the padding after it (:func:`clipprobe.models.text.encode_text`)."""
        if isinstance(batch, dict) and isinstance(batch.get("text"), torch.Tensor) and "text_length" not in batch:
            from clipprobe.models.text import text_length

            batch["text_length"] = text_length(batch["text"])
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise the uint8 images of a batch on its device (:class:`BatchNormalize`)."""
        image = batch.get("image") if isinstance(batch, dict) else None
        if image is not None and image.dtype == torch.uint8 and getattr(self, "normalize", None) is not None:
            batch["image"] = self.normalize(image)
        return batch

    def _ranks(self) -> tuple[int, int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size, t.accumulate_grad_batches) if t is not None else (0, 1, 1)

    def _loader(self, which: str, position: Callable[[], int]) -> ShardLoader:
        urls, total = self._built[which]
        rank, world, accumulate = self._ranks()
        per_step = self.hparams.batch_size * world
        batches = max(1, total // per_step)
        if which == "train":  # whole optimizer steps per epoch, so that step * accumulate = batches seen
            batches = max(accumulate, batches - batches % accumulate)
        stream = ShardStream(
            urls, self.hparams.batch_size, batches,
            self.train_transform if which == "train" else self.val_transform, self.tokenizer,
            self.image_keys, self.hparams.caption_key,
            shuffle_buffer=self.hparams.shuffle_buffer if which == "train" else 0,
            resampled=self.hparams.resampled and which == "train", seed=self.hparams.seed, rank=rank, world_size=world,
            order_augment=self.hparams.order_augment and which == "train",
        )  # fmt: skip
        workers = self.hparams.num_workers
        kwargs = {"prefetch_factor": 4} if workers > 0 else {}
        return ShardLoader(stream, position, num_workers=workers, pin_memory=torch.cuda.is_available(), **kwargs)

    def train_dataloader(self) -> ShardLoader:
        """Training batches; each iteration starts at the batch after the last optimizer step (exact resume)."""
        trainer = self.trainer
        if trainer is None:
            return self._loader("train", lambda: 0)
        return self._loader("train", lambda: trainer.global_step * trainer.accumulate_grad_batches)

    def val_dataloader(self) -> ShardLoader | list:
        """Validation batches (the same ones every pass), or none without ``val_data``."""
        if "val" not in self._built:
            return []
        return self._loader("val", lambda: 0)

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints, to warn when a resumed run reads different data."""
        return {"train_data": self.hparams.train_data, "num_workers": self.hparams.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Warn (rank-local, no collective) when the data order cannot match the checkpoint's run."""
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        if fitting and state.get("num_workers") not in (None, self.hparams.num_workers):
            log.warning("resuming with num_workers=%s (checkpoint: %s): the data order differs from the first run",
                        self.hparams.num_workers, state.get("num_workers"))  # fmt: skip
