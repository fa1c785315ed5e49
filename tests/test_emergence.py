"""`clipprobe experiment emergence`: corpora that differ only in caption order, and a shrunk run end to end."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from clipprobe.cli import main
from clipprobe.data.corpus import CorpusConfig, generate_corpus
from clipprobe.experiments.emergence import Condition, parse_condition, retrieval

RECIPE = str(Path(__file__).parents[1] / "configs" / "fit" / "tiny-synthetic.yaml")
FIT_ARGS = [
    "--data.augment", "false", "--data.num_workers", "0", "--data.shuffle_buffer", "16", "--model.warmup_steps", "2",
    "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "null", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def _members(folder: Path, ext: str) -> list[bytes]:
    with tarfile.open(folder / "00000.tar") as tar:
        return [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(ext)]  # type: ignore[union-attr]


def test_orders_share_images_and_differ_in_order(tmp_path: Path) -> None:
    """The experiment relies on it: one seed, the same scenes under every order; only captions change."""
    folders = {}
    for order in ("size_first", "random"):
        folders[order] = tmp_path / order
        generate_corpus(CorpusConfig(40, (2, 3), order, 1.0, 0.0, 32, 40, 0, 90), folders[order], workers=1,
                        progress=False)  # fmt: skip
    assert _members(folders["size_first"], ".jpg") == _members(folders["random"], ".jpg")
    metas = {o: [json.loads(b) for b in _members(f, ".json")] for o, f in folders.items()}
    assert [m["objects"] for m in metas["size_first"]] == [m["objects"] for m in metas["random"]]
    assert all(m["largest_first"] for m in metas["size_first"])
    assert not all(m["largest_first"] for m in metas["random"])


def test_parse_condition() -> None:
    assert parse_condition("size_first", 0.9) == Condition("size_first", 0.9)
    assert parse_condition("small_first:1", 0.9) == Condition("small_first", 1.0)
    assert parse_condition("random", 0.9).name == "random"
    assert parse_condition("size_first:0.5", 0.9).name == "size_first_p0.5"


@pytest.mark.parametrize("bad", ["largest_first", "size_first:x", "size_first:1.5"])
def test_bad_condition_is_a_user_error(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "emergence", "--out", str(tmp_path / "o"), "--conditions", bad, "--recipe", RECIPE])
    assert exc.value.code == 2
    assert "clipprobe: error:" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


class _Perfect(torch.nn.Module):
    """Image i and caption i share a one-hot embedding: retrieval must be perfect, except duplicates."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(pixels[:, 0, 0, 0].long(), 8).float()

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(tokens[:, 0].long(), 8).float()


def test_retrieval_counts_whole_batches_and_duplicate_captions() -> None:
    from PIL import Image

    def png(value: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (2, 2), (value, 0, 0)).save(buf, format="PNG")
        return buf.getvalue()

    images = [png(i % 4) for i in range(10)]  # batches of 4: two whole ones, 2 samples left out
    texts = [str(i % 4) for i in range(10)]
    pre = lambda im: torch.tensor(im.getpixel((0, 0)), dtype=torch.float).view(3, 1, 1).expand(3, 2, 2)  # noqa: E731
    tok = lambda caps: torch.tensor([[int(c)] for c in caps])  # noqa: E731
    out = retrieval(_Perfect(), pre, tok, images, texts, batch=4)
    assert out["counts"]["recall@1"] == 8 and out["metrics"]["recall@1"] == 1.0
    assert out["chance"] == {"recall@1": 0.25, "recall@5": 1.0}
    wrong = retrieval(_Perfect(), pre, tok, images, texts[1:] + texts[:1], batch=4)
    assert wrong["metrics"]["recall@1"] == 0.0 and wrong["metrics"]["recall@5"] == 1.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_emergence_end_to_end(tmp_path: Path) -> None:
    """Two conditions, 8 steps each, probed at steps 0, 4 and 8; a rerun reuses the runs and gives the same bytes."""
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["experiment", "emergence", "--out", str(out), "--work", str(work), "--conditions", "size_first:1.0,random",
            "--recipe", RECIPE, "--fit-args=" + json.dumps(FIT_ARGS), "--num-samples", "96", "--heldout-samples",
            "40", "--steps", "8", "--batch-size", "12", "--every", "4", "--tor-n", "2,3", "--tor-captions", "30",
            "--probe-scenes", "6", "--retrieval-batch", "20", "--plot-n", "2", "--threads", "1", "--progress",
            "false"]  # fmt: skip
    main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["emergence.png", "results.json", "results.md", "timing.json"]
    assert (out / "emergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["conditions"] == [{"order": "size_first", "p_order": 1.0},
                                              {"order": "random", "p_order": 1.0}]  # fmt: skip
    for name in ("size_first_p1", "random"):
        rows = data["results"][name]
        assert [(r["step"], r["samples_seen"]) for r in rows] == [(0, 0), (4, 48), (8, 96)]
        last = rows[-1]
        assert last["tor"]["counts"]["n2/closest_1"] == 30 and last["tor"]["counts"]["n3/closest_1"] == 30
        assert last["ior"]["counts"]["n2/closest_large"] == 12  # 6 scenes x 2 large slots
        assert last["retrieval"]["counts"]["recall@1"] == 40
        for row in rows:
            for part, key in (("tor", "n2/closest_1"), ("ior", "n3/closest_large"), ("retrieval", "recall@1")):
                lo, hi = row[part]["intervals"][key]
                assert 0.0 <= lo <= row[part]["metrics"][key] <= hi <= 1.0
    # Same initialisation for every condition: identical step-0 probes.
    assert data["results"]["size_first_p1"][0]["tor"] == data["results"]["random"][0]["tor"]
    # Training differs only through the captions; the trained weights must differ.
    assert data["results"]["size_first_p1"][-1]["tor"] != data["results"]["random"][-1]["tor"]
    table = (out / "results.md").read_text()
    assert "| size_first_p1 | 96 |" in table and "| random | 96 |" in table

    before = (out / "results.json").read_bytes()
    mtime = (work / "runs" / "random" / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(SystemExit):  # a non-empty --out is kept
        main(argv)
    main([*argv, "--overwrite"])
    assert (out / "results.json").read_bytes() == before
    assert (work / "runs" / "random" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime  # not retrained
    with pytest.raises(SystemExit) as exc:  # a work folder trained with other settings is not reused
        main([*argv, "--overwrite", "--steps", "12"])
    assert exc.value.code == 2 and (out / "results.json").read_bytes() == before
