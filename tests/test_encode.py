"""CachedEncoder: each unique input encoded once, batching changes nothing, outputs normalised float32 CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipprobe.errors import UserError
from clipprobe.models.load import load_model
from clipprobe.probes.base import Encoder
from clipprobe.probes.encode import CachedEncoder


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("clipprobe-tiny")


class Spy:
    """Records how many rows each model call receives."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.text_rows: list[int] = []
        self.image_rows: list[int] = []
        self._text, self._image = model.encode_text, model.encode_image
        model.encode_text = self.encode_text
        model.encode_image = self.encode_image
        self.model = model

    def encode_text(self, tokens, **kw):
        self.text_rows.append(tokens.shape[0])
        return self._text(tokens, **kw)

    def encode_image(self, pixels, **kw):
        self.image_rows.append(pixels.shape[0])
        return self._image(pixels, **kw)

    def restore(self) -> None:
        del self.model.encode_text, self.model.encode_image


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 0), (0, 90, 160)]):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        im = Image.new("RGB", (80, 80), (230, 230, 230))
        im.paste(Image.new("RGB", (20 + 8 * i, 30), colour), (5 * i, 10 + 4 * i))
        im.save(p)
        paths.append(p)
    return paths


def test_matches_direct_model_and_is_normalised(tiny):
    enc = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, progress=False)
    assert isinstance(enc, Encoder)
    texts = ["a cat and a dog", "pizza", "a dog and a cat"]
    out = enc.encode_texts(texts)
    with torch.no_grad():
        ref = F.normalize(tiny.model.encode_text(tiny.tokenizer(texts)).float(), dim=-1)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (3, 64)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))


def test_each_unique_text_encoded_once_within_and_across_calls(tiny):
    spy = Spy(tiny.model)
    try:
        enc = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, batch_size=2, progress=False)
        first = enc.encode_texts(["apple", "pear", "apple", "fig", "pear"])
        assert enc.texts_encoded == 3 and sum(spy.text_rows) == 3 and enc.text_calls == 2  # batches of 2: [2, 1]
        again = enc.encode_texts(["fig", "apple", "kiwi", "kiwi"])
        assert enc.texts_encoded == 4 and sum(spy.text_rows) == 4 and enc.text_calls == 3
        torch.testing.assert_close(again[0], first[3])
        torch.testing.assert_close(again[1], first[0])
        torch.testing.assert_close(again[2], again[3])
        enc.encode_texts(["pear", "fig"])  # all cached: no model call
        assert enc.text_calls == 3 and sum(spy.text_rows) == 4
        assert enc.counters()["texts_encoded"] == 4
    finally:
        spy.restore()


def test_batch_splitting_changes_nothing(tiny, images):
    texts = [f"object {i} and object {i + 1}" for i in range(11)]
    big = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, batch_size=256, progress=False)
    small = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, batch_size=3, progress=False)
    torch.testing.assert_close(small.encode_texts(texts), big.encode_texts(texts), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.encode_images(images), big.encode_images(images), atol=1e-5, rtol=1e-5)
    assert small.text_calls == 4 and big.text_calls == 1 and small.image_calls == 2


def test_each_unique_image_encoded_once_by_resolved_path(tiny, images, monkeypatch):
    spy = Spy(tiny.model)
    try:
        enc = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, batch_size=4, progress=False)
        monkeypatch.chdir(images[0].parent)
        alias = images[0].parent / ".." / "img" / images[0].name  # same file, other spelling
        out = enc.encode_images([images[0], alias, "1.png", images[1], images[2]])
        assert enc.images_encoded == 3 and sum(spy.image_rows) == 3 and enc.image_calls == 1
        torch.testing.assert_close(out[0], out[1])
        torch.testing.assert_close(out[2], out[3])
        out2 = enc.encode_images(images)
        assert enc.images_encoded == 5 and sum(spy.image_rows) == 5
        torch.testing.assert_close(out2[:3], out[[0, 2, 4]])
        assert out2.dtype == torch.float32
        torch.testing.assert_close(out2.norm(dim=-1), torch.ones(5))
    finally:
        spy.restore()


def test_image_workers_give_the_same_embeddings(tiny, images):
    plain = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, batch_size=2, progress=False, num_workers=0)
    pooled = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, batch_size=2, progress=False, num_workers=2)
    torch.testing.assert_close(pooled.encode_images(images), plain.encode_images(images), atol=1e-6, rtol=1e-6)


def test_restores_training_mode_and_needs_no_grad(tiny):
    tiny.model.train()
    try:
        enc = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, progress=False)
        out = enc.encode_texts(["cat"])
        assert tiny.model.training and not out.requires_grad
        # Probes may fit a classifier on the embeddings: they must be usable in autograd.
        layer = torch.nn.Linear(out.shape[1], 2)
        layer(out).sum().backward()
        assert layer.weight.grad is not None
    finally:
        tiny.model.eval()


def test_missing_image_is_a_user_error(tiny, tmp_path):
    enc = CachedEncoder(tiny.model, tiny.preprocess, tiny.tokenizer, progress=False)
    with pytest.raises(UserError, match="does not exist"):
        enc.encode_images([tmp_path / "nope.png"])
    assert enc.images_encoded == 0 and enc.encode_texts([]).shape[0] == 0
