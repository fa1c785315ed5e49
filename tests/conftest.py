"""Fixtures shared by the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from clipprobe.data.corpus import CorpusConfig, generate_corpus


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared machine more threads spin and run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """96 samples of 1-3 objects at 32 px in 4 shards (2 per rank under 2-process DDP)."""
    out = tmp_path_factory.mktemp("corpus") / "c"
    generate_corpus(CorpusConfig(96, (1, 2, 3), "size_first", 1.0, 0.0, 32, 24, 0, 90), out, workers=1, progress=False)
    return str(out / "{00000..00003}.tar")
