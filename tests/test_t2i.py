"""The t2i probe (issue 16): planted generators give the planted answer, images are drawn once, bad generators are
one-line errors, and a tiny random-weight diffusers pipeline built here from config runs through it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from t2i_planted import NAMES, ColourEncoder

from clipprobe.errors import UserError
from clipprobe.probes.base import ProbeContext
from clipprobe.probes.suite import PROBES


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache" / "probesets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def run(encoder, **options) -> dict:  # noqa: ANN001
    result = PROBES["t2i"].fn(ProbeContext(encoder, None, list(NAMES), options, 0, False))
    return {"entries": {m.name: m for m in result.entries}, "config": result.config, "notes": result.notes}


def test_first_large_generator_gives_the_first_object(cache: Path) -> None:
    out = run(ColourEncoder(), pipeline="t2i_planted:first_large", num_sets=5)
    e = out["entries"]
    assert e["n2/prominent_1"].value == 1.0 and e["n2/prominent_2"].value == 0.0
    assert e["n2/prominent_1"].count == 5 * 2 * 2 * 2  # sets x orders x templates x images
    assert e["n2/first_minus_last"].value == 1.0 and e["bare/n2/prominent_1"].value == 1.0
    assert e["n2/found_1"].value == 1.0 and e["n2/found_2"].value == 1.0
    assert out["config"]["generator"] == {"kind": "plugin", "name": "t2i_planted:first_large"}
    assert out["config"]["num_images"] == 40 and len(list(Path(out["config"]["images"]).glob("*.png"))) == 40


def test_order_blind_generator_gives_no_effect() -> None:
    out = run(ColourEncoder(), pipeline="t2i_planted:order_blind", num_sets=5, n=3, templates=["bare"])
    e = out["entries"]
    # every set in all 3! orders: the (alphabetically first) large object is named first in a third of them
    assert math.isclose(e["n3/prominent_1"].value, 1 / 3) and math.isclose(e["n3/first_minus_last"].value, 0.0)
    lo, hi = e["n3/first_minus_last"].interval
    assert lo < 0 < hi


def test_images_are_drawn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import t2i_planted

    calls = []
    real = t2i_planted.first_large()
    monkeypatch.setattr(t2i_planted, "first_large", lambda: lambda *a: calls.append(a) or real(*a))
    first = run(ColourEncoder(), pipeline="t2i_planted:first_large", num_sets=2, templates=["bare"])
    assert len(calls) == 2 * 2 * 2
    again = run(ColourEncoder(), pipeline="t2i_planted:first_large", num_sets=2, templates=["bare"])
    assert len(calls) == 8 and again["entries"]["n2/prominent_1"].value == first["entries"]["n2/prominent_1"].value
    run(ColourEncoder(), pipeline="t2i_planted:first_large", num_sets=2, templates=["bare"], images_per_prompt=3)
    assert len(calls) == 8 + 2 * 2 * 3  # other settings: another folder


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "t2i needs a generator"),
        ({"pipeline": "no_such_module:factory"}, "cannot import it"),
        ({"pipeline": "org/no-such-pipeline"}, "cannot be loaded"),
        ({"pipeline": "t2i_planted:first_large", "n": 4}, "t2i.n=4 is out of range"),
    ],
)
def test_bad_generators_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        run(ColourEncoder(), **options)
    assert "\n" not in str(e.value)


def _tiny_sd_pipeline(folder: Path) -> Path:
    """A Stable Diffusion pipeline with tiny random weights, built from config (nothing downloaded): its
    CLIP tokenizer files are written from open_clip's own BPE vocabulary."""
    import gzip

    import open_clip
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    bpe = Path(open_clip.tokenizer.default_bpe())
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    tok_dir = folder / "tok"
    tok_dir.mkdir(parents=True)
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # open_clip's -> HF's names
    vocab = {special.get(k, k): v for k, v in open_clip.tokenizer.SimpleTokenizer().encoder.items()}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77))  # fmt: skip
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=32)  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32)  # fmt: skip
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def test_a_tiny_diffusers_pipeline_runs_through_the_probe(tmp_path: Path) -> None:
    """Plumbing: a real diffusers pipeline folder, loaded by the probe, scored by a real tiny CLIP."""
    from clipprobe.models.load import load_model
    from clipprobe.probes.encode import CachedEncoder

    folder = _tiny_sd_pipeline(tmp_path)
    loaded = load_model("clipprobe-tiny")
    enc = CachedEncoder(loaded.model, loaded.preprocess, loaded.tokenizer, "cpu", 16, progress=False)
    out = run(enc, pipeline=str(folder), num_sets=2, templates=["bare"], images_per_prompt=1, steps=2, size=16)
    gen = out["config"]["generator"]
    assert (
        gen["kind"] == "folder" and gen["pipeline"] == "StableDiffusionPipeline" and gen["scheduler"] == "DDIMScheduler"
    )
    e = out["entries"]
    assert e["n2/prominent_1"].count == 4 and math.isclose(e["n2/prominent_1"].value + e["n2/prominent_2"].value, 1.0)
    from PIL import Image

    with Image.open(next(Path(out["config"]["images"]).glob("*.png"))) as im:
        assert im.size == (16, 16)


def test_a_pipeline_that_is_not_text_to_image_is_refused(tmp_path: Path) -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "uncond")
    with pytest.raises(UserError, match="is not a text-to-image pipeline"):
        run(ColourEncoder(), pipeline=str(tmp_path / "uncond"))


def test_eval_t2i_model_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from clipprobe.cli import main

    vocab = tmp_path / "names.txt"
    vocab.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / "results"
    argv = ["eval", "--model", "clipprobe-tiny", "--device", "cpu", "--progress", "false", "--probes", "t2i",
            "--t2i_model", "t2i_planted:first_large", "--vocab", str(vocab), "--options",
            '{"t2i": {"num_sets": 2, "templates": ["bare"], "images_per_prompt": 1}}', "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    (path,) = out.glob("*__t2i__*.jsonl")
    rec = json.loads(path.read_text())
    assert rec["probe"] == "t2i" and rec["options"]["pipeline"] == "t2i_planted:first_large"
    assert rec["config"]["num_images"] == 4 and {m["name"] for m in rec["metrics"]} >= {"n2/prominent_1"}
    assert main([*argv, "--skip_existing", "true"]) == 0 and "skip" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "clipprobe-tiny", "--device", "cpu", "--probes", "tor", "--t2i_model", "x:y",
              "--out", str(tmp_path / "other")])  # fmt: skip
    assert e.value.code == 2 and "add t2i to --probes" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_changed_pipeline_folder_is_a_new_identity(tmp_path: Path) -> None:
    from clipprobe.evaluation.runner import asked_options

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    first = asked_options("t2i", {"pipeline": str(folder)}, 0)
    (folder / "model_index.json").write_text('{"changed": 1}')
    assert asked_options("t2i", {"pipeline": str(folder)}, 0)["pipeline_sha256"] != first["pipeline_sha256"]


def _tiny_owlvit(folder: Path, tokenizer_dir: Path) -> Path:
    """An OWL-ViT open-vocabulary detector with tiny random weights, built from config with a processor."""
    from transformers import (
        CLIPTokenizer,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    torch.manual_seed(0)
    config = OwlViTConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 49408, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )  # fmt: skip
    OwlViTForObjectDetection(config).save_pretrained(folder)
    tokenizer = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=16)
    image_processor = OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_a_detector_scores_boxes(tmp_path: Path) -> None:
    """Plumbing of the detector path: a transformers zero-shot-object-detection pipeline from a local folder;
    with threshold 0 every object has a box, so each image has a prominent object and areas."""
    _tiny_sd_pipeline(tmp_path / "sd")  # writes the tokenizer files
    detector = _tiny_owlvit(tmp_path / "owl", tmp_path / "sd" / "tok")
    out = run(ColourEncoder(), pipeline="t2i_planted:first_large", num_sets=2, templates=["bare"],
              images_per_prompt=1, detector=str(detector), threshold=0.0)  # fmt: skip
    e = out["entries"]
    assert e["n2/found_1"].value == 1.0 and e["n2/found_2"].value == 1.0
    assert math.isclose(e["n2/prominent_1"].value + e["n2/prominent_2"].value, 1.0)
    assert 0 < e["n2/area_1"].value <= 1 and e["n2/area_1"].count == 4
    from clipprobe.evaluation.runner import asked_options

    assert "detector_sha256" in asked_options("t2i", {"detector": str(detector)}, 0)


def test_a_name_the_detector_cannot_take_is_refused_before_drawing(tmp_path: Path) -> None:
    """OWL-ViT's text tower here takes 16 positions: a longer vocabulary name is one line, and nothing is drawn."""
    _tiny_sd_pipeline(tmp_path / "sd")
    detector = _tiny_owlvit(tmp_path / "owl", tmp_path / "sd" / "tok")
    long = "very " * 20 + "big dog"
    ctx = ProbeContext(ColourEncoder(), None, [*NAMES, long], {"pipeline": "t2i_planted:first_large",
                       "detector": str(detector), "num_sets": 1}, 0, False)  # fmt: skip
    with pytest.raises(UserError, match="cannot take the vocabulary name 'very very") as e:
        PROBES["t2i"].fn(ctx)
    assert "\n" not in str(e.value) and "at most 16" in str(e.value)
    assert not (tmp_path / "cache" / "t2i").exists()  # refused before any image was drawn


def test_a_detector_that_cannot_be_loaded_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot be loaded as a zero-shot object detector") as e:
        run(ColourEncoder(), pipeline="t2i_planted:first_large", num_sets=1, templates=["bare"], images_per_prompt=1,
            detector=str(tmp_path / "missing"))  # fmt: skip
    assert "\n" not in str(e.value)


def test_a_new_scorer_draws_nothing_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import t2i_planted

    calls = []
    real = t2i_planted.first_large()
    monkeypatch.setattr(t2i_planted, "first_large", lambda: lambda *a: calls.append(a) or real(*a))
    opts = {"pipeline": "t2i_planted:first_large", "num_sets": 1, "templates": ["bare"], "images_per_prompt": 1}
    first = run(ColourEncoder(), **opts)
    again = run(ColourEncoder(), **opts, threshold=0.5)
    assert len(calls) == 2 and first["config"]["images"] == again["config"]["images"]
    assert {a[1] for a in calls} == {calls[0][1]}  # both orders of the set from the same seed
