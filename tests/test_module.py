"""CLIPModule pieces: schedule, weight-decay groups, logit-scale clamp, counters, export format."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from clipprobe.errors import UserError
from clipprobe.models.export import export_model, export_path
from clipprobe.training.module import CLIPModule, no_weight_decay, warmup_cosine


@pytest.fixture(scope="module")
def module() -> CLIPModule:
    torch.manual_seed(0)
    return CLIPModule("clipprobe-tiny", schedule_steps=100, warmup_steps=10)


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text": torch.randint(1, 1000, (n, 77), generator=g),
            "skipped": torch.tensor(1)}  # fmt: skip


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, 10, 110, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # rising
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))  # falling
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5) and lrs[110] == pytest.approx(0.1) == lrs[119]


def test_weight_decay_groups(module: CLIPModule) -> None:
    opt = module.configure_optimizers()["optimizer"]
    decay, plain = opt.param_groups
    assert decay["weight_decay"] == 0.2 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {"logit_scale", "token_embedding.weight", "positional_embedding", "visual.class_embedding"} <= plain_names
    assert all(p.ndim >= 2 for p in decay["params"]) and not any("embedding" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(plain["params"]) == len(list(module.model.parameters()))
    assert no_weight_decay("visual.ln_pre.weight", torch.nn.Parameter(torch.ones(3)))
    assert not no_weight_decay("visual.proj", torch.nn.Parameter(torch.ones(3, 3)))


def test_training_clamps_logit_scale_and_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = CLIPModule("clipprobe-tiny", lr=10.0, warmup_steps=1, logit_scale_max=20.0)
    with torch.no_grad():
        module.model.logit_scale.fill_(math.log(50.0))  # above the cap: the first step must clamp it
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader([_batch(), _batch(4)], batch_size=None))
    assert 0.0 <= module.model.logit_scale.item() <= math.log(20.0) + 1e-6
    assert module.samples_seen == 8 and module.skipped == 2
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert ckpt["clipprobe"] == {"arch": "clipprobe-tiny", "step": 2, "samples_seen": 8, "skipped": 2}
    fresh = CLIPModule("clipprobe-tiny")
    fresh.on_load_checkpoint(ckpt)
    assert fresh.samples_seen == 8 and fresh.skipped == 2


def test_export_loads_in_plain_open_clip(tmp_path: Path, module: CLIPModule) -> None:
    import open_clip

    path = export_model(module.model, tmp_path / "m.pt", arch="clipprobe-tiny", step=7, samples_seen=700, epoch=1)
    assert torch.load(path)["clipprobe"] == {"arch": "clipprobe-tiny", "step": 7, "samples_seen": 700, "epoch": 1}
    model, _, _ = open_clip.create_model_and_transforms("clipprobe-tiny", pretrained=str(path))
    model.eval(), module.eval()
    batch = _batch(3)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(batch["image"]), module.model.encode_image(batch["image"]))
        assert torch.allclose(model.encode_text(batch["text"]), module.model.encode_text(batch["text"]))
    assert export_path("run/checkpoints/step=00000100.ckpt") == Path("run/checkpoints/step=00000100.pt")


def test_unknown_architecture() -> None:
    with pytest.raises(UserError, match="unknown open_clip architecture 'ViT-Z-99'"):
        CLIPModule("ViT-Z-99")


def test_grad_checkpointing_is_active_and_gives_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """``grad_checkpointing=True`` really checkpoints every residual block of both towers: open_clip's
    transformers call ``torch.utils.checkpoint.checkpoint`` once per block, and each block runs again in
    the backward pass (recomputation instead of stored activations). The loss and every parameter's
    gradient equal those of the same weights without checkpointing."""
    import open_clip.transformer
    from open_clip.loss import ClipLoss

    real = open_clip.transformer.checkpoint  # open_clip imported the function itself: count calls there
    calls: list[torch.nn.Module] = []

    def counting(block: torch.nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(block)
        return real(block, *args, **kwargs)

    monkeypatch.setattr(open_clip.transformer, "checkpoint", counting)
    torch.manual_seed(0)
    plain = CLIPModule("clipprobe-tiny")
    ckpt = CLIPModule("clipprobe-tiny", grad_checkpointing=True)
    ckpt.model.load_state_dict(plain.model.state_dict())
    assert ckpt.model.visual.transformer.grad_checkpointing and ckpt.model.transformer.grad_checkpointing
    assert not plain.model.visual.transformer.grad_checkpointing and not plain.model.transformer.grad_checkpointing

    runs: Counter[int] = Counter()  # block forward runs (module hooks do not fire on recomputation: wrap forward)
    block_type = type(plain.model.transformer.resblocks[0])
    block_forward = block_type.forward

    def counted_forward(self: torch.nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
        runs[id(self)] += 1
        return block_forward(self, *args, **kwargs)

    monkeypatch.setattr(block_type, "forward", counted_forward)
    batch, loss_fn = _batch(), ClipLoss()
    losses, grads = [], []
    for m in (plain, ckpt):
        m.train()
        blocks = [*m.model.visual.transformer.resblocks, *m.model.transformer.resblocks]
        assert len(blocks) == 4 and all(type(b) is block_type for b in blocks)
        runs.clear()
        calls.clear()
        out = m(batch["image"], batch["text"])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        forward_runs = [runs[id(b)] for b in blocks]
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None})
        assert forward_runs == [1] * 4
        if m is plain:
            assert calls == [] and [runs[id(b)] for b in blocks] == [1] * 4  # activations kept: no recomputation
        else:  # through checkpoint, each block of both towers once, in order; run again by the backward pass
            assert [id(b) for b in calls] == [id(b) for b in blocks]
            assert [runs[id(b)] for b in blocks] == [2] * 4
    assert torch.allclose(losses[0], losses[1], rtol=0, atol=1e-6)
    names = [n for n, _ in ckpt.model.named_parameters()]
    assert sorted(grads[0]) == sorted(grads[1]) == sorted(names)  # every parameter got a gradient, both ways
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-7), name
    assert all(grads[1][n].abs().sum() > 0 for n in names if "resblocks" in n)
