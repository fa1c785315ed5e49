"""ShardDataModule and ShardStream: splits, resume positions, faults, fail-fast checks."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipprobe.data.shards import ShardDataModule, ShardLoader, ShardStream, count_samples, expand_urls
from clipprobe.errors import UserError

pytestmark = pytest.mark.timeout(120)


def _jpg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 91 % 256, 128)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shard(path: Path, keys: list[str], files: dict[str, dict[str, bytes]] | None = None, stats: bool = True,
                truncate: int | None = None) -> Path:  # fmt: skip
    """A tar of samples ``key.jpg`` + ``key.txt`` (caption = key); ``files`` replaces a sample's members."""
    files = files or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, key in enumerate(keys):
            for ext, data in files.get(key, {"jpg": _jpg(i), "txt": key.encode()}).items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[:truncate] if truncate else data)
    if stats:
        path.with_name(path.stem + "_stats.json").write_text(json.dumps({"successes": len(keys)}))
    return path


def _shards(root: Path, n: int, per: int) -> str:
    for s in range(n):
        write_shard(root / f"{s:05d}.tar", [f"s{s}k{i:03d}" for i in range(per)])
    return str(root / f"{{00000..{n - 1:05d}}}.tar")


def _stream(spec: str, batches: int, batch_size: int = 2, **kw) -> ShardStream:
    """Captions come back as text (identity tokenizer), images as a 1-element tensor."""
    return ShardStream(expand_urls(spec), batch_size, batches, lambda im: torch.zeros(1), list, ["jpg"], "txt", **kw)


def _texts(loader) -> list[list[str]]:
    return [b["text"] for b in loader]


def test_expand_and_count(tmp_path: Path) -> None:
    spec = _shards(tmp_path, 3, 4)
    urls = expand_urls(spec)
    assert [Path(u).name for u in urls] == ["00000.tar", "00001.tar", "00002.tar"]
    assert count_samples(urls) == 12
    assert count_samples(urls + ["pipe:cat x.tar"]) is None


@pytest.mark.parametrize("workers", [0, 2])
def test_any_start_gives_the_same_batches(tmp_path: Path, workers: int) -> None:
    spec = _shards(tmp_path, 3, 10)
    stream = _stream(spec, batches=7, shuffle_buffer=5, seed=3)
    full = []
    for start in (0, 7):  # two epochs
        full += _texts(ShardLoader(stream, lambda s=start: s, num_workers=workers))
    assert len(full) == 14 and all(len(b) == 2 for b in full)
    for start in (3, 9):
        tail = _texts(ShardLoader(stream, lambda s=start: s, num_workers=workers))
        assert tail == full[start : (start // 7 + 1) * 7]


def test_epochs_differ_and_seeds_matter(tmp_path: Path) -> None:
    spec = _shards(tmp_path, 4, 5)
    a = _texts(ShardLoader(_stream(spec, 10, shuffle_buffer=10), lambda: 0))
    b = _texts(ShardLoader(_stream(spec, 10, shuffle_buffer=10), lambda: 10))
    c = _texts(ShardLoader(_stream(spec, 10, shuffle_buffer=10, seed=1), lambda: 0))
    assert a != b and a != c
    # without a shuffle buffer an epoch of 20 samples is one pass, shards in a new order each epoch
    a, b = (sum(_texts(ShardLoader(_stream(spec, 10, shuffle_buffer=0), lambda s=s: s)), []) for s in (0, 10))
    assert sorted(a) == sorted(b) and len(set(a)) == 20 and a != b


def _epoch_over_2_ranks_x_2_workers(spec: str, total: int) -> list[list[str]]:
    """One epoch of ``total`` samples, batch size 1, no shuffling, as (rank 0's captions, rank 1's captions)."""
    per_rank = []
    for rank in range(2):
        stream = _stream(spec, batches=total // 2, batch_size=1, shuffle_buffer=0, rank=rank, world_size=2)
        per_rank.append(sum(_texts(ShardLoader(stream, lambda: 0, num_workers=2)), []))
    return per_rank


@pytest.mark.parametrize(("shards", "per_shard"), [(1, 12), (2, 6), (4, 4), (8, 4)])
def test_split_by_rank_and_worker_covers_each_sample_once(tmp_path: Path, shards: int, per_shard: int) -> None:
    """2 ranks x 2 workers = 4 slots, with fewer, as many and more shards than slots (no node splitter):
    when the shards split evenly over the slots, one epoch is exactly the data set, each sample once."""
    spec = _shards(tmp_path, shards, per_shard)
    everything = {f"s{s}k{i:03d}" for s in range(shards) for i in range(per_shard)}
    ranks = _epoch_over_2_ranks_x_2_workers(spec, len(everything))
    seen = Counter(ranks[0] + ranks[1])
    assert set(seen) == everything and set(seen.values()) == {1}
    assert len(ranks[0]) == len(ranks[1]) == len(everything) // 2


def test_uneven_split_repeats_and_drops_samples_by_design(tmp_path: Path) -> None:
    """3 shards of 4 samples over 4 slots (slot = rank * 2 + worker) cannot split evenly, so one epoch is
    not exactly the data set, by design: every slot yields the same number of batches per epoch (3 here),
    which keeps the DDP ranks in step and the round-robin batch order exact, and shards are split by slot.

    Slots 0 and 3 share shard 0 (slot 0 its even samples, slot 3 its odd ones: 2 each), so after two
    samples their streams cycle back to their first; slots 1 and 2 own shards 1 and 2 (4 samples each)
    and stop one short. So s0k000 and s0k001 come twice and s1k003 and s2k003 not at all.
    """
    spec = _shards(tmp_path, 3, 4)
    ranks = _epoch_over_2_ranks_x_2_workers(spec, 12)
    # the DataLoader interleaves a rank's two workers: batches alternate slot 2r and slot 2r + 1
    assert ranks[0] == ["s0k000", "s1k000", "s0k002", "s1k001", "s0k000", "s1k002"]
    assert ranks[1] == ["s2k000", "s0k001", "s2k001", "s0k003", "s2k002", "s0k001"]
    seen = Counter(ranks[0] + ranks[1])
    everything = {f"s{s}k{i:03d}" for s in range(3) for i in range(4)}
    assert everything - set(seen) == {"s1k003", "s2k003"}
    assert {k: n for k, n in seen.items() if n != 1} == {"s0k000": 2, "s0k001": 2}


def test_faults_are_skipped_and_counted(tmp_path: Path) -> None:
    write_shard(tmp_path / "00000.tar", ["a0", "a1", "a2", "a3"], files={
        "a1": {"jpg": b"not a jpeg at all", "txt": b"a1"},  # corrupt image
        "a2": {"jpg": _jpg(2), "json": b"{}"},  # no caption
    })  # fmt: skip
    write_shard(tmp_path / "00001.tar", ["b0", "b1", "b2"])
    write_shard(tmp_path / "00002.tar", [f"c{i}" for i in range(6)])
    with tarfile.open(tmp_path / "00002.tar") as tar:
        cut = tar.getmember("c3.jpg").offset_data + 300
    whole = (tmp_path / "00002.tar").read_bytes()
    (tmp_path / "00002.tar").write_bytes(whole[:cut])  # truncated inside c3's image
    # one pass holds 2 + 3 + 3 good samples; 3 passes without a shuffle buffer
    stream = _stream(str(tmp_path / "{00000..00002}.tar"), batches=24, batch_size=1, shuffle_buffer=0)
    batches = list(ShardLoader(stream, lambda: 0))
    texts = [t for b in batches for t in b["text"]]
    assert set(texts) == {"a0", "a3", "b0", "b1", "b2", "c0", "c1", "c2"} and len(texts) == 24
    # each pass: the corrupt jpg, the sample without caption, and the read error(s) of the truncated tar
    assert sum(int(b["skipped"]) for b in batches) >= 3 * 3
    stream = _stream(str(tmp_path / "00000.tar"), batches=4, batch_size=1, shuffle_buffer=0)
    assert sum(int(b["skipped"]) for b in ShardLoader(stream, lambda: 0)) == 2 * 2  # two passes, exact


def test_no_caption_anywhere_fails_fast(tmp_path: Path) -> None:
    for s in range(2):
        write_shard(
            tmp_path / f"{s:05d}.tar", ["k0", "k1"], files={k: {"jpg": _jpg(1), "caption": b"x"} for k in ("k0", "k1")}
        )
    dm = ShardDataModule(train_data=str(tmp_path / "{00000..00001}.tar"), num_workers=0)
    with pytest.raises(UserError, match="caption under key 'txt'.*caption, jpg"):
        dm.setup("fit")
    stream = _stream(str(tmp_path / "{00000..00001}.tar"), batches=2)  # the stream itself raises, never spins
    with pytest.raises(RuntimeError, match="no sample with an image"):
        list(ShardLoader(stream, lambda: 0))


def test_datamodule_user_errors(tmp_path: Path) -> None:
    spec = _shards(tmp_path, 2, 4)
    with pytest.raises(UserError, match="not found"):
        ShardDataModule(train_data=str(tmp_path / "{00000..00004}.tar")).setup("fit")
    with pytest.raises(UserError, match="no train shards"):
        ShardDataModule().setup("fit")
    (tmp_path / "00001_stats.json").unlink()
    with pytest.raises(UserError, match="num_samples"):
        ShardDataModule(train_data=spec).setup("fit")
    dm = ShardDataModule(train_data=spec, num_samples=8, batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["text"].shape == (2, 77)
    assert len(dm.train_dataloader()) == 4


def test_pipe_urls_and_resampled(tmp_path: Path) -> None:
    _shards(tmp_path, 2, 4)
    spec = f"pipe:cat {tmp_path}/{{00000..00001}}.tar"
    dm = ShardDataModule(train_data=spec, num_samples=8, batch_size=2, num_workers=0, resampled=True, seed=5)
    dm.setup("fit")
    stream = _stream(spec, batches=6, resampled=True, seed=5)
    a = _texts(ShardLoader(stream, lambda: 0))
    assert a == _texts(ShardLoader(stream, lambda: 0)) and len(a) == 6
    assert len(list(dm.train_dataloader())) == 4
