"""Tar shards through webdataset's public API: one URL expander and streaming readers.

- :func:`expand_urls` turns a shard spec (brace patterns, ``::`` lists, folders, ``pipe:`` commands,
  URLs) into shard URLs, failing with a :class:`~clipprobe.errors.UserError` when nothing matches.
- :func:`iter_shard` streams the samples of one shard with :func:`webdataset.tarfile_samples` and
  turns a shard that breaks off into one :class:`ShardReadError`, dropping the sample it was reading.
- :func:`iter_corpus_samples` streams a corpus written by ``clipprobe data corpus`` (or a split of
  one) sample by sample, shards in order: memory stays constant however large the corpus.

Neither Lightning nor W&B is imported here: :mod:`clipprobe.analysis` reads shards through this module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

from clipprobe.errors import UserError

CorpusSample = TypedDict("CorpusSample", {"__key__": str, "__url__": str, "jpg": bytes, "txt": str, "json": Any})
"""One sample of a clipprobe corpus: key, shard URL, JPEG bytes, caption, parsed ``key.json``."""


def is_local(url: str) -> bool:
    """Whether ``url`` names a local file (a plain path or ``file:path``), not a ``pipe:`` command or a remote URL."""
    return "://" not in url and not url.startswith("pipe:")


def expand_urls(spec: str | Sequence[str], option: str = "--shards") -> list[str]:
    """Shard URLs from a spec: brace patterns (``/data/{00000..00099}.tar``) joined by ``::``, folders
    (their ``*.tar`` files, sorted), ``pipe:`` commands and remote URLs (passed as they are).

    ``${NAME}`` is replaced by the environment variable ``WDS_NAME``, as webdataset does.

    Args:
        spec: The spec, or a list of specs whose URLs are concatenated in order.
        option: The command-line option the spec came from, named in error messages.

    Returns:
        The URLs in the order given; a folder's shards sorted by name.

    Raises:
        UserError: the spec names no shard, a local shard does not exist, or ``${NAME}`` has no ``WDS_NAME``.
    """
    import webdataset as wds

    parts = spec.split("::") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            expanded = list(wds.SimpleShardList(part).urls)  # webdataset's expansion: ::, ${...}, braces
        except AssertionError as e:  # webdataset asserts that ${NAME} is set
            raise UserError(f"{option} {part!r}: ${{NAME}} reads WDS_NAME, which is not set ({e})") from None
        for url in expanded:
            folder = Path(url.removeprefix("file:"))
            if is_local(url) and folder.is_dir():
                urls.extend(sorted(str(p) for p in folder.glob("*.tar")))
            else:
                urls.append(url)
    if not urls:
        raise UserError(f"{option} {spec!r} names no shards; give a folder of .tar files or a pattern")
    missing = [u for u in urls if is_local(u) and not Path(u.removeprefix("file:")).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(urls)} shards not found, e.g. {missing[0]}; check {option} "
            "(brace patterns such as {00000..00009}.tar)"
        )
    return urls


class ShardReadError(Exception):
    """A shard could not be opened, or broke off (truncated, corrupt) after ``count`` whole samples.

    Attributes:
        url: The shard.
        count: Samples read before the failure.
        cause: The exception that stopped the read.
    """

    def __init__(self, url: str, count: int, cause: BaseException) -> None:
        self.url, self.count, self.cause = url, count, cause
        super().__init__(f"{url}: {type(cause).__name__}: {self.reason} (after {count} samples)")

    @property
    def reason(self) -> str:
        """The cause's message, without what webdataset appends to it (the stream and URL, already known)."""
        if isinstance(self.cause, OSError) and self.cause.strerror:  # args[0] of an OSError is its errno
            return self.cause.strerror
        text = str(self.cause.args[0]) if self.cause.args else str(self.cause)
        return text.partition(" @ <")[0]


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard, streamed with :func:`webdataset.tarfile_samples`.

    A sample is ``{"__key__", "__url__", ext: bytes, ...}`` with lower-case extensions, members
    grouped by key as webdataset groups them; samples come in the order stored.

    Args:
        url: A local path, ``file:`` path, ``pipe:`` command or URL (see :func:`webdataset.gopen`).

    Yields:
        The shard's samples.

    Raises:
        ShardReadError: the shard could not be opened or broke off. The sample being read then is
            dropped, complete or not: a stream that breaks off cannot tell.
    """
    import webdataset as wds

    failures: list[BaseException] = []

    def stop(exn: BaseException) -> bool:
        failures.append(exn)
        return False  # stop the shard: what follows a read error in a tar stream cannot be trusted

    source: dict[str, Any] = {"url": url}  # webdataset's opener adds the open "stream" here: we close it
    samples = wds.tarfile_samples(iter([source]), handler=stop)
    count = 0
    try:
        for sample in samples:
            if failures:  # the sample grouped when the read failed (webdataset still hands it over)
                break
            count += 1
            yield sample
        stream = source.pop("stream", None)
        if stream is not None:
            try:
                stream.close()  # a pipe: command's exit status is checked here
            except Exception as exn:
                failures.append(exn)
    finally:  # also when the consumer stops early: close quietly (a pipe then dies of SIGPIPE)
        stream = source.pop("stream", None)
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
    if failures:
        raise ShardReadError(url, count, failures[0])


def iter_corpus_samples(urls: str | Sequence[str]) -> Iterator[CorpusSample]:
    """Stream a corpus written by ``clipprobe data corpus`` (e.g. a held-out split), one sample at a time.

    Shards come in the order given (a folder's sorted by name) and samples in the order stored,
    which the corpus writer makes key order. Only one sample is held at a time.

    Args:
        urls: A shard spec as :func:`expand_urls` reads it (a folder, ``corpus/{00000..00009}.tar``,
            ``a.tar::b.tar``), or a list of them.

    Yields:
        ``{"__key__", "__url__", "jpg": JPEG bytes, "txt": caption, "json": parsed key.json}``.

    Raises:
        UserError: no shard matches, a shard is unreadable or broke off, or a sample lacks its
            ``jpg``, ``txt`` or ``json`` member or has an undecodable caption or metadata.
    """
    for url in expand_urls(urls, option="the corpus path"):
        try:
            for sample in iter_shard(url):
                key = sample["__key__"]
                missing = [ext for ext in ("jpg", "txt", "json") if ext not in sample]
                if missing:
                    raise UserError(f"sample {key} in {url} has no {', '.join(missing)}; is it a clipprobe corpus?")
                try:
                    text, meta = sample["txt"].decode("utf-8"), json.loads(sample["json"])
                except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                    raise UserError(f"sample {key} in {url} is not readable ({e}); regenerate the corpus") from None
                yield {"__key__": key, "__url__": url, "jpg": sample["jpg"], "txt": text, "json": meta}
        except ShardReadError as e:
            raise UserError(f"corpus shard {e}; regenerate the corpus") from None
