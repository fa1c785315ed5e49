"""Fidelity to the study's image scripts (issue 14): IOC trains its linear classifiers with the study's batch of 8
(128 is only the study's feature-extraction batch), and ITM is reported per folder (per slot of the large
object) beside the pooled numbers, also with the counts summed over DDP ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from planted_encoders import PlantedImageEncoder, name_vectors, tiny_probe_set

from clipprobe.probes import common, image
from clipprobe.probes.base import PROBES, ProbeContext
from clipprobe.probes.common import parse_options
from clipprobe.probes.image import IocOptions, ioc
from clipprobe.probes.matching import itm, itm_tallies
from clipprobe.probes.text import mitigation

NAMES = [f"thing{i}" for i in range(8)]


def _ctx(enc, ps, options=None):
    return ProbeContext(encoder=enc, probe_set=ps, options=options or {}, seed=0, progress=False)


# ---------------------------------------------------------------------------------------------
# IOC: the classifier's settings are the study's (Adam 1e-3, batch 8, 25 epochs).


def test_ioc_defaults_are_the_studys_classifier_settings():
    opts = parse_options(IocOptions, {}, "ioc")
    assert (opts.lr, opts.batch_size, opts.epochs) == (1e-3, 8, 25)
    assert (opts.test_fraction, opts.seed) == (0.2, 42)  # the study's 80/20 split
    assert PROBES["ioc"].version >= 2  # the batch changed ioc's numbers: older results are not reused


def _anisotropic_scenes(ps, alpha=1.0):
    """Scene embedding = a direction shared by every scene + ``alpha`` x its large object's vector, so any two
    scenes have cosine about 1 / (1 + alpha^2) (CLIP's image embeddings share a large common component too)."""
    vecs = name_vectors(NAMES)
    shared = name_vectors(["shared"], seed=5)["shared"]
    return {str(ps.path(s)): shared + alpha * vecs[s.names[s.large_slot]] for s in ps.scenes}


def test_ioc_study_batch_separates_what_batch_128_does_not(tmp_path):
    # 64 training scenes per group: batch 8 gives 8 Adam steps an epoch (200 in 25 epochs), batch 128 one (25).
    # The large object is all that tells scenes apart, beside a shared direction as large as itself.
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=80)
    images = _anisotropic_scenes(ps)
    study = ioc(_ctx(PlantedImageEncoder(NAMES, images), ps))
    big_batch = ioc(_ctx(PlantedImageEncoder(NAMES, images), ps, {"batch_size": 128}))
    assert study.config["batch_size"] == 8 and study.counts["n2/acc_large"] == 32
    assert study.metrics["n2/acc_large"] == 1.0
    assert big_batch.metrics["n2/acc_large"] < 0.75  # 25 steps of 1e-3 have not separated the classes yet


def test_ioc_classifier_takes_ceil_n_over_8_steps_an_epoch(tmp_path, monkeypatch):
    # 47 scenes per group: 9 held out, 38 trained on, so the last batch of each epoch holds 6 scenes.
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=47)
    calls: list[dict] = []
    real_probe, real_softmax = common.linear_probe, torch.softmax
    steps = [0]

    def counting_softmax(*args, **kwargs):  # linear_probe runs one softmax per optimizer step
        steps[0] += 1
        return real_softmax(*args, **kwargs)

    def recording_probe(x_train, y_train, x_eval, num_classes, **kwargs):
        before = steps[0]
        preds = real_probe(x_train, y_train, x_eval, num_classes, **kwargs)
        calls.append({"train": len(x_train), "steps": steps[0] - before, **kwargs})
        return preds

    monkeypatch.setattr(torch, "softmax", counting_softmax)
    monkeypatch.setattr(image, "linear_probe", recording_probe)
    ioc(_ctx(PlantedImageEncoder(NAMES, _anisotropic_scenes(ps)), ps))
    assert len(calls) == 2 * 2  # 2 groups (large object left, right) x 2 slots
    for call in calls:
        assert (call["lr"], call["batch_size"], call["epochs"]) == (1e-3, 8, 25)
        assert call["train"] == 38 and call["steps"] == math.ceil(38 / 8) * 25 == 125


# ---------------------------------------------------------------------------------------------
# ITM per folder: the slot of the large object.


def _slot_rule(ps):
    """Image = its large object's vector when that object is in slot 1, else minus it; a caption is its first
    object ("first" rule). So with the large object in slot 1 the L-first caption always matches, in slot 2 never."""
    vecs = name_vectors(NAMES)
    return {str(ps.path(s)): (1.0 if s.large_slot == 0 else -1.0) * vecs[s.names[s.large_slot]] for s in ps.scenes}


def test_itm_per_large_slot_against_hand_counts(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=3)
    enc = PlantedImageEncoder(NAMES, _slot_rule(ps))
    r = itm(_ctx(enc, ps, {"absent": 4}))
    by_name = {m.name: m for m in r.entries}
    # n = 2, 3 scenes per large slot, 4 absent objects: 12 triples per slot and scenario, 3 scenes for the order.
    # Slot 1: the right caption (L first) scores 1 against ~0 for a foil; slot 2: -1 against ~0.
    assert (by_name["n2/large1/scenario1"].value, by_name["n2/large1/scenario1"].count) == (1.0, 12)
    assert (by_name["n2/large2/scenario1"].value, by_name["n2/large2/scenario1"].count) == (0.0, 12)
    assert (by_name["n2/scenario1"].value, by_name["n2/scenario1"].count) == (0.5, 24)  # 12 of 24, pooled
    # Scenario 2: the foil puts L first, so the slots swap: 0 of 12, 12 of 12, pooled 12 of 24.
    assert [r.metrics[f"n2/{g}scenario2"] for g in ("large1/", "large2/", "")] == [0.0, 1.0, 0.5]
    # L first against L last: slot 1 wins 3 of 3 scenes, slot 2 none; pooled 3 of 6.
    assert [r.metrics[f"n2/{g}order_pref"] for g in ("large1/", "large2/", "")] == [1.0, 0.0, 0.5]
    assert [r.counts[f"n2/{g}order_pref"] for g in ("large1/", "large2/", "")] == [3, 3, 6]
    # n = 3: slot 1 always, slots 2 and 3 never; pooled 12 of 36.
    assert [r.metrics[f"n3/large{j}/scenario1"] for j in (1, 2, 3)] == [1.0, 0.0, 0.0]
    assert r.metrics["n3/scenario1"] == pytest.approx(1 / 3) and r.counts["n3/scenario1"] == 36
    # Structure: a slot is the entry's variant (as ioc's scene groups), the scenario its key; pooled: no variant.
    m = by_name["n2/large2/scenario1"]
    assert (m.family, m.n, m.key, m.variant, m.chance) == ("accuracy", 2, "scenario1", "large2", 0.5)
    assert (by_name["n2/large1/order_ties"].family, by_name["n2/large1/order_ties"].variant) == ("tie_rate", "large1")
    assert by_name["n2/scenario1"].variant is None and "n2/large3/scenario1" not in r.metrics
    assert enc.image_calls == 1 and enc.text_calls == 1  # each input still encoded once


def test_itm_pooled_entries_unchanged_and_the_sum_of_the_slots(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=5)
    g = torch.Generator().manual_seed(1)
    vecs = name_vectors(NAMES)
    images = {str(ps.path(s)): sum(vecs[o] for o in s.names) + torch.randn(256, generator=g) for s in ps.scenes}
    pooled_only = itm_tallies(PlantedImageEncoder(NAMES, images, rule="weighted"), ps, NAMES, absent=3)["plain"]
    both = itm_tallies(PlantedImageEncoder(NAMES, images, rule="weighted"), ps, NAMES, absent=3, by_large=True)
    for n, per in both["plain"].items():
        assert not pooled_only[n].by_large and sorted(per.by_large) == list(range(n))
        for scenario, counts in per.items():
            assert {k: int(v) for k, v in counts.items()} == {k: int(v) for k, v in pooled_only[n][scenario].items()}
            summed = {k: sum(int(slot[scenario][k]) for slot in per.by_large.values()) for k in counts}
            assert summed == {k: int(v) for k, v in counts.items()}, (n, scenario)
    assert 0 < both["plain"][3]["scenario2"]["wins"] < both["plain"][3]["scenario2"]["total"]  # not a trivial case


def test_mitigation_keeps_itm_pooled_only(tmp_path):
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2,), per_slot=3)
    r = mitigation(_ctx(PlantedImageEncoder(NAMES, _slot_rule(ps)), ps, {"num_captions": 10, "absent": 2}))
    assert r.metrics["plain/n2/scenario1"] == 0.5
    assert not [m.name for m in r.entries if m.variant not in ("plain", "split")]


# ---------------------------------------------------------------------------------------------
# ITM per slot under DDP: each rank tallies its share of the pairs; every slot's counts are summed over ranks.


class _RankEncoder(PlantedImageEncoder):
    def __init__(self, names, images, rank, world_size):
        super().__init__(names, images)
        self.rank, self.world_size = rank, world_size


def _ddp_worker(rank: int, world_size: int, root: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=world_size)
    try:
        ps = tiny_probe_set(Path(root), NAMES, counts=(2, 3), per_slot=3)
        r = itm(_ctx(_RankEncoder(NAMES, _slot_rule(ps), rank, world_size), ps, {"absent": 4}))
        out = {m.name: [m.value, m.count, m.variant, m.key] for m in r.entries}
        Path(root, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_itm_per_slot_counts_are_summed_over_ddp_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    ps = tiny_probe_set(tmp_path, NAMES, counts=(2, 3), per_slot=3)
    alone = itm(_ctx(PlantedImageEncoder(NAMES, _slot_rule(ps)), ps, {"absent": 4}))
    want = {m.name: [m.value, m.count, m.variant, m.key] for m in alone.entries}
    assert ranks[0] == ranks[1] == want
    # Rank 0 holds the first half of each scenario's pairs (mostly slot 1), rank 1 the rest: without the sum over
    # ranks the slots' counts would differ between ranks and from one process.
    assert want["n2/large1/scenario1"][:2] == [1.0, 12] and want["n2/large2/scenario1"][:2] == [0.0, 12]
