"""2-process DDP training (gloo, CPU) equals one process on the same global batch.

CLIPModule's loss under DDP is open_clip's ClipLoss with ``local_loss`` (each rank scores its own
samples against the features gathered from every rank) and ``gather_with_grad`` (the gather passes
gradients back to the rank that computed the features). Together with DDP's gradient averaging this
is exactly the single-process loss on the concatenated batch, and so are its gradients: averaging the
ranks' local losses gives the global mean, and the gradient through the gather carries each loss's
share back to the features' owner. Without the gradient through the gather, the cross-rank terms are
lost and the gradients differ. The test runs the model and loss as CLIPModule builds them (its
``setup`` with a stand-in trainer) in 2 spawned processes around torch.distributed directly, no Trainer.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clipprobe.training.module import CLIPModule

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("one_thread")]
WORLD, PER_RANK = 2, 4


def global_batch() -> dict[str, torch.Tensor]:
    """The same 8 image-caption pairs in every process (rank r takes rows 4r .. 4r+3)."""
    g = torch.Generator().manual_seed(7)
    n = WORLD * PER_RANK
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text": torch.randint(1, 1000, (n, 77), generator=g)}


def set_up(state: dict[str, torch.Tensor], rank: int, world_size: int) -> CLIPModule:
    """A CLIPModule with the given weights and the loss its ``setup`` builds for this rank and world size."""
    module = CLIPModule("clipprobe-tiny")
    module.model.load_state_dict(state)
    module.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)  # what setup reads of a Trainer
    module.setup("fit")
    module.train()
    return module


def rank_worker(rank: int, port: int, state: dict[str, torch.Tensor], out: str) -> None:
    """One DDP rank: forward its half of the batch through DDP, CLIPModule's loss, one backward; save the
    local loss, the loss's settings and the (all-reduced) parameter gradients to ``out/rank<r>.pt``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))  # fmt: skip
    try:
        module = set_up(state, rank, WORLD)
        ddp = DistributedDataParallel(module)
        batch = {k: v[rank * PER_RANK : (rank + 1) * PER_RANK] for k, v in global_batch().items()}
        out_dict = ddp(batch["image"], batch["text"])  # through DDP's forward, as Lightning's wrapper calls it
        loss = module.loss_fn(out_dict["image_features"], out_dict["text_features"], out_dict["logit_scale"])
        loss.backward()
        fn = module.loss_fn
        torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in module.model.named_parameters()},
                    "loss_fn": [fn.local_loss, fn.gather_with_grad, fn.rank, fn.world_size]},
                   Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_ddp_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """Loss and gradients of 2-rank DDP (local loss, gather with grad, gradient averaging) equal those of
    one process on the concatenated batch: per rank, its rows of the global logits; averaged over ranks,
    the global loss; every parameter's gradient after DDP's all-reduce, the single-process gradient."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    single = set_up(CLIPModule("clipprobe-tiny").model.state_dict(), rank=0, world_size=1)
    state = {k: v.clone() for k, v in single.model.state_dict().items()}
    batch = global_batch()
    out = single(batch["image"], batch["text"])
    loss = single.loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in single.model.named_parameters()}

    mp.spawn(rank_worker, args=(free_port(), state, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for r, rec in enumerate(ranks):  # the loss as CLIPModule configures it for DDP
        assert rec["loss_fn"] == [True, True, r, WORLD]
    # each rank's local loss: its own rows of the global logits, labelled by their global index
    with torch.no_grad():
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        labels = torch.arange(WORLD * PER_RANK)
        for r, rec in enumerate(ranks):
            rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
            expected = (F.cross_entropy(logits[rows], labels[rows]) + F.cross_entropy(logits.T[rows], labels[rows])) / 2
            assert torch.allclose(rec["loss"], expected, rtol=1e-6, atol=1e-6), (r, rec["loss"], expected)
    assert torch.allclose(sum(rec["loss"] for rec in ranks) / WORLD, loss.detach(), rtol=1e-6, atol=1e-6)

    for rec in ranks:
        assert rec["grads"].keys() == grads.keys()
        for name, g in grads.items():
            got = rec["grads"][name]
            assert got is not None, name
            assert torch.allclose(got, g, rtol=1e-5, atol=5e-6), (name, (got - g).abs().max())
    for name in grads:  # DDP's all-reduce leaves the very same gradients on both ranks
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
