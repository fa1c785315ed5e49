"""Held-out image-to-caption retrieval (docs/PROBES.md, section 5): ``retrieval``.

Does the model still do its job? Each held-out image is matched against the captions of its batch of
``batch`` consecutive samples: recall@k is the share of images whose own caption is among the k most
similar (chance ``k / batch``). A retrieved caption counts as right when its text equals the image's
caption (duplicates in a batch). The held-out corpus (shards written by ``clipprobe data corpus``) is
read once into the cache as image files, so the encoder encodes each image once per evaluation and
the training callback keeps the preprocessed images across evaluations.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext, ProbeResult, register
from clipprobe.probes.common import check_option, encode_unique, parse_options, probe_options
from clipprobe.probes.stats import put_share

CAPTIONS = "captions.jsonl"


@probe_options("retrieval")
@dataclass
class RetrievalOptions:
    """Options of ``retrieval``.

    Attributes:
        shards: the held-out corpus: a folder of shards or a brace pattern (``/data/heldout/{00000..00003}.tar``).
        batch: samples per retrieval batch (chance recall@1 = 1 / batch); a last partial batch is left out.
        max_samples: use only the first this many samples (default: all).
    """

    shards: str = ""
    batch: int = 100
    max_samples: int | None = None

    def __post_init__(self) -> None:
        check_option(self, "batch", self.batch >= 2, "at least 2")
        check_option(self, "max_samples", self.max_samples is None or self.max_samples >= self.batch,
                     "at least batch")  # fmt: skip


def heldout_files(shards: str, cache_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """The held-out samples as cached image files and their captions, in corpus order.

    The cache folder is named after the shards' paths, sizes and modification times, so a rewritten
    corpus is read again; it is written under a temporary name and renamed when complete.

    Raises:
        UserError: no shards, or a shard that cannot be read.
    """
    from clipprobe.data.generate import default_cache_dir
    from clipprobe.data.tars import expand_urls, is_local, iter_corpus_samples
    from clipprobe.fileio import staged_dir

    urls = expand_urls(shards, option="retrieval.shards")
    digest = hashlib.sha256()
    for url in urls:
        stat = os.stat(url) if is_local(url) else None
        digest.update(f"{Path(url).resolve() if stat else url}:{stat and stat.st_size}:{stat and stat.st_mtime_ns}\n"
                      .encode())  # fmt: skip
    root = Path(cache_dir) if cache_dir else default_cache_dir().parent / "heldout"
    folder = root / digest.hexdigest()[:16]
    if not (folder / CAPTIONS).is_file():
        with staged_dir(folder) as stage:
            with (stage / CAPTIONS).open("w", encoding="utf-8") as f:
                for i, sample in enumerate(iter_corpus_samples(urls)):
                    name = f"{i:07d}.jpg"
                    (stage / name).write_bytes(sample["jpg"])
                    f.write(json.dumps({"file": name, "key": sample["__key__"], "caption": sample["txt"]}) + "\n")
    rows = [json.loads(line) for line in (folder / CAPTIONS).read_text(encoding="utf-8").splitlines()]
    return [str(folder / r["file"]) for r in rows], [r["caption"] for r in rows]


@register(
    "retrieval",
    needs_probe_set=False,
    summary="Held-out image-to-caption recall@1/@5 within batches.",
    by_default=False,
)
def retrieval(ctx: ProbeContext) -> ProbeResult:
    """Recall@1 and @5 (family ``recall``, key the k) of held-out images among their batch's captions."""
    opts = parse_options(RetrievalOptions, ctx.options, "retrieval")
    if not opts.shards:
        raise UserError("probe retrieval needs a held-out corpus; pass options {retrieval: {shards: DIR}}")
    paths, captions = heldout_files(opts.shards)
    if opts.max_samples is not None:
        paths, captions = paths[: opts.max_samples], captions[: opts.max_samples]
    whole = len(paths) - len(paths) % opts.batch  # whole batches only: chance is k / batch
    if whole == 0:
        raise UserError(f"retrieval: {len(paths)} held-out samples, fewer than one batch of {opts.batch}")
    images = ctx.encoder.encode_images(paths[:whole])  # [N, D]
    texts, row = encode_unique(ctx.encoder.encode_texts, captions[:whole])
    hits = {1: 0, 5: 0}
    for lo in range(0, whole, opts.batch):
        caps = captions[lo : lo + opts.batch]
        sims = images[lo : lo + opts.batch] @ texts[[row[c] for c in caps]].T  # [B, B]
        ranked = sims.topk(min(5, opts.batch), dim=1).indices.tolist()  # [B, 5] caption indices
        for i, top in enumerate(ranked):
            right = [caps[j] == caps[i] for j in top]
            hits[1] += right[0]
            hits[5] += any(right)
    result = ProbeResult("retrieval", config={**asdict(opts), "num_samples": whole})
    for k, h in hits.items():
        put_share(result, f"recall@{k}", h, whole, family="recall", key=str(k), chance=min(1.0, k / opts.batch))
    return result
