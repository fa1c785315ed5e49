"""The study's COCO probes (issue 14; docs/PROBES.md "The study's COCO probes"): COCO read from a tiny folder in
COCO's format written by the tests, COCO-TOR over its captions, IOR and I2TOR over its images ranked by annotated
area, planted encoders recovering a planted order or size bias, `clipprobe eval --coco_root` end to end, and the
study's Tables 3-4 beside the records in the report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from coco_fixture import write_references, write_tiny_coco
from planted_encoders import Recorder, name_vectors
from report_records import position_entries, record, tag

from clipprobe.analysis.mentions import COCO_SYNONYMS, Matcher
from clipprobe.data.coco import load_coco, load_references
from clipprobe.data.vocab import COCO_NAMES
from clipprobe.errors import UserError
from clipprobe.evaluation.runner import Target, runs_on
from clipprobe.evaluation.study import not_comparable, published_value, study_value
from clipprobe.probes.base import ProbeContext
from clipprobe.probes.suite import PROBES

VOCAB = list(COCO_NAMES)
REF_NAMES = ["person", "dog", "chair", "cup", "pizza", "apple", "car", "hot dog"]  # covers some of the fixture's


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_tiny_coco(tmp_path_factory.mktemp("coco") / "coco")


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return write_references(tmp_path_factory.mktemp("refs") / "refs", REF_NAMES)


class CocoEncoder(Recorder):
    """Planted: a caption is a weighted sum of the name vectors of the objects it mentions, in mention order
    (``text_weights``, the first strongest = first-mention bias); a COCO image is a weighted sum of its objects
    by annotated area, largest first (``image_weights`` = large-object bias); a reference image is its object."""

    model = preprocess = tokenizer = None
    device = "cpu"

    def __init__(self, by_area: dict[str, tuple[str, ...]], root: Path, refs: dict[str, Path],
                 text_weights: Sequence[float] = (3, 1, 1, 1, 1), image_weights: Sequence[float] = (3, 1, 1, 1, 1),
                 last: bool = False):  # fmt: skip
        super().__init__()
        self.vecs = name_vectors(VOCAB, dim=512)
        self.matcher = Matcher(VOCAB, COCO_SYNONYMS)
        self.scenes = {str(root / f): objs for f, objs in by_area.items()}
        self.refs = {str(p): name for name, p in refs.items()}
        self.text_weights, self.image_weights, self.last = text_weights, image_weights, last

    def _mix(self, objects: Sequence[str], weights: Sequence[float]) -> torch.Tensor:
        vec = sum((w * self.vecs[o] for o, w in zip(objects, weights, strict=False)), torch.zeros(512))
        return torch.nn.functional.normalize(vec, dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.text_calls += 1
        self.texts += list(texts)
        found = [self.matcher.find(t) for t in texts]
        return torch.stack([self._mix(f[::-1] if self.last else f, self.text_weights) for f in found])

    def encode_images(self, paths: Sequence[str | Path]) -> torch.Tensor:
        self.image_calls += 1
        self.images += [str(p) for p in paths]
        out = []
        for p in map(str, paths):
            objs = (self.refs[p],) if p in self.refs else self.scenes[p]
            out.append(self._mix(objs, self.image_weights))
        return torch.stack(out)


def run(probe: str, ps, encoder, **options) -> dict:
    result = PROBES[probe].fn(ProbeContext(encoder, ps, None, options, 0, False))
    return {"entries": {m.name: m for m in result.entries}, "notes": result.notes, "config": result.config}


# -- reading COCO ---------------------------------------------------------------------------------


def test_images_ranked_by_summed_area_and_captions_by_mention(coco):
    ps = load_coco(coco.root)
    assert ps.kind == "mscoco" and ps.name == "mscoco-val2017" and ps.vocabulary == VOCAB
    assert {s.file_name: s.names for s in ps.scenes} == coco.by_area  # area = sum of instances, largest first
    assert all(s.objects[0].is_large and not any(o.is_large for o in s.objects[1:]) for s in ps.scenes)
    assert [o.slot for s in ps.scenes for o in s.objects] == [k for s in ps.scenes for k in range(s.n)]
    assert all(s.objects[k].area > s.objects[k + 1].area for s in ps.scenes for k in range(s.n - 1))
    assert ps.captions == coco.captions  # "a man" = person, "two dogs" = dog, "a mug" = cup, mention order
    assert ps.manifest["dropped_images"] == coco.dropped  # the sports ball image, one object, six objects
    assert ps.counts() == [2, 3, 4, 5] and ps.manifest["scenes_per_n"] == {"2": 12, "3": 12, "4": 12, "5": 12}


def test_two_instances_outrank_one_bigger(tmp_path):
    root = write_tiny_coco(tmp_path / "c", images_per_n=1).root
    data = json.loads((root / "annotations/instances_val2017.json").read_text())
    image = data["images"][0]["id"]
    mine = [a for a in data["annotations"] if a["image_id"] == image]
    cats = sorted({a["category_id"] for a in mine})
    a, b = cats[0], cats[1]
    data["annotations"] = [x for x in data["annotations"] if x["image_id"] != image] + [
        {"id": 9001, "image_id": image, "category_id": a, "area": 300.0, "bbox": [0, 0, 1, 1]},
        {"id": 9002, "image_id": image, "category_id": a, "area": 300.0, "bbox": [0, 0, 1, 1]},
        {"id": 9003, "image_id": image, "category_id": b, "area": 500.0, "bbox": [0, 0, 1, 1]},
    ]
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    names = {c["id"]: c["name"] for c in data["categories"]}
    scene = next(s for s in load_coco(root).scenes if s.scene_id == str(image))
    assert scene.names == (names[a], names[b]) and [o.area for o in scene.objects] == [600, 500]


def test_reference_labels_map_only_by_form(tmp_path):
    """DomainNet's police_car/ or aircraft_carrier/ are not car or airplane: they stay distractors."""
    folder = write_references(tmp_path / "d", ["car", "police car", "airplane", "aircraft carrier", "dogs"], "folders")
    refs = load_references(folder, VOCAB)
    assert sorted(refs) == ["aircraft carrier", "airplane", "car", "dog", "police car"]
    assert refs["car"].parent.name == "car" and refs["airplane"].parent.name == "airplane"


def test_annotations_of_images_not_listed_are_counted(tmp_path):
    root = write_tiny_coco(tmp_path / "c", images_per_n=2).root
    data = json.loads((root / "annotations/instances_val2017.json").read_text())
    data["images"] = data["images"][1:]  # a subset: the first image's annotations stay behind
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    ps = load_coco(root)
    assert ps.manifest["dropped_images"]["annotations_without_image"] >= 2
    assert all(s.scene_id != "1" for s in ps.scenes)


def test_references_from_files_class_folders_and_a_probe_set(tmp_path):
    files = load_references(write_references(tmp_path / "f", ["dog", "hot dog"]), VOCAB)
    assert sorted(files) == ["dog", "hot dog"]
    folders = load_references(write_references(tmp_path / "d", ["hot dog", "teddy bear", "axe"], "folders"), VOCAB)
    assert sorted(folders) == ["axe", "hot dog", "teddy bear"]  # hot_dog/ -> hot dog; axe stays a distractor
    assert folders["hot dog"].name == "a_001.jpg"  # the first image of a class folder, by name
    ps_folder = tmp_path / "set"
    write_references(ps_folder / "references", ["dog"])
    (ps_folder / "manifest.json").write_text("{}")
    assert list(load_references(ps_folder, VOCAB)) == ["dog"]
    write_references(tmp_path / "f", ["dogs"])  # dogs.png beside dog.png: two images for one object
    with pytest.raises(UserError, match="dog.png and dogs.png both stand for 'dog'"):
        load_references(tmp_path / "f", VOCAB)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "annotations/captions_val2017.json").unlink(), "no annotations/captions_val2017.json"),
        (lambda r: (r / "annotations/instances_val2017.json").write_text("{"), "not readable JSON"),
        (lambda r: (r / "annotations/instances_val2017.json").write_text('{"images": []}'), "not a COCO instances"),
        (lambda r: (r / "val2017/000000000001.jpg").unlink(), "COCO images are missing under"),
    ],
)
def test_bad_coco_folders_are_one_line_errors(tmp_path, damage, message):
    root = write_tiny_coco(tmp_path / "c", images_per_n=2).root
    damage(root)
    with pytest.raises(UserError, match=message) as e:
        load_coco(root)
    assert "\n" not in str(e.value)


def test_wrong_split_names_the_splits_there(coco):
    with pytest.raises(UserError, match=r"holds captions_val2017.json, instances_val2017.json: choose --coco_split"):
        load_coco(coco.root, "train2017")


def test_fingerprint_follows_the_annotations_and_references(tmp_path, refs):
    root = write_tiny_coco(tmp_path / "c", images_per_n=2).root
    first = load_coco(root).manifest["fingerprint"]
    assert load_coco(root).manifest["fingerprint"] == first
    assert load_coco(root, references=refs).manifest["fingerprint"] != first
    path = root / "annotations/captions_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["caption"] = "A dog and a cat."
    path.write_text(json.dumps(data))
    assert load_coco(root).manifest["fingerprint"] != first


# -- the probes on planted encoders ---------------------------------------------------------------


def test_coco_tor_recovers_planted_first_mention(coco):
    ps = load_coco(coco.root)
    enc = CocoEncoder(coco.by_area, coco.root, {})
    out = run("tor", ps, enc)
    for n in (2, 3, 4, 5):
        assert out["entries"][f"n{n}/closest_1"].value == 1.0
        assert out["entries"][f"n{n}/closest_1"].count == sum(len(o) == n for o, _ in coco.captions)
        assert out["entries"][f"n{n}/share_1"].value == 1.0 and out["entries"][f"n{n}/hit_rate"].value == 1.0
    assert out["config"]["captions"] == "mscoco" and "own captions" in out["notes"][0]
    enc.assert_unique()
    assert all(t in VOCAB or any(t == c for _, c in coco.captions) for t in enc.texts)  # no generated caption


def test_coco_tor_recovers_planted_last_mention(coco):
    ps = load_coco(coco.root)
    last = run("tor", ps, CocoEncoder(coco.by_area, coco.root, {}, last=True))
    for n in (2, 3, 4, 5):  # the last-mentioned object strongest: the opposite reading, from the same captions
        assert last["entries"][f"n{n}/closest_{n}"].value == 1.0 and last["entries"][f"n{n}/closest_1"].value == 0.0
        assert math.isclose(last["entries"][f"n{n}/bias_index"].value, -1 / (n - 1))


def test_coco_tor_substring_hits_need_the_name_in_the_text(coco):
    ps = load_coco(coco.root)
    out = run("tor", ps, CocoEncoder(coco.by_area, coco.root, {}), hits="substring")
    # the fixture names person, bicycle, cat and cup by synonyms ("a man", "a bike", "a kitten", "a mug"), so a
    # caption holding one is never a substring hit; every other caption is
    synonyms = {"person", "bicycle", "cat", "cup"}
    for n in (2, 3, 4, 5):
        caps = [o for o, _ in coco.captions if len(o) == n]
        want = sum(not (set(o) & synonyms) for o in caps)
        assert out["entries"][f"n{n}/hit_rate"].value == pytest.approx(want / len(caps))


def test_i2tor_recovers_planted_size_bias(coco):
    ps = load_coco(coco.root)
    enc = CocoEncoder(coco.by_area, coco.root, {})
    out = run("i2tor", ps, enc)
    for n in (2, 3, 4, 5):
        assert out["entries"][f"n{n}/closest_large"].value == 1.0 and out["entries"][f"n{n}/large"].value == 1.0
        assert out["entries"][f"n{n}/closest_large"].count == 12
    assert out["config"]["roles"] == "by annotated area, largest first" and out["notes"] == []
    flat = run("i2tor", ps, CocoEncoder(coco.by_area, coco.root, {}, image_weights=(1, 1, 1, 1, 1)))
    assert math.isclose(flat["entries"]["n4/closest_large"].value, 0.25)
    enc.assert_unique()


def test_ior_keeps_the_images_whose_objects_have_references(coco, refs):
    ps = load_coco(coco.root, references=refs)
    out = run("ior", ps, CocoEncoder(coco.by_area, coco.root, ps.references))
    covered = {f: objs for f, objs in coco.by_area.items() if set(objs) <= set(REF_NAMES)}
    assert covered and len(covered) < len(coco.by_area)
    for n in sorted({len(o) for o in covered.values()}):
        m = out["entries"][f"n{n}/closest_large"]
        assert m.value == 1.0 and m.count == sum(len(o) == n for o in covered.values())
    assert f"{len(covered)} of {len(coco.by_area)} COCO images" in out["notes"][0]


def test_ior_without_covering_references_says_so(coco, tmp_path):
    ps = load_coco(coco.root, references=write_references(tmp_path / "r", ["teddy bear"]))
    with pytest.raises(UserError, match="none of the 48 COCO images has all its objects among the 1 references"):
        run("ior", ps, CocoEncoder(coco.by_area, coco.root, ps.references))


def test_only_the_coco_probes_run_on_coco(coco, refs):
    with_refs, plain = load_coco(coco.root, references=refs), load_coco(coco.root)
    on = {p for p in PROBES if runs_on(p, Target("mscoco-val2017", with_refs), has_vocab_target=True)}
    assert on == {"tor", "ior", "i2tor"}  # tor even beside a vocabulary target: COCO-TOR is COCO's own
    assert {p for p in PROBES if runs_on(p, Target("m", plain), False)} == {"tor", "i2tor"}


# -- eval end to end, then the report ---------------------------------------------------------------


def test_eval_coco_root_end_to_end(coco, refs, tmp_path, capsys):
    from clipprobe.cli import main

    out = tmp_path / "results"
    argv = ["eval", "--model", "clipprobe-tiny", "--device", "cpu", "--batch-size", "16", "--progress", "false",
            "--probes", "tor,ior,i2tor,toc", "--coco_root", str(coco.root), "--coco_references", str(refs),
            "--out", str(out)]  # fmt: skip
    assert main([*argv, "--options", '{"toc": {"per_label": 2, "epochs": 1}}']) == 0
    said = capsys.readouterr().out
    assert "mscoco-val2017: 48 images and 245 captions with 2-5 objects" in said
    assert "1 images left out for an object outside the vocabulary" in said and "not on COCO: toc" in said
    recs = {f.name.split("__")[3]: json.loads(f.read_text()) for f in out.glob("*mscoco*.jsonl")}
    assert sorted(recs) == ["i2tor", "ior", "tor"]
    assert sorted(f.name.split("__")[3] for f in out.glob("*vocab-coco*.jsonl")) == ["toc", "tor"]  # text probes too
    for rec in recs.values():
        assert rec["target"] == "mscoco-val2017" and rec["probe_set"]["kind"] == "mscoco"
        assert rec["probe_set"]["split"] == "val2017" and len(rec["probe_set"]["manifest_sha256"]) == 64
    want = {str(n): sum(len(o) == n for o, _ in coco.captions) for n in (2, 3, 4, 5)}
    assert recs["tor"]["config"]["num_captions"] == want
    assert recs["ior"]["probe_set"]["references"]["count"] == len(REF_NAMES)
    # the same identity is reused; a changed caption file is a new identity, never a stale record
    assert main([*argv, "--probes", "tor", "--skip_existing", "true"]) == 0
    assert "skip" in capsys.readouterr().out
    from clipprobe.cli import main as report_main

    assert report_main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "results.md").read_text()
    assert "## tor · mscoco-val2017" in md and "## i2tor · mscoco-val2017" in md


def test_eval_coco_root_refuses_without_a_coco_probe(coco, tmp_path, capsys):
    from clipprobe.cli import main

    argv = ["eval", "--model", "clipprobe-tiny", "--device", "cpu", "--probes", "toc", "--coco_root", str(coco.root),
            "--out", str(tmp_path / "r")]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "none of which is among --probes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _coco_record(probe: str, hits: str | None = "substring", kind: str = "mscoco", first: float = 0.5):
    roles = None if probe == "tor" else ["large", "small_1", "small_2", "small_3"]
    r = record(probe, position_entries(first, 4, 100, None, roles), model="ViT-B-32", weights=tag("openai"),
               target=f"{kind}-val2017", options={"run_seed": 0, **({"hits": hits} if hits else {})})  # fmt: skip
    r.probe_set = {**r.probe_set, "kind": kind}
    r.config = {"vocab": VOCAB} if probe == "tor" else {}
    return r


def test_study_tables_3_and_4_stand_beside_coco_records():
    tor = _coco_record("tor")
    assert not_comparable(tor, "share") is None and study_value(tor, "share", "1", 4) == 0.3524
    assert study_value(tor, "share", "4", 4) == 0.2238 and study_value(tor, "share", "1", 3) is None
    exact = _coco_record("tor", hits=None)
    assert (
        not_comparable(exact, "share") == "not comparable: exact hits" and study_value(exact, "share", "1", 4) is None
    )
    assert published_value(exact, "share", "1", 4) == 0.3524  # the report says why it is left out
    assert study_value(_coco_record("i2tor"), "share", "large", 4) == 0.5149
    assert study_value(_coco_record("ior"), "share", "small_3", 4) == 0.1103
    comco = _coco_record("ior", kind="comco")
    assert study_value(comco, "share", "large", 4) == 0.6522  # Table 2, not Table 4
    assert study_value(_coco_record("i2tor", kind="comco"), "share", "large", 4) is None  # the study has none


def test_report_prints_the_coco_tables_beside_the_records(tmp_path):
    from clipprobe.evaluation.tables import to_markdown

    md = to_markdown([_coco_record("tor"), _coco_record("i2tor"), _coco_record("tor", hits=None)])
    assert "| ↳ *study* | *Abbasi et al., CVPR 2025* | | | 35.24 | 21.90 | 20.48 | 22.38 |" in md
    assert "| ↳ *study* | *Abbasi et al., CVPR 2025* | | | 51.49 | 24.87 | 13.68 | 9.97 |" in md
    assert "*not comparable: exact hits*" in md


def test_paper_config_plans_the_coco_probes(coco, refs, monkeypatch):
    """configs/eval/paper.yaml with --coco_root plans COCO-TOR (the study's substring hits), IOR and I2TOR on
    COCO for each of its models (planned only: running them needs the study's weights)."""
    import clipprobe.evaluation.evaluate as ev
    from clipprobe.cli import main
    from clipprobe.evaluation.jobs import ModelSpec

    seen = {}
    monkeypatch.setattr(ev, "_run", lambda plan, config, skip: seen.update(jobs=plan.jobs) or [])
    monkeypatch.setattr(ev, "load_probe_sets", lambda entries, generate: [])
    monkeypatch.setattr(ev, "model_specs", lambda *a, **k: [ModelSpec("ViT-B-32", "openai")])
    config = Path(__file__).parents[1] / "configs" / "eval" / "paper.yaml"
    argv = ["eval", "--config", str(config), "--coco_root", str(coco.root), "--coco_references", str(refs)]
    assert main(argv) == 0
    on_coco = {j.probe: j for j in seen["jobs"] if j.target.label == "mscoco-val2017"}
    assert sorted(on_coco) == ["i2tor", "ior", "tor"]
    assert on_coco["tor"].identity["options"]["hits"] == "substring"
    assert {j.probe for j in seen["jobs"] if j.target.label == "vocab-coco"} >= {"tor", "toc", "size_claim"}
