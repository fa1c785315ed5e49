"""What the experiments vary (issue 15): the text tower's attention mask, pooling and positional embedding, and
caption-order augmentation of the corpus captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clipprobe.data.corpus import CorpusConfig, caption, generate_corpus, reordered_caption
from clipprobe.data.shards import ShardStream, check_order_metadata
from clipprobe.errors import UserError
from clipprobe.models import create_random_model
from clipprobe.training.module import CLIPModule, drop_text_positions


def _texts(model_name: str, texts: list[str], model: torch.nn.Module | None = None) -> torch.Tensor:
    import open_clip

    model = model or create_random_model(model_name)
    with torch.no_grad():
        return model.encode_text(open_clip.get_tokenizer(model_name)(texts))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("arch", "causal", "pool"),
    [("clipprobe-tiny", True, "argmax"), ("clipprobe-tiny-bidir", False, "argmax"),
     ("clipprobe-tiny-bidir-first", False, "first"), ("clipprobe-tiny-last", True, "last")],
)  # fmt: skip
def test_text_tower_variants(arch: str, causal: bool, pool: str) -> None:
    torch.manual_seed(0)
    model = create_random_model(arch)
    assert (model.attn_mask is not None) == causal and model.text_pool_type == pool  # type: ignore[union-attr]
    base = create_random_model("clipprobe-tiny")
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in base.named_parameters()]  # same weights


def test_first_token_pooling_needs_the_bidirectional_mask() -> None:
    """With a causal mask the first token sees only itself: its embedding is the same for every caption."""
    import open_clip

    torch.manual_seed(0)
    model = create_random_model("clipprobe-tiny")
    model.text_pool_type = "first"  # type: ignore[union-attr]
    emb = _texts("clipprobe-tiny", ["a dog and a cat", "a red bus"], model)
    assert torch.allclose(emb[0], emb[1])
    emb = _texts("clipprobe-tiny-bidir-first", ["a dog and a cat", "a red bus"])
    assert not torch.allclose(emb[0], emb[1])
    assert open_clip.get_tokenizer("clipprobe-tiny-bidir-first") is not None


def test_bidirectional_without_positions_is_order_invariant() -> None:
    """The control of the architecture conditions: no mask and no positions leave no way to tell mention order;
    a causal mask alone still does (a token knows how many tokens precede it)."""
    torch.manual_seed(0)
    texts = ["a dog and a cat and a bus", "a bus and a cat and a dog"]
    free = create_random_model("clipprobe-tiny-bidir")
    drop_text_positions(free)
    emb = _texts("clipprobe-tiny-bidir", texts, free)
    assert torch.allclose(emb[0], emb[1], atol=1e-5)
    causal = create_random_model("clipprobe-tiny")
    drop_text_positions(causal)
    emb = _texts("clipprobe-tiny", texts, causal)
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def test_text_pos_embed_none_is_zero_frozen_and_survives_loading(tmp_path: Path) -> None:
    from clipprobe.models.load import load_model

    torch.manual_seed(0)
    module = CLIPModule("clipprobe-tiny", text_pos_embed="none")
    pos = module.model.positional_embedding
    assert not pos.requires_grad and torch.count_nonzero(pos) == 0
    assert all(p is not pos for p in module.model.parameters() if p.requires_grad)  # not optimised
    # a loader that knows only the architecture rebuilds the same function: the zeros are in the weights
    meta = {"arch": "clipprobe-tiny", "step": 1, "samples_seen": 1, "epoch": 0}
    torch.save({"state_dict": module.model.state_dict(), "clipprobe": meta}, tmp_path / "m.pt")
    loaded = load_model("clipprobe-tiny", str(tmp_path / "m.pt")).model
    texts = ["a dog and a cat", "a cat and a dog"]
    assert torch.allclose(_texts("clipprobe-tiny", texts, loaded), _texts("clipprobe-tiny", texts, module.model))
    with pytest.raises(UserError, match="not one of learned, none"):
        CLIPModule("clipprobe-tiny", text_pos_embed="sinusoidal")  # type: ignore[arg-type]


# -- caption-order augmentation -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "c"
    generate_corpus(CorpusConfig(60, (2, 3), "size_first", 1.0, 0.0, 32, 60, 0, 90), out, workers=1, progress=False)
    return out


def test_reordered_caption_keeps_the_template() -> None:
    meta = {"mentioned": ["dog", "hot dog", "bus"], "template": 3}
    meta["caption"] = caption(meta["mentioned"], 3)
    assert reordered_caption(meta, [2, 0, 1]) == caption(["bus", "dog", "hot dog"], 3)
    assert reordered_caption(meta, [0, 1, 2]) == meta["caption"]
    sized = {**meta, "caption": caption(["large dog", "hot dog", "small bus"], 3), "objects": ["bus", "dog", "hot dog"],
             "areas": [5, 90, 40]}  # fmt: skip
    assert reordered_caption(sized, [2, 0, 1]) == caption(["small bus", "large dog", "hot dog"], 3)  # words follow
    assert reordered_caption({**sized, "areas": None}, [2, 0, 1]) is None  # size words it cannot place
    assert reordered_caption({**meta, "caption": "a dog, edited"}, [0, 1, 2]) is None
    assert reordered_caption({"caption": "a dog"}, [0]) is None


def _stream(corpus: Path, augment: bool, seed: int = 0) -> ShardStream:
    return ShardStream([str(corpus / "00000.tar")], 20, 3, lambda im: torch.zeros(1), lambda t: t, ["jpg"], "txt",
                       shuffle_buffer=0, seed=seed, order_augment=augment)  # fmt: skip


def test_order_augment_permutes_the_mentions_per_batch_deterministically(corpus: Path) -> None:
    metas = {}
    import webdataset as wds

    for s in wds.tarfile_samples(iter([{"url": str(corpus / "00000.tar")}])):
        m = json.loads(s["json"])
        metas[s["txt"].decode()] = m
    plain = [t for b in _stream(corpus, False) for t in b["text"]]
    mixed = [t for b in _stream(corpus, True) for t in b["text"]]
    again = [t for b in _stream(corpus, True) for t in b["text"]]
    assert mixed == again and mixed != plain  # same seed, same permutations
    assert all(metas[p]["largest_first"] for p in plain)  # the corpus names the largest first
    for p, m in zip(plain, mixed, strict=True):
        meta = metas[p]
        orders = [list(o) for o in __import__("itertools").permutations(range(len(meta["mentioned"])))]
        assert m in {reordered_caption(meta, o) for o in orders}  # a permutation of the same mentions
    firsts = sum(m == p for p, m in zip(plain, mixed, strict=True))
    assert firsts < len(plain)  # many captions changed order


def test_order_augment_refuses_shards_without_corpus_metadata(tmp_path: Path, corpus: Path) -> None:
    import webdataset as wds

    check_order_metadata(str(corpus / "00000.tar"))
    with wds.TarWriter(str(tmp_path / "plain.tar")) as sink:
        sink.write({"__key__": "a", "jpg": (corpus / "00000.tar").read_bytes()[:10], "txt": b"a dog and a cat"})
    with pytest.raises(UserError, match="--data.order_augment needs shards of 'clipprobe data corpus'"):
        check_order_metadata(str(tmp_path / "plain.tar"))
