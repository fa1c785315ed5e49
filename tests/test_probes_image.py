"""Image probes with planted encoders (ior, i2tor, ioc), attention on a tiny ViT, and the suite."""

from __future__ import annotations

import math

import pytest
import torch
from planted_encoders import PlantedImageEncoder, PlantedTextEncoder, name_vectors, tiny_probe_set

from clipprobe.errors import UserError
from clipprobe.evaluation.runner import ModelInfo, Target, run_evaluation
from clipprobe.probes.base import ProbeContext
from clipprobe.probes.image import attention, box_weights, cls_patch_attention, i2tor, ioc, ior, role_order
from clipprobe.probes.suite import PROBES, available_probes, validate_probes

NAMES = [f"thing{i}" for i in range(8)]


def _scene_vectors(ps, vecs, rule):
    """path -> vector from the scene's objects in role order (large first)."""
    out = {}
    for s in ps.scenes:
        vs = [vecs[s.names[k]] for k in role_order(s)]
        out[str(ps.path(s))] = rule(vs)
    return out


def _image_encoder(ps, rule, names=NAMES):
    vecs = name_vectors(names)
    images = {str(p): v for p, v in zip(ps.references.values(), (vecs[n] for n in ps.references), strict=True)}
    images.update(_scene_vectors(ps, vecs, rule))
    return PlantedImageEncoder(names, images)


def _ctx(enc, ps, options=None, vocab=None):
    return ProbeContext(encoder=enc, probe_set=ps, vocab=vocab, options=options or {}, seed=0, progress=False)


def _weighted(vs):
    return 2 * vs[0] + sum(vs[1:], torch.zeros_like(vs[0]))


def test_ior_planted_large_object_encoder(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3, 4), equal=True)
    enc = _image_encoder(ps, _weighted)
    r = ior(_ctx(enc, ps))
    for n in (2, 3, 4):
        assert r.metrics[f"n{n}/hit_rate"] == 1.0
        assert r.metrics[f"n{n}/large"] == 1.0 and r.counts[f"n{n}/large"] == 6 * n
        assert r.metrics[f"n{n}/small_1"] == 0.0
        assert r.metrics[f"n{n}/closest_large"] == 1.0 and r.metrics[f"n{n}/bias_index"] == pytest.approx(1.0)
        assert r.metrics[f"equal/n{n}/slot_1"] == 1.0  # equal scenes: the first slot carries the weight
    assert f"n4/small_{3}" in r.metrics and "n4/small_4" not in r.metrics
    assert enc.image_calls == 1 and not enc.text_calls
    enc.assert_unique()
    only_large = ior(_ctx(_image_encoder(ps, lambda vs: vs[0]), ps))
    assert only_large.metrics["n3/large_all"] == 1.0 and only_large.metrics["n3/closest_large"] == 1.0


def test_ior_matches_slow_reference(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(3,), per_slot=20)
    g = torch.Generator().manual_seed(3)
    weights = torch.tensor([1.0, 0.9, 0.8])
    enc = _image_encoder(
        ps, lambda vs: sum(w * v for w, v in zip(weights, vs, strict=True)) + 0.4 * torch.randn(256, generator=g)
    )
    r = ior(_ctx(enc, ps))
    refs = list(ps.references)
    ref_vecs = {n: torch.nn.functional.normalize(enc.image_vectors[str(ps.references[n])], dim=-1) for n in refs}
    hits, large_hits, closest_large, total = 0, 0, 0, 0
    for s in ps.scenes:
        e = torch.nn.functional.normalize(enc.image_vectors[str(ps.path(s))], dim=-1)
        sims = {n: float(e @ ref_vecs[n]) for n in refs}
        ranked = sorted(refs, key=lambda n: -sims[n])
        big = s.names[s.large_slot]
        hit = set(ranked[:3]) == set(s.names)
        total += 1
        hits += hit
        large_hits += hit and ranked[0] == big
        closest_large += max(s.names, key=lambda n: sims[n]) == big
    assert 0 < hits < total
    assert r.metrics["n3/hit_rate"] == pytest.approx(hits / total)
    assert r.metrics["n3/large"] == pytest.approx(large_hits / hits)
    assert r.metrics["n3/closest_large"] == pytest.approx(closest_large / total)


def test_i2tor_uses_name_texts(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3))
    enc = _image_encoder(ps, _weighted)
    r = i2tor(_ctx(enc, ps))
    assert r.metrics["n2/large"] == 1.0 and r.metrics["n3/hit_rate"] == 1.0
    assert enc.text_calls == 1 and enc.image_calls == 1 and sorted(enc.texts) == sorted(NAMES)
    with pytest.raises(UserError):  # scene objects missing from the vocabulary
        i2tor(_ctx(enc, ps, vocab=NAMES[:3]))


def test_ioc_planted_large_object_is_decodable(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=80)
    enc = _image_encoder(ps, lambda vs: vs[0])  # the scene is its large object, nothing else
    r = ioc(_ctx(enc, ps, {"epochs": 30, "lr": 0.05, "batch_size": 32}))
    for n in (2, 3):
        assert r.metrics[f"n{n}/acc_large"] == 1.0
        assert r.metrics[f"n{n}/acc_small"] < 0.5
        assert r.counts[f"n{n}/acc_large"] == n * 16  # n groups x 20% of 80
        assert r.metrics[f"n{n}/large1/acc_slot_1"] == 1.0
    assert enc.image_calls == 1
    again = ioc(_ctx(_image_encoder(ps, lambda vs: vs[0]), ps, {"epochs": 30, "lr": 0.05, "batch_size": 32}))
    assert again.metrics == r.metrics


def test_ioc_skips_small_groups(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=3)
    r = ioc(_ctx(_image_encoder(ps, _weighted), ps, {"epochs": 1}))
    assert not r.metrics and len(r.notes) == 2


def test_image_probes_need_a_probe_set():
    with pytest.raises(UserError):
        ior(_ctx(PlantedTextEncoder(NAMES), None))


# ---------------------------------------------------------------------------------------------
# attention


def test_box_weights():
    w = box_weights((16, 32, 32, 48), (64, 64), (64, 64), (4, 4))
    assert w[2, 1] == 1.0 and w.sum() == 1.0
    half = box_weights((0, 0, 8, 16), (64, 64), (64, 64), (4, 4))
    assert half[0, 0] == 0.5 and half.sum() == 0.5
    assert torch.equal(box_weights((32, 64, 64, 96), (128, 128), (64, 64), (4, 4)), w)  # resized
    cropped = box_weights((32, 0, 48, 16), (128, 64), (64, 64), (4, 4))  # 128x64: 32 px cropped each side
    assert cropped[0, 0] == 1.0 and cropped.sum() == 1.0


@pytest.fixture(scope="module")
def tiny_clip():
    import open_clip

    from clipprobe.models import register_configs

    register_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("clipprobe-tiny")
    return model.eval(), preprocess


def test_cls_patch_attention_matches_manual_computation(tiny_clip):
    model, _ = tiny_clip
    visual, last = model.visual, model.visual.transformer.resblocks[-1]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = cls_patch_attention(visual, last, images)
        x = visual._embeds(images)
        for blk in visual.transformer.resblocks[:-1]:
            x = blk(x)
        y = last.ln_1(x)
        q, k, _ = torch.nn.functional.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
        heads = last.attn.num_heads
        b, seq, d = q.shape
        q = q.reshape(b, seq, heads, d // heads).transpose(1, 2)
        k = k.reshape(b, seq, heads, d // heads).transpose(1, 2)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1).mean(1)  # [B, L, L]
        want = attn[:, 0, 1:] / attn[:, 0, 1:].sum(-1, keepdim=True)
    assert got.shape == (2, 4, 4)
    assert torch.allclose(got.reshape(2, -1), want, atol=1e-5)


class _ModelEncoder(PlantedTextEncoder):
    def __init__(self, model, preprocess):
        super().__init__(NAMES)
        self.model, self.preprocess = model, preprocess


def _write_scenes(ps):
    from PIL import Image

    for s in ps.scenes:
        path = ps.path(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (64, 64), (200, 200, 200))
        for o in s.objects:
            img.paste((40 * (o.slot + 1), 60, 90), o.bbox)
        img.save(path)


def test_attention_bookkeeping_with_a_planted_uniform_map(tmp_path, tiny_clip, monkeypatch):
    import clipprobe.probes.image as image_mod

    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=2, equal=True)
    _write_scenes(ps)
    monkeypatch.setattr(
        image_mod, "cls_patch_attention", lambda v, last, images: torch.full((len(images), 4, 4), 1 / 16)
    )
    r = attention(_ctx(_ModelEncoder(*tiny_clip), ps, {"batch_size": 3}))
    # Uniform attention: an object's share is its box area over the 64x64 canvas.
    assert r.metrics["n2/large"] == pytest.approx(31 * 31 / 4096)
    assert r.metrics["n2/small"] == pytest.approx(10 * 10 / 4096)
    assert r.metrics["n3/ratio"] == pytest.approx((20 * 20) / (6 * 6))
    assert r.counts["n3/large"] == 6 and r.counts["n3/small"] == 12
    assert r.metrics["equal/n3/slot_2"] == pytest.approx(6 * 6 / 4096)


def test_attention_on_a_tiny_vit(tmp_path, tiny_clip):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=2)
    _write_scenes(ps)
    r = attention(_ctx(_ModelEncoder(*tiny_clip), ps))
    assert 0 < r.metrics["n2/large"] < 1 and 0 < r.metrics["n2/small"] < 1
    assert r.metrics["n2/large"] + r.metrics["n2/small"] <= 1.0
    assert not r.notes


def test_attention_skips_without_a_vit(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=1)
    r = attention(_ctx(PlantedTextEncoder(NAMES), ps))
    assert not r.metrics and r.notes[0].startswith("skipped:")
    enc = _ModelEncoder(torch.nn.Module(), None)
    enc.model.visual = torch.nn.Linear(2, 2)
    assert "VisionTransformer" in attention(_ctx(enc, ps)).notes[0]


# ---------------------------------------------------------------------------------------------
# suite


def evaluate(enc, names, ps, vocab, options, seed=0):
    """The one evaluation function, on one target."""
    work = [(Target("t", ps, vocab), name) for name in names]
    return list(run_evaluation(enc, work, options, ModelInfo("m", {"kind": "random"}), seed=seed, progress=False))


def test_run_evaluation_text_and_image(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3))
    enc = _image_encoder(ps, _weighted)
    results = evaluate(enc, ["tor", "ior"], ps, None, {"tor": {"num_captions": 20}}, seed=1)
    assert [r.probe for r in results] == ["tor", "ior"]
    assert results[0].config["n"] == [2, 3]  # the probe set's counts
    assert results[0].options["num_captions"] == 20 and results[0].options["run_seed"] == 1
    assert results[1].metric("n3/large").value == 1.0
    assert set(available_probes()) == {
        "tor",
        "toc",
        "t2i",
        "mitigation",
        "size_claim",
        "ior",
        "i2tor",
        "ioc",
        "attention",
        "itm",
        "retrieval",
        "zeroshot_classification",
        "zeroshot_retrieval",
    }


@pytest.mark.parametrize(
    ("names", "options", "has_set"),
    [
        (["tor", "nope"], {}, True),
        (["tor"], {"nope": {}}, True),
        (["tor"], {"tor": {"bogus": 1}}, True),
        (["tor"], {"ior": {"x": 1}}, True),
        (["ior"], {}, False),
        (["tor", "tor"], {}, True),
        ([], {}, True),
        (["tor"], {"tor": "paper"}, True),
    ],
)
def test_validate_probes_rejects(names, options, has_set):
    with pytest.raises(UserError):
        validate_probes(names, options, has_probe_set=has_set)


def test_run_evaluation_validates_before_running():
    enc = PlantedTextEncoder(NAMES)
    with pytest.raises(UserError):
        evaluate(enc, ["tor", "toc"], None, NAMES, {"toc": {"epochs": "many"}})
    assert enc.text_calls == 0


# ---------------------------------------------------------------------------------------------
# every probe, through the real encoding engine, on a generated probe set


def test_all_probes_with_the_encoding_engine_are_deterministic(tmp_path, tiny_clip):
    import json

    import open_clip

    from clipprobe.data.generate import comco
    from clipprobe.data.probeset import ProbeSet
    from clipprobe.probes.encode import CachedEncoder

    names = ["airplane", "apple", "banana", "bus", "cat", "clock", "dog", "pizza"]
    root = comco(out=str(tmp_path / "set"), objects=(2, 3), scenes_per_layout=6, image_size=64, names=names,
                 workers=1, progress=False)  # fmt: skip
    ps = ProbeSet.load(root)
    model, preprocess = tiny_clip
    options = {
        "tor": {"num_captions": 30},
        "toc": {"per_label": 5, "epochs": 1, "n": 3},
        "mitigation": {"num_captions": 30, "absent": 2},
        "size_claim": {"num_captions": 10, "n": [2]},
        "ioc": {"epochs": 1, "min_scenes": 5},
        "itm": {"absent": 2},
    }
    outputs = []
    for _run in range(2):  # a second run, with a fresh encoder, gives the same bytes
        enc = CachedEncoder(model, preprocess, open_clip.get_tokenizer("clipprobe-tiny"), "cpu", 64, progress=False)
        results = evaluate(enc, [p for p, spec in PROBES.items() if spec.by_default], ps, None, options, seed=3)
        outputs.append(json.dumps([[m.to_json() for m in r.metrics] + [r.config] for r in results], sort_keys=True))
        for r in results:
            assert r.metrics, (r.probe, r.notes)
            assert len({m.name for m in r.metrics}) == len(r.metrics), r.probe
        assert enc.images_encoded == len(ps.scenes) + len(ps.references)  # each image once, across probes
    assert outputs[0] == outputs[1]
