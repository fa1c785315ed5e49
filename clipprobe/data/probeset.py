"""Probe sets on disk: clipprobe's own folder format and the study's published layout.

clipprobe's format (DESIGN.md)::

    DIR/manifest.json            kind, generator version, seed, sizes, vocabulary, layouts
    DIR/references/<name>.png    one object alone, centred, at the small size
    DIR/scenes/<group>/<id>.png  multi-object scenes; <group> is e.g. ``3obj_large1`` or ``3obj_equal``
    DIR/metadata.jsonl           one row per scene (``file_name`` relative to DIR, so Hugging Face's
                                 imagefolder loads the folder as it is)

The study's release (PROBES.md, section 1): folders such as ``CoCo-ThreeObject-BRBig`` whose file
names list the objects in slot order joined by ``_``, and references in ``CoCo-OneObject/``.
``ProbeSet.load`` reads either. A file name is the scene's object sequence, so a folder of that layout
holds each sequence once: scenes that repeat another's objects in the same group (clipprobe's own n=2
groups hold a few) are lost when a set is written in it, and files that still spell a sequence twice
(``dog_cat (1).png``, ``traffic_light_cup.png`` beside ``traffic light_cup.png``) are dropped on
loading with a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipprobe.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METADATA = "metadata.jsonl"

# Slot names in order, per number of objects (PROBES.md, section 1).
SLOT_NAMES: dict[int, tuple[str, ...]] = {
    1: ("center",),
    2: ("left", "right"),
    3: ("upper_left", "middle", "bottom_right"),
    4: ("upper_left", "upper_right", "bottom_left", "bottom_right"),
    5: ("upper_left", "upper_right", "center", "bottom_left", "bottom_right"),
}


@dataclass(frozen=True)
class SceneObject:
    """One object in a scene. ``bbox`` is ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive);
    ``area`` counts the object's opaque pixels. Both are ``None`` where the source does not say
    (the published layout). ``is_large`` is ``None`` where the size roles are unknown."""

    name: str
    slot: int
    bbox: tuple[int, int, int, int] | None = None
    area: int | None = None
    is_large: bool | None = False

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> SceneObject:
        bbox = row.get("bbox")
        return cls(
            name=row["name"],
            slot=int(row["slot"]),
            bbox=tuple(int(v) for v in bbox) if bbox is not None else None,  # type: ignore[arg-type]
            area=row.get("area"),
            is_large=row.get("is_large"),
        )


@dataclass(frozen=True)
class Scene:
    """A multi-object scene: objects in slot order. ``variant`` is ``large`` (one large object)
    or ``equal`` (all one size)."""

    file_name: str
    n: int
    variant: str
    objects: tuple[SceneObject, ...]
    scene_id: str = ""

    @property
    def layout(self) -> str:
        return f"{self.n}obj"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    @property
    def large(self) -> SceneObject | None:
        """The large object, or None for equal-size scenes and unknown roles."""
        return next((o for o in self.objects if o.is_large), None)

    @property
    def large_slot(self) -> int | None:
        big = self.large
        return big.slot if big is not None else None

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["layout"] = self.layout
        row["objects"] = [{**asdict(o), "bbox": list(o.bbox) if o.bbox else None} for o in self.objects]
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Scene:
        objects = tuple(SceneObject.from_json(o) for o in row["objects"])
        return cls(
            file_name=row["file_name"],
            n=int(row.get("n", len(objects))),
            variant=row.get("variant", "large" if any(o.is_large for o in objects) else "equal"),
            objects=objects,
            scene_id=row.get("scene_id", ""),
        )


@dataclass
class ProbeSet:
    """A loaded probe set: where it is, its vocabulary, one reference image per object, and scenes (and, for a
    real data set such as COCO, its captions)."""

    root: Path
    kind: str
    vocabulary: list[str]
    references: dict[str, Path]
    scenes: list[Scene]
    manifest: dict[str, Any] = field(default_factory=dict)
    # Real captions naming several objects, ``(objects in mention order, text)``: COCO's (clipprobe.data.coco),
    # which COCO-TOR uses in place of generated ones; empty for generated and published sets.
    captions: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.root.name

    def path(self, scene: Scene) -> Path:
        return self.root / scene.file_name

    def counts(self) -> list[int]:
        """The numbers of objects present, sorted."""
        return sorted({s.n for s in self.scenes})

    def by_n(self) -> dict[int, list[Scene]]:
        groups: dict[int, list[Scene]] = defaultdict(list)
        for s in self.scenes:
            groups[s.n].append(s)
        return dict(sorted(groups.items()))

    @classmethod
    def load(cls, path: str | Path) -> ProbeSet:
        """Read clipprobe's own folder (with ``manifest.json``) or the study's published layout.

        Raises:
            UserError: the folder is missing, or is neither format.
        """
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise UserError(f"probe set {root} is a file; pass the probe set's folder (the one holding manifest.json)")
        if not root.is_dir():
            raise UserError(f"probe set {root} does not exist; generate one with 'clipprobe data comco --out {root}'")
        if (root / MANIFEST).is_file():
            return _load_own(root)
        if any(_PUBLISHED_DIR.match(p.name) for p in root.iterdir() if p.is_dir()):
            return _load_published(root)
        raise UserError(
            f"{root} is not a probe set (no {MANIFEST}, no folders like CoCo-ThreeObject-BRBig); "
            "point --probe-set at a folder made by 'clipprobe data comco|simco' or at the study's release"
        )


def _load_own(root: Path) -> ProbeSet:
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        lines = (root / METADATA).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"probe set {root} is unreadable ({e}); regenerate it with --overwrite") from None
    if not isinstance(manifest, dict):
        raise UserError(f"probe set {root}: {MANIFEST} is not a JSON object; regenerate it with --overwrite")
    scenes = _read_metadata(root, lines)
    refs = {name: root / "references" / f"{name}.png" for name in manifest.get("objects", [])}
    missing = [n for n, p in refs.items() if not p.is_file()]
    if missing:
        raise UserError(f"probe set {root} lacks reference images for {', '.join(missing[:5])}; regenerate it")
    return ProbeSet(
        root=root,
        kind=manifest.get("kind", "unknown"),
        vocabulary=list(manifest.get("vocabulary") or manifest.get("objects", [])),
        references=refs,
        scenes=scenes,
        manifest=manifest,
    )


def _read_metadata(root: Path, lines: list[str]) -> list[Scene]:
    """The scenes of ``metadata.jsonl``, one per line; a line that is not a scene row, or a scene listed
    twice (a generated set never does: it is corrupt), is an error naming the line."""
    scenes: list[Scene] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            scene = Scene.from_json(json.loads(line))
            if not isinstance(scene.file_name, str) or not scene.file_name:
                raise ValueError(f"file_name {scene.file_name!r} is not a path")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"probe set {root}: {METADATA} line {lineno} is not a scene row ({type(e).__name__}: {e}); "
                "regenerate the set with --overwrite"
            ) from None
        if scene.file_name in first_line:
            raise UserError(
                f"probe set {root}: {METADATA} lists scene {scene.file_name} twice (lines "
                f"{first_line[scene.file_name]} and {lineno}); the set is corrupt: regenerate it with --overwrite"
            )
        first_line[scene.file_name] = lineno
        scenes.append(scene)
    return scenes


# ---------------------------------------------------------------------------------------------
# The study's published layout.

_PUBLISHED_DIR = re.compile(r"^(?P<set>[A-Za-z]+)-(?P<count>One|Two|Three|Four|Five)Object(?:-(?P<where>.*))?$")
_COUNTS = {"One": 1, "Two": 2, "Three": 3, "Four": 4, "Five": 5}


def _published_large_slot(where: str, n: int) -> int | None:
    """Which slot a folder's suffix marks as large (``BRBig`` = last, ``Middle-Big`` = centre,
    ``ULBig`` = first); None where the suffix names no slot of this layout."""
    key = re.sub(r"[-_]?big$", "", where, flags=re.IGNORECASE).lower().replace("-", "_")
    aliases = {"ul": "upper_left", "ur": "upper_right", "bl": "bottom_left", "br": "bottom_right",
               "l": "left", "r": "right", "m": "middle", "center": "center", "centre": "center"}  # fmt: skip
    key = aliases.get(key, key)
    slots = SLOT_NAMES.get(n, ())
    if key in ("middle", "center"):
        for alt in ("middle", "center"):
            if alt in slots:
                return slots.index(alt)
        return None
    return slots.index(key) if key in slots else None


def split_object_names(stem: str, known: set[str]) -> list[str] | None:
    """Split a published file stem (``traffic light_plate_axe``) into known names, in order.

    Names may themselves hold ``_`` or spaces, so this finds the split whose every part is known
    (``_`` and space are treated alike). Returns None if there is none.
    """
    norm = {k.replace("_", " ").lower(): k for k in known}
    parts = stem.split("_")
    best: dict[int, list[str]] = {0: []}
    for i in range(len(parts)):
        if i not in best:
            continue
        for j in range(i + 1, len(parts) + 1):
            cand = " ".join(parts[i:j]).lower()
            if cand in norm and j not in best:
                best[j] = best[i] + [norm[cand]]
    return best.get(len(parts))


# A copy's suffix, as file managers and download tools add it to a name already taken: "x (1)", "x copy 2", "x_1".
_COPY_SUFFIX = re.compile(r"(?:\s*\(\d+\)|[ _-]copy(?:[ _-]?\d+)?|[ _-]\d+)$", re.IGNORECASE)


def _scene_names(stem: str, known: set[str]) -> tuple[list[str] | None, bool]:
    """The objects a published scene file names, and whether the name is a copy's (``dog_cat (1)``)."""
    names = split_object_names(stem, known)
    if names is not None:
        return names, False
    base = _COPY_SUFFIX.sub("", stem)
    return (split_object_names(base, known), True) if base != stem else (None, False)


def _load_published(root: Path) -> ProbeSet:
    dirs = {p: _PUBLISHED_DIR.match(p.name) for p in sorted(root.iterdir()) if p.is_dir()}
    dirs = {p: m for p, m in dirs.items() if m}
    ref_dirs = [p for p, m in dirs.items() if m["count"] == "One"]
    if not ref_dirs:
        raise UserError(f"published probe set {root} has no *-OneObject folder of references")
    refs = {p.stem: p for d in ref_dirs for p in sorted(d.glob("*.png"))}
    scenes: list[Scene] = []
    dropped: dict[int, list[str]] = defaultdict(list)  # n -> files that repeat a sequence of their folder
    for d, m in dirs.items():
        n = _COUNTS[m["count"]]
        if n == 1:
            continue
        large = _published_large_slot(m["where"] or "", n)
        files = []
        for img in sorted(d.glob("*.png")):
            names, copy = _scene_names(img.stem, set(refs))
            if names is None or len(names) != n:
                raise UserError(
                    f"cannot read objects from {img.relative_to(root)}: expected {n} reference names joined by '_'"
                )
            files.append((copy, img.name, img, tuple(names)))
        kept: dict[tuple[str, ...], Path] = {}
        for _copy, _name, img, names in sorted(files):  # a plain name before its copies
            if names in kept:
                dropped[n].append(str(img.relative_to(root)))
            else:
                kept[names] = img
        for _copy, _name, img, names in files:  # in the files' order
            if kept[names] != img:
                continue
            objs = tuple(
                SceneObject(name=nm, slot=k, is_large=(k == large) if large is not None else None)
                for k, nm in enumerate(names)
            )
            scenes.append(Scene(str(img.relative_to(root)), n, "large", objs, scene_id=f"{d.name}/{img.stem}"))
    kind = "comco" if any(m["set"].lower() == "coco" for m in dirs.values()) else "simco"
    manifest: dict[str, Any] = {"kind": kind, "format": "published", "name": root.name}
    if dropped:
        per_n = ", ".join(f"{len(v)} at n={n}" for n, v in sorted(dropped.items()))
        examples = ", ".join(f for v in dropped.values() for f in v)[:300]
        log.warning(
            "published probe set %s: dropped %d scene file(s) (%s) that repeat the objects of another file in "
            "their folder; the layout names a scene by its objects, so it holds each sequence once per folder: %s",
            root, sum(map(len, dropped.values())), per_n, examples,
        )  # fmt: skip
        manifest["dropped_duplicates"] = {str(n): len(v) for n, v in sorted(dropped.items())}
    return ProbeSet(root, kind, sorted(refs), refs, scenes, manifest)
