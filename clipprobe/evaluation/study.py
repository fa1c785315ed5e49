"""The study's published values (docs/PROBES.md "The study's reference numbers"; Abbasi et al., CVPR 2025).

They are looked up by structure: (probe, where it was measured, model, pretrained tag) and the entry's
(n, family, key); where = the study's ComCO (Tables 1-2 and 6, beside clipprobe's ComCO and the COCO names) or COCO
(Tables 3-4, beside COCO read with ``--coco_root``);
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
COMCO, REAL_COCO = "comco", "mscoco"  # where a value was measured: ComCO (and the COCO names), or COCO itself
# Targets -> the study's tables they stand beside: its ComCO (Tables 1-2, ITM) with clipprobe's ComCO and the COCO
# names; its COCO experiments (Tables 3-4) with COCO read by --coco_root (kind mscoco).
STUDY_TARGETS = {"comco": COMCO, "coco": COMCO, "mscoco": REAL_COCO}

_TOR = ("share", ("1", "2", "3", "4"))
_IOR = ("share", ("large", "small_1", "small_2", "small_3"))
_ITM = ("accuracy", ("scenario1", "scenario2"))
_LAION, _DATACOMP, _OPENAI = "laion2b_s34b_b79k", "datacomp_xl_s13b_b90k", "openai"
# (probe, where, model, pretrained tag) -> (n, (family, keys), values). Only the three models whose open_clip
# tags are certain; the study's tables also list XLM-Roberta, SigLIP, NegCLIP and SugarCrepe.
_VALUES: dict[tuple[str, str, str, str], tuple[int | None, tuple[str, tuple[str, ...]], tuple[float, ...]]] = {
    # Table 1: TOR on ComCO, n = 4
    ("tor", COMCO, "ViT-B-32", _LAION): (4, _TOR, (0.6396, 0.2159, 0.1068, 0.0376)),
    ("tor", COMCO, "ViT-B-32", _DATACOMP): (4, _TOR, (0.7113, 0.1626, 0.0874, 0.0387)),
    ("tor", COMCO, "ViT-B-32", _OPENAI): (4, _TOR, (0.5031, 0.2074, 0.1445, 0.0679)),
    # Table 2: IOR on ComCO, one large and three small objects
    ("ior", COMCO, "ViT-B-32", _LAION): (4, _IOR, (0.8545, 0.0636, 0.0545, 0.0273)),
    ("ior", COMCO, "ViT-B-32", _DATACOMP): (4, _IOR, (0.8516, 0.0565, 0.0495, 0.0424)),
    ("ior", COMCO, "ViT-B-32", _OPENAI): (4, _IOR, (0.6522, 0.1739, 0.0870, 0.0870)),
    # Table 6: image-text matching on ComCO
    ("itm", COMCO, "ViT-B-32", _DATACOMP): (None, _ITM, (0.9999, 0.6750)),
    ("itm", COMCO, "ViT-B-32", _OPENAI): (None, _ITM, (0.9959, 0.5223)),
    # Table 3: TOR on COCO captions, four objects
    ("tor", REAL_COCO, "ViT-B-32", _OPENAI): (4, _TOR, (0.3524, 0.2190, 0.2048, 0.2238)),
    ("tor", REAL_COCO, "ViT-B-32", _LAION): (4, _TOR, (0.6789, 0.1376, 0.0826, 0.1009)),
    ("tor", REAL_COCO, "ViT-B-32", _DATACOMP): (4, _TOR, (0.5768, 0.1768, 0.1275, 0.1188)),
    # Table 4: IOR (DomainNet single-object images as references) and I2TOR on COCO images, by size rank
    ("ior", REAL_COCO, "ViT-B-32", _OPENAI): (4, _IOR, (0.4302, 0.2882, 0.1713, 0.1103)),
    ("ior", REAL_COCO, "ViT-B-32", _LAION): (4, _IOR, (0.3944, 0.2845, 0.1770, 0.1441)),
    ("ior", REAL_COCO, "ViT-B-32", _DATACOMP): (4, _IOR, (0.3671, 0.2955, 0.1913, 0.1461)),
    ("i2tor", REAL_COCO, "ViT-B-32", _OPENAI): (4, _IOR, (0.5149, 0.2487, 0.1368, 0.0997)),
    ("i2tor", REAL_COCO, "ViT-B-32", _LAION): (4, _IOR, (0.4550, 0.2702, 0.1591, 0.1156)),
    ("i2tor", REAL_COCO, "ViT-B-32", _DATACOMP): (4, _IOR, (0.4664, 0.2682, 0.1453, 0.1201)),
}

# (probe, where, model, pretrained tag) -> (n, family, key) -> published share.
REFERENCES: dict[tuple[str, str, str, str], dict[tuple[int | None, str, str], float]] = {
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
    vocab = r.config.get("vocab")
    if vocab is not None and list(vocab) != list(COCO_NAMES):
        return "not comparable: not the study's 90 COCO names"
    if target_kind(r) == "mscoco":  # COCO-TOR: COCO's own captions, so the caption options do not apply
        return None
    if opts.get("mode", "balanced") != "paper":
        return "not comparable: balanced captions"
    if opts.get("template", "bare") != "bare":
        return f"not comparable: template {opts.get('template')}"
    return None


def published_value(r: Record, family: str, key: str | None, n: int | None, variant: str | None = None) -> float | None:
    """The study's published value for this (family, key, n) of a record's model (by pretrained tag) on ComCO, the
    COCO names or COCO, without a variant, whatever the record's protocol; else None. See :func:`study_value`."""
    where = STUDY_TARGETS.get(target_kind(r) or "")
    if variant is not None or key is None or r.weights.get("kind") != "tag" or where is None:
        return None
    ref = REFERENCES.get((r.probe, where, r.model, str(r.weights.get("tag"))))
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
