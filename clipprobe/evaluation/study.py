"""The study's published values (docs/PROBES.md "The study's reference numbers"; Abbasi et al., CVPR 2025).

They are looked up by structure: (probe, model, pretrained tag) and the entry's (n, family, key);
``n`` None = the study does not say (shown at every n). Values are shares (0..1).

A value stands beside a record only when the record counted as the study did (:func:`not_comparable`):
the study's TOR shares are among *substring* hits of its paper-mode captions (bare names, the 90 COCO names
in its order), so a tor or mitigation record with clipprobe's default exact hits, balanced captions or another
template or vocabulary gets no value, and the report says why instead.
"""

from __future__ import annotations

from clipprobe.data.vocab import COCO_NAMES
from clipprobe.evaluation.records import Record

STUDY = "Abbasi et al., CVPR 2025"
STUDY_TARGETS = ("comco", "coco")  # the study measured on its ComCO (and the COCO names)

_TOR = ("share", ("1", "2", "3", "4"))
_IOR = ("share", ("large", "small_1", "small_2", "small_3"))
_ITM = ("accuracy", ("scenario1", "scenario2"))
_VALUES: dict[tuple[str, str, str], tuple[int | None, tuple[str, tuple[str, ...]], tuple[float, ...]]] = {
    ("tor", "ViT-B-32", "laion2b_s34b_b79k"): (4, _TOR, (0.6396, 0.2159, 0.1068, 0.0376)),
    ("tor", "ViT-B-32", "datacomp_xl_s13b_b90k"): (4, _TOR, (0.7113, 0.1626, 0.0874, 0.0387)),
    ("tor", "ViT-B-32", "openai"): (4, _TOR, (0.5031, 0.2074, 0.1445, 0.0679)),
    ("ior", "ViT-B-32", "laion2b_s34b_b79k"): (4, _IOR, (0.8545, 0.0636, 0.0545, 0.0273)),
    ("ior", "ViT-B-32", "datacomp_xl_s13b_b90k"): (4, _IOR, (0.8516, 0.0565, 0.0495, 0.0424)),
    ("ior", "ViT-B-32", "openai"): (4, _IOR, (0.6522, 0.1739, 0.0870, 0.0870)),
    ("itm", "ViT-B-32", "datacomp_xl_s13b_b90k"): (None, _ITM, (0.9999, 0.6750)),
    ("itm", "ViT-B-32", "openai"): (None, _ITM, (0.9959, 0.5223)),
}

# (probe, model, pretrained tag) -> (n, family, key) -> published share.
REFERENCES: dict[tuple[str, str, str], dict[tuple[int | None, str, str], float]] = {
    who: {(n, family, key): v for key, v in zip(keys, values, strict=True)}
    for who, (n, (family, keys), values) in _VALUES.items()
}


def target_kind(r: Record) -> str | None:
    """The probe set's kind (``comco``, ``simco``), else the vocabulary's label."""
    return (r.probe_set or {}).get("kind") or r.vocab


def not_comparable(r: Record, family: str | None) -> str | None:
    """Why a record's ``family`` entries cannot stand beside the study's values (``not comparable: exact hits``),
    or None when they can. Only the text retrieval probes (tor, mitigation) have a protocol of their own to match:
    the study's paper-mode captions (``mode: paper``, template ``bare``, the 90 COCO names in its order) and,
    for the shares among hits and the hit rate, its substring hit test (``hits: substring``). Options missing
    from a record (written before the option existed) count as their defaults."""
    if r.probe not in ("tor", "mitigation"):
        return None
    opts = r.options
    if family in ("share", "hit_rate") and opts.get("hits", "exact") != "substring":
        return "not comparable: exact hits"
    if opts.get("mode", "balanced") != "paper":
        return "not comparable: balanced captions"
    if opts.get("template", "bare") != "bare":
        return f"not comparable: template {opts.get('template')}"
    vocab = r.config.get("vocab")
    if vocab is not None and list(vocab) != list(COCO_NAMES):
        return "not comparable: not the study's 90 COCO names"
    return None


def published_value(r: Record, family: str, key: str | None, n: int | None, variant: str | None = None) -> float | None:
    """The study's published value for this (family, key, n) of a record's model (by pretrained tag) on ComCO or
    the COCO names, without a variant, whatever the record's protocol; else None. See :func:`study_value`."""
    if variant is not None or key is None or r.weights.get("kind") != "tag" or target_kind(r) not in STUDY_TARGETS:
        return None
    ref = REFERENCES.get((r.probe, r.model, str(r.weights.get("tag"))))
    if not ref:
        return None
    for at in (n, None):
        if (at, family, key) in ref:
            return ref[(at, family, key)]
    return None


def study_value(r: Record, family: str, key: str | None, n: int | None, variant: str | None = None) -> float | None:
    """The study's value to place beside this (family, key, n) of a record: :func:`published_value` when the record
    counted as the study did (:func:`not_comparable` is None); else None."""
    if not_comparable(r, family) is not None:
        return None
    return published_value(r, family, key, n, variant)
