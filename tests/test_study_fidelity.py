"""Fidelity to the study's scripts (issue 14): TOR's substring hit test beside clipprobe's exact one, the study's
vocabulary in paper mode, published-layout duplicates, and where the report places the study's values."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
import torch
from planted_encoders import PlantedTextEncoder
from report_records import position_entries, record, tag
from test_probes_text import VOCAB, _noisy, _run
from test_probeset import _png, make_published_tree

from clipprobe.data.probeset import ProbeSet
from clipprobe.data.vocab import COCO_NAMES, SIMCO_NAMES
from clipprobe.errors import UserError
from clipprobe.evaluation.figures import bar_figures
from clipprobe.evaluation.study import not_comparable, published_value, study_value
from clipprobe.evaluation.tables import to_markdown
from clipprobe.probes.base import PROBES, ProbeContext
from clipprobe.probes.captions import make_captions
from clipprobe.probes.tallies import ONE_PROCESS, Shard, substring_hits
from clipprobe.probes.text import mitigation, tor, tor_counts, tor_texts

# ---------------------------------------------------------------------------------------------
# (a) The study's substring hit test, by hand.

NAMES = ["bench", "hot dog", "dog", "cat", "apple", "pizza"]


class TableEncoder:
    """Names are one-hot vectors; a caption is 2 * its first object + its second, unless planted in ``special``
    (weights per name). Implements the Encoder protocol for text."""

    model = preprocess = tokenizer = None
    device = "cpu"

    def __init__(self, special: dict[str, dict[str, float]]) -> None:
        self.special = special

    def vector(self, text: str) -> torch.Tensor:
        weights = self.special.get(text)
        if weights is None:
            objs = text.split(" and ")
            weights = {objs[0]: 2.0, **({objs[1]: 1.0} if len(objs) > 1 else {})}
        v = torch.zeros(len(NAMES))
        for name, w in weights.items():
            v[NAMES.index(name)] += w
        return torch.nn.functional.normalize(v, dim=0)

    def encode_texts(self, texts):
        return torch.stack([self.vector(t) for t in texts])

    def encode_images(self, paths):
        raise AssertionError("a text probe encoded images")


SPECIAL = {
    # T_2 = {dog, hot dog}: not its objects (bench is missing), but both are inside its text; top-1 "dog" is
    # neither o_1 nor o_2. The nearest of its own objects is hot dog (o_2).
    "bench and hot dog": {"dog": 3.0, "hot dog": 2.0, "bench": 1.0},
    # T_2 = {dog, cat}: "dog" is inside "hot dog"; top-1 dog again; nearest own object cat (o_2).
    "hot dog and cat": {"dog": 3.0, "cat": 2.0, "hot dog": 1.0},
    # T_2 = {pizza, cat}: pizza is not in the text, a miss either way; nearest own object cat (o_1).
    "cat and apple": {"pizza": 2.0, "cat": 1.0, "apple": 0.5},
    # T_2 = its objects, top-1 its second: a hit either way, credit to share_2.
    "dog and pizza": {"pizza": 2.0, "dog": 1.0},
}


def _paper_n2(probe, hits: str | None, **extra):
    options = {"mode": "paper", "n": [2], "max_captions": 0, **({"hits": hits} if hits else {}), **extra}
    return _run(probe, TableEncoder(SPECIAL), options, vocab=NAMES)


def test_substring_hits_hand_computed():
    # C(6, 2) = 15 captions; the 11 not planted are hits with top-1 o_1 under both tests.
    exact, sub = _paper_n2(tor, None), _paper_n2(tor, "substring")
    assert exact.config["hits"] == "exact" and sub.config["hits"] == "substring"
    assert exact.counts["n2/hit_rate"] == sub.counts["n2/hit_rate"] == 15
    # exact: 11 + "dog and pizza" = 12 hits; shares among them 11/12 and 1/12, summing to 1
    assert exact.metrics["n2/hit_rate"] == pytest.approx(12 / 15)
    assert exact.counts["n2/share_1"] == 12
    assert exact.metrics["n2/share_1"] == pytest.approx(11 / 12)
    assert exact.metrics["n2/share_2"] == pytest.approx(1 / 12)
    # substring: also "bench and hot dog" and "hot dog and cat" (their T_2 holds "dog", inside "hot dog") = 14 hits;
    # their top-1 "dog" is none of their objects, so the shares sum to 12/14, not renormalised
    assert sub.metrics["n2/hit_rate"] == pytest.approx(14 / 15)
    assert sub.counts["n2/share_1"] == sub.counts["n2/share_2"] == 14
    assert sub.metrics["n2/share_1"] == pytest.approx(11 / 14) and sub.metrics["n2/share_2"] == pytest.approx(1 / 14)
    assert sub.metrics["n2/share_1"] + sub.metrics["n2/share_2"] == pytest.approx(12 / 14)
    # the robust families do not depend on the hit test
    robust = {"share_1_all": 11 / 15, "share_2_all": 1 / 15, "closest_1": 12 / 15, "closest_2": 3 / 15}
    for key, value in robust.items():
        assert exact.metrics[f"n2/{key}"] == sub.metrics[f"n2/{key}"] == pytest.approx(value), key
    assert exact.metrics["n2/bias_index"] == sub.metrics["n2/bias_index"]


def test_mitigation_has_the_hits_option():
    plain = {"itm": False}
    exact, sub = _paper_n2(mitigation, None, **plain), _paper_n2(mitigation, "substring", **plain)
    assert exact.metrics["plain/n2/hit_rate"] == pytest.approx(12 / 15)
    assert sub.metrics["plain/n2/hit_rate"] == pytest.approx(14 / 15)
    assert sub.metrics["plain/n2/share_1"] + sub.metrics["plain/n2/share_2"] == pytest.approx(12 / 14)
    # split: each caption is the sum of its names alone, so T_2 is its own objects: a hit under both tests
    assert exact.metrics["split/n2/hit_rate"] == sub.metrics["split/n2/hit_rate"] == 1.0
    assert exact.config["hits"] == "exact" and sub.config["hits"] == "substring"


def test_substring_hits_follow_the_text_not_the_objects():
    sims = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.9, 0.8, 0.1, 0.0]])
    refs = ["car", "carrot", "cat", "dog"]
    # "car" is inside "carrot"; "carrot" is not inside "car and cat"
    assert substring_hits(sims, 2, ["carrot and cat", "car and cat"], refs).tolist() == [True, False]
    assert substring_hits(sims, 1, ["car and cat", "pizza"], refs).tolist() == [True, False]
    # cat and carrot tie for second place: a hit must hold however the tie is broken, so neither text is one
    tied = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1]])
    assert substring_hits(tied, 2, ["car and cat", "car and carrot"], refs).tolist() == [False, False]
    assert substring_hits(tied, 2, ["carrot and cat", "cat and carrot"], refs).tolist() == [True, True]


def test_bad_hits_option_is_one_line():
    with pytest.raises(UserError, match=r"tor\.hits='fuzzy' is not one of exact, substring"):
        _run(tor, PlantedTextEncoder(VOCAB), {"hits": "fuzzy"})


SUBSTRING_VOCAB = ["car", "carrot", "dog", "hot dog", "bear", "teddy bear", "cat", "apple", "bench", "pizza", "tie"]


def _study_script(enc, vocab, captions, n):
    """The study's TOR loop (TOR_ComCO_CLIP.py), on the encoder's own vectors: argsort for the n nearest,
    argmax for the top-1, ``word in sentence`` for a hit, the first position equal to the top-1."""
    names = torch.stack([enc.text_vector(v) for v in vocab])
    topn_correct, word_correct = 0, [0] * n
    for c in captions:
        sims = (enc.text_vector(c.text) @ names.T).numpy()
        topn = [vocab[k] for k in sims.argsort()[-n:]]
        best = vocab[int(sims.argmax())]
        words = c.text.split(" and ")
        if all(word in c.text for word in topn):
            topn_correct += 1
            for k in range(n):
                if best == words[k]:
                    word_correct[k] += 1
                    break
    return topn_correct, word_correct


@pytest.mark.parametrize("n", [2, 3])
def test_substring_matches_the_study_script(n):
    enc = PlantedTextEncoder(SUBSTRING_VOCAB, _noisy, dim=24)
    r = _run(tor, enc, {"mode": "paper", "max_captions": 0, "n": [n], "hits": "substring"}, vocab=SUBSTRING_VOCAB)
    caps = make_captions(SUBSTRING_VOCAB, n, "paper", "bare", max_captions=0)
    hits, word_correct = _study_script(enc, SUBSTRING_VOCAB, caps, n)
    exact = _run(tor, enc, {"mode": "paper", "max_captions": 0, "n": [n]}, vocab=SUBSTRING_VOCAB)
    assert r.counts[f"n{n}/share_1"] == hits >= exact.counts[f"n{n}/share_1"]
    assert n == 2 or hits > exact.counts[f"n{n}/share_1"]  # at n=3 "car" and "carrot" give substring-only hits
    assert r.metrics[f"n{n}/hit_rate"] == pytest.approx(hits / len(caps))
    for k in range(n):
        assert r.metrics[f"n{n}/share_{k + 1}"] == pytest.approx(word_correct[k] / hits), k


def test_sharded_substring_counts_sum_to_one_process():
    # What DDP does: each rank tallies its rows (its own hit test included), the sums are the one-process counts.
    enc = PlantedTextEncoder(SUBSTRING_VOCAB, _noisy, dim=24)
    caps = {3: make_captions(SUBSTRING_VOCAB, 3, "paper", "bare", max_captions=0)}
    texts = tor_texts(SUBSTRING_VOCAB, caps, "bare", ("plain", "split"))
    emb = enc.encode_texts(list(dict.fromkeys(texts)))
    row = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    args = (emb, row, SUBSTRING_VOCAB, caps, "bare", ("plain", "split"))
    whole = tor_counts(*args, ONE_PROCESS, "substring")
    parts = [tor_counts(*args, Shard(rank, 3), "substring") for rank in range(3)]  # no process group: no sync
    for agg in ("plain", "split"):
        for key, value in whole[agg][3].items():
            assert torch.allclose(sum(p[agg][3][key] for p in parts), value), (agg, key)
    assert int(whole["plain"][3]["hits"]) != int(tor_counts(*args, ONE_PROCESS)["plain"][3]["hits"])


_DDP_WORKER = """
import json, sys
from pathlib import Path
import torch
from planted_encoders import PlantedTextEncoder
from test_probes_text import _noisy, _run
from clipprobe.probes.text import tor

rank, init, out, SUBSTRING_VOCAB = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
try:
    enc = PlantedTextEncoder(SUBSTRING_VOCAB, _noisy, dim=24)
    enc.rank, enc.world_size = rank, 2
    r = _run(tor, enc, {"mode": "paper", "max_captions": 0, "n": [3], "hits": "substring"}, vocab=SUBSTRING_VOCAB)
    Path(out, f"rank{rank}.json").write_text(json.dumps(r.to_json()))
finally:
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_substring_tallies_equal_one_process(tmp_path: Path):
    # Two gloo ranks, each tallying its half of the captions with its own substring test; the sums are reduced.
    import json
    import subprocess
    import sys

    init, vocab = f"file://{tmp_path / 'init'}", json.dumps(SUBSTRING_VOCAB)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), init, str(tmp_path), vocab], env=env)
             for r in (0, 1)]  # fmt: skip
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    alone = _run(tor, PlantedTextEncoder(SUBSTRING_VOCAB, _noisy, dim=24),
                 {"mode": "paper", "max_captions": 0, "n": [3], "hits": "substring"}, vocab=SUBSTRING_VOCAB)  # fmt: skip
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    for m, want in zip(ranks[0]["metrics"], alone.entries, strict=True):
        assert m["name"] == want.name and m["count"] == want.count
        assert m["value"] == pytest.approx(want.value, nan_ok=True), m["name"]


# ---------------------------------------------------------------------------------------------
# (b) The default (exact hits) gives the numbers it gave before the option existed.

# Counts (value x count, count) of test_probes_text's noisy encoder, recorded before the hits option was added.
BEFORE_TOR = {
    "n2/hit_rate": (63, 66), "n2/share_1": (42, 63), "n2/share_2": (21, 63), "n2/share_1_all": (44, 66),
    "n2/share_2_all": (21, 66), "n2/closest_1": (45, 66), "n2/closest_2": (21, 66),
    "n3/hit_rate": (68, 100), "n3/share_1": (32, 68), "n3/share_2": (24, 68), "n3/share_3": (12, 68),
    "n3/share_1_all": (48, 100), "n3/share_2_all": (36, 100), "n3/share_3_all": (15, 100),
    "n3/closest_1": (48, 100), "n3/closest_2": (37, 100), "n3/closest_3": (15, 100),
}  # fmt: skip
BEFORE_MITIGATION = {
    "plain/n3/hit_rate": (35, 60), "plain/n3/share_1": (22, 35), "plain/n3/share_2": (9, 35),
    "plain/n3/share_3": (4, 35), "plain/n3/closest_1": (38, 60), "split/n3/hit_rate": (57, 60),
    "split/n3/share_1": (25, 57), "split/n3/share_2": (20, 57), "split/n3/share_3": (12, 57),
    "split/n3/closest_1": (26, 60),
}  # fmt: skip


def _assert_counts(result, expected):
    for name, (k, total) in expected.items():
        assert result.counts[name] == total, name
        assert result.metrics[name] * total == pytest.approx(k), name


def test_default_exact_hits_unchanged():
    vocab = VOCAB[:12]
    opts = {"mode": "paper", "num_captions": 150, "max_captions": 100, "n": [2, 3], "seed": 5}
    r = _run(tor, PlantedTextEncoder(vocab, _noisy, dim=24), opts, vocab=vocab)
    assert r.config["hits"] == "exact"
    _assert_counts(r, BEFORE_TOR)
    assert r.to_json()["metrics"] == _run(tor, PlantedTextEncoder(vocab, _noisy, dim=24), {**opts, "hits": "exact"},
                                          vocab=vocab).to_json()["metrics"]  # fmt: skip
    m = _run(mitigation, PlantedTextEncoder(vocab, _noisy, dim=24), {"num_captions": 60, "n": [3], "seed": 5},
             vocab=vocab)  # fmt: skip
    _assert_counts(m, BEFORE_MITIGATION)


def test_versions_bumped():
    assert PROBES["tor"].version == 2 and PROBES["mitigation"].version == 2


# ---------------------------------------------------------------------------------------------
# (c) Paper mode on a published-layout set: the study's vocabulary, in its order.


def test_paper_mode_uses_the_study_vocabulary(tmp_path: Path):
    ps = ProbeSet.load(make_published_tree(tmp_path / "release"))
    assert ps.vocabulary == sorted(ps.vocabulary) and len(ps.vocabulary) == 6  # the names found, alphabetical
    enc = PlantedTextEncoder([*COCO_NAMES, "axe"])

    def run(probe, options, vocab=None, probe_set=ps):
        ctx = ProbeContext(encoder=enc, probe_set=probe_set, vocab=vocab, options=options, seed=0, progress=False)
        return probe(ctx)

    paper = {"mode": "paper", "n": [2], "max_captions": 30}
    r = run(tor, paper)
    assert r.config["vocab"] == list(COCO_NAMES)  # the 90 names in the study's order
    assert any("the study's 90 names in its order, not the probe set's 6" in note for note in r.notes)
    assert r.counts["n2/hit_rate"] == 30 and "n2: 30 of 4005 combinations" in " ".join(r.notes)
    m = run(mitigation, {**paper, "itm": False})
    assert m.config["vocab"] == list(COCO_NAMES)
    given = ["cup", "airplane", "plate"]  # a vocabulary given explicitly wins, in its own order
    g = run(tor, paper, vocab=given)
    assert g.config["vocab"] == given and not any("paper mode" in note for note in g.notes)
    balanced = run(tor, {"n": [2], "num_captions": 10})  # balanced mode keeps the set's own vocabulary
    assert balanced.config["vocab"] == ps.vocabulary and not balanced.notes
    # without a probe set paper mode was already on the COCO names: no note
    alone = run(tor, paper, probe_set=None)
    assert alone.config["vocab"] == list(COCO_NAMES) and not any("paper mode" in n for n in alone.notes)


def test_paper_mode_on_a_simco_set_uses_the_study_shapes(tmp_path: Path):
    root = tmp_path / "simco"
    for name in ("cube", "sphere", "cone"):
        _png(root / "SimCO-OneObject" / f"{name}.png")
    _png(root / "SimCO-TwoObject" / "cube_cone.png")
    ps = ProbeSet.load(root)
    assert ps.kind == "simco"
    ctx = ProbeContext(encoder=PlantedTextEncoder(SIMCO_NAMES), probe_set=ps, options={"mode": "paper"},
                       progress=False)  # fmt: skip
    assert tor(ctx).config["vocab"] == list(SIMCO_NAMES)


# ---------------------------------------------------------------------------------------------
# (d) Published-layout files that repeat a sequence are dropped, and the loader says so.


def test_published_duplicates_are_dropped_with_a_warning(tmp_path: Path, caplog):
    root = make_published_tree(tmp_path / "release")
    with caplog.at_level(logging.WARNING, logger="clipprobe.data.probeset"):
        clean = ProbeSet.load(root)
    assert not caplog.records and "dropped_duplicates" not in clean.manifest
    _png(root / "CoCo-TwoObject-LBig" / "airplane_cup.png")
    _png(root / "CoCo-TwoObject-LBig" / "cup_airplane.png")  # another order: another scene
    _png(root / "CoCo-TwoObject-LBig" / "airplane_cup (1).png")  # a copy's name: the same objects
    _png(root / "CoCo-TwoObject-LBig" / "airplane_cup_2.png")
    _png(root / "CoCo-TwoObject-RBig" / "airplane_cup.png")  # another folder (the other object large): kept
    _png(root / "CoCo-FourObject-Middle-Big" / "cup_axe_traffic_light_hot dog.png")  # spelt otherwise
    with caplog.at_level(logging.WARNING, logger="clipprobe.data.probeset"):
        ps = ProbeSet.load(root)
    names = sorted(s.file_name for s in ps.scenes)
    assert len(ps.scenes) == len(clean.scenes) + 3
    assert "CoCo-TwoObject-LBig/airplane_cup.png" in names and "CoCo-TwoObject-LBig/cup_airplane.png" in names
    assert "CoCo-FourObject-Middle-Big/cup_axe_traffic light_hot dog.png" in names  # the plain spelling is kept
    assert not any("(1)" in n or "_2.png" in n or "traffic_light" in n for n in names)
    assert ps.manifest["dropped_duplicates"] == {"2": 2, "4": 1}
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    assert "dropped 3 scene file(s) (2 at n=2, 1 at n=4)" in text and "airplane_cup (1).png" in text
    assert "\n" not in text
    two = [s for s in ps.scenes if s.n == 2]
    assert sorted(s.names for s in two) == [("airplane", "cup"), ("airplane", "cup"), ("cup", "airplane")]


def test_unreadable_published_name_is_still_an_error(tmp_path: Path):
    root = make_published_tree(tmp_path / "release")
    _png(root / "CoCo-ThreeObject-BRBig" / "airplane_unicorn_axe (1).png")
    with pytest.raises(UserError, match="airplane_unicorn_axe"):
        ProbeSet.load(root)


# ---------------------------------------------------------------------------------------------
# (e) The study's values stand only beside tor rows counted as the study did.

PAPER = {"mode": "paper", "template": "bare", "run_seed": 0}


def _study_rows(records):
    lines = to_markdown(records).splitlines()
    return [(lines[i - 1], ln) for i, ln in enumerate(lines) if ln.startswith("| ↳ *study*")]


def test_study_values_only_beside_substring_paper_records():
    vit = {"model": "ViT-B-32", "weights": tag("openai")}
    sub = record("tor", position_entries(0.55), options={**PAPER, "hits": "substring"}, **vit)
    rows = _study_rows([sub])
    [(above, study)] = [(a, s) for a, s in rows if "n=100" in a]
    assert "50.31 | 20.74 | 14.45 | 6.79" in study and "not comparable" not in study
    for options, why in [({**PAPER, "hits": "exact"}, "exact hits"), ({"run_seed": 0}, "exact hits"),
                         ({**PAPER, "hits": "substring", "mode": "balanced"}, "balanced captions"),
                         ({**PAPER, "hits": "substring", "template": "article"}, "template article")]:  # fmt: skip
        rec = record("tor", position_entries(0.55), options=options, **vit)
        rows = _study_rows([rec])
        assert rows, options
        for _above, study in rows:
            assert f"*not comparable: {why}*" in study, (options, study)
            assert not any(ch.isdigit() for ch in study.replace(why, "")), study  # no published number beside it
        assert study_value(rec, "share", "1", 4) is None and published_value(rec, "share", "1", 4) == 0.5031
    other_vocab = record("tor", position_entries(0.55), options={**PAPER, "hits": "substring"}, **vit)
    other_vocab.config = {"vocab": sorted(COCO_NAMES)}
    assert not_comparable(other_vocab, "share") == "not comparable: not the study's 90 COCO names"
    sub.config = {"vocab": list(COCO_NAMES)}
    assert not_comparable(sub, "share") is None and study_value(sub, "share", "1", 4) == 0.5031


def test_study_ticks_in_the_bars_only_for_comparable_records():
    vit = {"model": "ViT-B-32", "weights": tag("openai")}
    exact = record("tor", position_entries(0.55), options={**PAPER, "hits": "exact"}, **vit)
    sub = record("tor", position_entries(0.55), options={**PAPER, "hits": "substring"}, **vit)

    def share_study(rec):
        fig = next(f for f in bar_figures([rec], min_count=1) if f.name[-1] == "share" and f.name[-2] == "n4")
        return fig.groups[0].study

    assert share_study(sub)[:4] == [0.5031, 0.2074, 0.1445, 0.0679]
    assert all(v is None for v in share_study(exact))


def test_image_probe_study_rows_unaffected():
    ior = record("ior", position_entries(0.7, roles=["large", "small_1", "small_2", "small_3"]),
                 model="ViT-B-32", weights=tag("openai"))  # fmt: skip
    [(_above, study)] = _study_rows([ior])
    assert "65.22 | 17.39 | 8.70 | 8.70" in study
    assert not_comparable(ior, "share") is None
    assert math.isclose(study_value(ior, "share", "large", 4), 0.6522)
