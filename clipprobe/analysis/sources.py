"""Caption corpora with object areas, read as a stream of :class:`Sample` rows.

- Shards in img2dataset's format (``key.jpg``, ``key.txt``, ``key.json``), streamed sample by sample
  with webdataset's ``tarfile_samples`` (:func:`clipprobe.data.tars.iter_shard`: local paths, ``pipe:``
  commands, URLs); images are never decoded, and memory stays constant however long the shards.
  Areas come from clipprobe's corpus ground truth in ``key.json`` (``objects``: name, area, bbox).
- COCO: a captions file (one sample per caption, keyed by image id) and optionally an instances file
  (areas of the instance annotations summed per category per image).
- A detections JSONL keyed by sample key (``{"key", "detections": [{"label", "box": [x0, y0, x1, y1],
  "area": optional mask area}]}``) replaces the areas of either source, e.g. GroundingDINO + SAM output.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipprobe.data.tars import ShardReadError, iter_shard
from clipprobe.data.vocab import read_text_file
from clipprobe.errors import UserError

Areas = dict[str, "float | None"]  # object label -> area in pixels (None: the object has no area)


@dataclass
class Sample:
    """One caption with its annotation. ``areas`` is None when the sample has no annotation;
    ``bad_annotation`` marks an annotation that exists but could not be read."""

    key: str
    caption: str | None
    areas: Areas | None
    bad_annotation: bool = False


def _box_area(box: Any) -> float | None:
    """Area of ``[x0, y0, x1, y1]``, or None when it is not four numbers."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def add_area(areas: Areas, label: str, area: float | None) -> None:
    """Sum ``area`` into ``areas[label]`` (several instances of a label add up; one unknown makes it unknown)."""
    if label in areas:
        prev = areas[label]
        areas[label] = None if prev is None or area is None else prev + area
    else:
        areas[label] = area


def canonical_areas(areas: Mapping[str, float | None], canon: Callable[[str], str]) -> Areas:
    """Re-key ``areas`` by vocabulary name (``canon(label)``), summing labels that map to one name."""
    out: Areas = {}
    for label, area in areas.items():
        add_area(out, canon(label), area)
    return out


def areas_from_corpus_json(meta: Mapping[str, Any]) -> Areas | None:
    """Areas from a shard's ``key.json``; None when the row lists no objects (a plain img2dataset row).

    Two layouts: clipprobe's corpus (``clipprobe data corpus``: ``objects`` a list of names with
    parallel ``areas``, visible pixels, and ``boxes``), or ``objects`` as rows with ``name`` and
    ``area`` or ``bbox``. Boxes are ``[x0, y0, x1, y1]`` and stand in only where no area is given.
    """
    objects = meta.get("objects")
    if not isinstance(objects, list):
        return None
    areas: Areas = {}
    for i, obj in enumerate(objects):
        if isinstance(obj, str):
            name, area, box = obj, _item(meta.get("areas"), i), _item(meta.get("boxes"), i)
        else:
            name, area, box = obj["name"], obj.get("area"), obj.get("bbox", obj.get("box"))
        add_area(areas, str(name), float(area) if area is not None else _box_area(box))
    return areas


def _item(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list) and i < len(values) else None


class ShardSource:
    """Samples of img2dataset shards, in shard order. A shard that breaks off (truncated, unreadable)
    is noted in :attr:`errors` and the stream goes on with the next one.

    The caption is the sample's ``caption_key`` member; with the default key ``txt`` only, a sample
    without one falls back to its ``key.json``'s ``caption``. A ``caption_key`` that the first sample
    lacks is an error naming the members it has (a typo must not fall back to another caption).
    """

    def __init__(self, urls: list[str], caption_key: str = "txt", json_key: str = "json"):
        # webdataset lower-cases extensions when it groups a sample's members
        self.urls, self.caption_key, self.json_key = urls, caption_key.lower().lstrip("."), json_key.lower()
        self.errors: list[str] = []
        self._checked = False

    def __len__(self) -> int:
        """Samples written, from img2dataset's ``{shard}_stats.json`` (``successes``); 0 when unknown."""
        total = 0
        for url in self.urls:
            stats = Path(re.sub(r"\.tar$", "_stats.json", url))
            try:
                total += int(json.loads(stats.read_text())["successes"])
            except (OSError, ValueError, KeyError, TypeError):
                return 0
        return total

    def __iter__(self) -> Iterator[Sample]:
        for url in self.urls:
            try:
                for sample in iter_shard(url):
                    if not self._checked:
                        self._check_caption_key(sample, url)
                    yield self._sample(sample)
            except ShardReadError as e:
                self.errors.append(str(e))
                print(f"clipprobe: warning: shard {url} broke off after {e.count} samples ({e.reason})",
                      file=sys.stderr)  # fmt: skip

    def _check_caption_key(self, parts: Mapping[str, Any], url: str) -> None:
        """Refuse a caption key the first sample does not have (unless it is the default, ``txt``, and the
        sample's ``key.json`` holds a caption)."""
        self._checked = True
        if self.caption_key in parts:
            return
        if self.caption_key == "txt" and self.json_key in parts:
            try:
                if isinstance(json.loads(parts[self.json_key]).get("caption"), str):
                    return
            except (ValueError, AttributeError):
                pass
        members = ", ".join(sorted(k for k in parts if not k.startswith("__"))) or "none"
        raise UserError(
            f"--caption-key {self.caption_key!r}: the first sample ({parts.get('__key__')} in {url}) has no such "
            f"member; its members are: {members}; pass one of them"
        )

    def _sample(self, parts: Mapping[str, Any]) -> Sample:
        """A webdataset sample (``{"__key__", ext: bytes}``) as a :class:`Sample`; its image is never decoded."""
        key = parts["__key__"]
        caption = parts[self.caption_key].decode("utf-8", "replace") if self.caption_key in parts else None
        if self.json_key not in parts:
            return Sample(key, caption, None)
        try:
            meta = json.loads(parts[self.json_key])
            areas = areas_from_corpus_json(meta)
        except (ValueError, KeyError, TypeError, AttributeError):
            return Sample(key, caption, None, bad_annotation=True)
        if caption is None and self.caption_key == "txt" and isinstance(meta.get("caption"), str):
            caption = meta["caption"]
        return Sample(key, caption, areas)


def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{what} {path} is not readable JSON ({e})") from None


class CocoSource:
    """COCO captions (one sample per caption, key = image id) with areas from an instances file.

    Raises:
        UserError: a file is missing, not JSON, or not in COCO's format.
    """

    def __init__(self, captions: str | os.PathLike, instances: str | os.PathLike | None = None):
        data = _read_json(captions, "COCO captions file")
        rows = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(rows, list) or any(not {"image_id", "caption"} <= set(r) for r in rows):
            raise UserError(f"COCO captions file {captions} needs 'annotations' rows with image_id and caption")
        self.rows = rows
        self.labels: list[str] = []
        self.areas: dict[str, Areas] | None = None
        if instances is not None:
            self._read_instances(instances)

    def _read_instances(self, path: str | os.PathLike) -> None:
        data = _read_json(path, "COCO instances file")
        try:
            names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            self.labels = list(dict.fromkeys(names.values()))
            areas: dict[str, Areas] = defaultdict(dict)
            for ann in data["annotations"]:
                add_area(areas[str(ann["image_id"])], names[int(ann["category_id"])], float(ann["area"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"COCO instances file {path} is not in COCO's format (missing or bad {e})") from None
        self.areas = dict(areas)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Sample]:
        for row in self.rows:
            key = str(row["image_id"])
            areas = self.areas.get(key) if self.areas is not None else None
            caption = row["caption"] if isinstance(row["caption"], str) else None
            yield Sample(key, caption, dict(areas) if areas is not None else None)


def load_detections(path: str | os.PathLike) -> dict[str, Areas]:
    """Areas per sample key from a detections JSONL; a detection's area is its ``area`` (a mask's
    pixel count) when given, else its box's. Detections of one label add up.

    Raises:
        UserError: the file is missing, a line is not such a row, or a key repeats.
    """
    out: dict[str, Areas] = {}
    lines = read_text_file(path, "detections file").splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, areas = str(row["key"]), {}
            for det in row["detections"]:
                area = det.get("area")
                add_area(areas, str(det["label"]), float(area) if area is not None else _box_area(det["box"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f'detections file {path} line {lineno}: expected {{"key", "detections": [{{"label", "box"}}]}} ({e})'
            ) from None
        if key in out:
            raise UserError(f"detections file {path} line {lineno}: key {key} appears twice; keep one row per sample")
        out[key] = areas
    return out
