"""clipprobe.data.tars: the shard spec expander and the streaming tar readers."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from clipprobe.data.corpus import CorpusConfig, generate_corpus
from clipprobe.data.tars import ShardReadError, expand_urls, iter_corpus_samples, iter_shard
from clipprobe.errors import UserError


def _tar(path: Path, keys: list[str], parts: dict[str, bytes] | None = None) -> Path:
    with wds.TarWriter(str(path), mtime=0) as w:
        for key in keys:
            w.write({"__key__": key, **(parts or {"jpg": b"\xff\xd8" * 500, "txt": key.encode(), "json": b"{}"})})
    return path


# ---------------------------------------------------------------------------------------------
# expand_urls


def test_expand_urls_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "00000_stats.json").write_text("{}")
    names = [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    assert expand_urls(f"{tmp_path}/{{00000..00001}}.tar:: {tmp_path}/00002.tar") == names  # braces, :: lists
    assert expand_urls(str(tmp_path)) == names  # a folder: its .tar files, sorted
    assert expand_urls([f"{tmp_path}/00002.tar", f"file:{tmp_path}/{{00000..00001}}.tar"]) == [
        names[2], f"file:{names[0]}", f"file:{names[1]}",
    ]  # fmt: skip
    remote = expand_urls("pipe:cat x.tar::https://host/{0..1}.tar::s3://b/0.tar")  # passed as they are
    assert remote == ["pipe:cat x.tar", "https://host/0.tar", "https://host/1.tar", "s3://b/0.tar"]
    monkeypatch.setenv("WDS_ROOT", str(tmp_path))
    assert expand_urls("${ROOT}/00001.tar") == [names[1]]  # webdataset's ${NAME} -> $WDS_NAME


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ROOT/{00000..00004}.tar", r"2 of 5 shards not found, e\.g\. .*00003\.tar; check --train"),
        ("ROOT/empty", "--train .* names no shards"),
        (" :: ", "names no shards"),
        ("${NO_SUCH_VARIABLE_XYZ}/a.tar", "WDS_NO_SUCH_VARIABLE_XYZ"),
    ],
)
def test_expand_urls_errors(tmp_path: Path, spec: str, message: str) -> None:
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=message):
        expand_urls(spec.replace("ROOT", str(tmp_path)), option="--train")


# ---------------------------------------------------------------------------------------------
# iter_shard


def test_iter_shard_groups_samples(tmp_path: Path) -> None:
    _tar(tmp_path / "a.tar", ["k0", "k1"])
    samples = list(iter_shard(str(tmp_path / "a.tar")))
    assert [s["__key__"] for s in samples] == ["k0", "k1"] and samples[1]["txt"] == b"k1"
    assert {k for k in samples[0] if not k.startswith("__")} == {"jpg", "txt", "json"}
    assert [s["__key__"] for s in iter_shard(f"pipe:cat {tmp_path / 'a.tar'}")] == ["k0", "k1"]


def test_iter_shard_drops_the_sample_it_was_reading(tmp_path: Path) -> None:
    path = _tar(tmp_path / "a.tar", [f"k{i}" for i in range(5)])
    with tarfile.open(path) as tar:
        cut = tar.getmember("k3.jpg").offset_data + 100  # inside k3's image
    path.write_bytes(path.read_bytes()[:cut])
    keys = []
    with pytest.raises(ShardReadError) as e:
        for sample in iter_shard(str(path)):
            keys.append(sample["__key__"])
    # k2 was complete, but a stream that breaks off cannot tell: it goes with k3
    assert keys == ["k0", "k1"] and e.value.count == 2 and e.value.url == str(path)
    assert str(e.value) == f"{path}: ReadError: unexpected end of data (after 2 samples)"
    with pytest.raises(ShardReadError, match="FileNotFoundError: No such file or directory .after 0 samples."):
        list(iter_shard(str(tmp_path / "missing.tar")))
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(ShardReadError, match="ReadError"):
        list(iter_shard(str(tmp_path / "junk.tar")))


# ---------------------------------------------------------------------------------------------
# iter_corpus_samples


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 samples at 32 px in 3 shards (10, 10, 5)."""
    out = tmp_path_factory.mktemp("tars") / "c"
    generate_corpus(CorpusConfig(25, (1, 2, 3), "size_first", 1.0, 0.0, 32, 10, 0, 90), out, workers=1, progress=False)
    return out


def _read_all(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every member of every shard, read whole with tarfile (the reference)."""
    files: dict[str, dict[str, bytes]] = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                files.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return files


def test_iter_corpus_samples_streams_in_key_order(corpus_dir: Path) -> None:
    reference = _read_all(corpus_dir)
    samples = list(iter_corpus_samples(str(corpus_dir)))
    keys = [s["__key__"] for s in samples]
    assert keys == sorted(reference) and len(keys) == 25 and keys[10] == "000010000"
    for s in samples:
        ref = reference[s["__key__"]]
        assert s["jpg"] == ref["jpg"] and s["txt"] == ref["txt"].decode() and s["json"] == json.loads(ref["json"])
        assert s["json"]["key"] == s["__key__"] and s["__url__"].endswith(f"{s['__key__'][:5]}.tar")
    # a brace pattern or a list of shards: the same stream; shards in the order given
    assert [s["__key__"] for s in iter_corpus_samples(f"{corpus_dir}/{{00000..00002}}.tar")] == keys
    later = [str(corpus_dir / "00002.tar"), str(corpus_dir / "00000.tar")]
    assert [s["__key__"] for s in iter_corpus_samples(later)] == keys[20:] + keys[:10]


def test_iter_corpus_samples_is_lazy_and_fails_loudly(corpus_dir: Path, tmp_path: Path) -> None:
    """Samples come before a later shard is opened; a broken or foreign shard is a UserError."""
    (tmp_path / "00000.tar").write_bytes((corpus_dir / "00000.tar").read_bytes())
    data = (corpus_dir / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[: len(data) // 2])
    stream = iter_corpus_samples(str(tmp_path))
    assert [next(stream)["__key__"] for _ in range(10)] == [f"00000{i:04d}" for i in range(10)]
    with pytest.raises(UserError, match=r"00001\.tar: ReadError.*\(after \d samples\); regenerate"):
        list(stream)
    _tar(tmp_path / "other.tar", ["k0"], {"jpg": b"x", "txt": b"a dog"})
    with pytest.raises(UserError, match="sample k0 in .*other.tar has no json"):
        list(iter_corpus_samples(str(tmp_path / "other.tar")))
    _tar(tmp_path / "bad.tar", ["k0"], {"jpg": b"x", "txt": b"a dog", "json": b"{oops"})
    with pytest.raises(UserError, match="sample k0 .* not readable"):
        list(iter_corpus_samples(str(tmp_path / "bad.tar")))
