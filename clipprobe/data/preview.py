"""``clipprobe data preview``: a contact sheet of a probe set, to see at a glance what it holds.

A sample of scenes, spread over all groups, each with its objects in slot order underneath; the
large object is marked with ``*`` and, where the set has boxes, a red frame. Below them, every
reference image with its name. Works on clipprobe's folders and on the study's published layout.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clipprobe.data.limits import check_memory
from clipprobe.data.probeset import ProbeSet, Scene
from clipprobe.data.render import encode_png
from clipprobe.errors import UserError
from clipprobe.fileio import atomic_write_bytes, check_output_file

PAD = 8
LINE = 13  # label line height in pixels
LARGE_COLOUR = (220, 30, 30)
TEXT_COLOUR = (40, 40, 40)


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _group(scene: Scene) -> str:
    return scene.scene_id.split("/")[0] if "/" in scene.scene_id else Path(scene.file_name).parent.name


def sample_scenes(scenes: list[Scene], k: int, seed: int = 0) -> list[Scene]:
    """Up to ``k`` scenes, taken in turn from each group (random within a group), in group order."""
    rng = random.Random(seed)
    groups: dict[str, list[Scene]] = defaultdict(list)
    for s in scenes:
        groups[_group(s)].append(s)
    pools = {g: rng.sample(v, len(v)) for g, v in sorted(groups.items())}
    picked: list[Scene] = []
    while len(picked) < k and any(pools.values()):
        for pool in pools.values():
            if pool and len(picked) < k:
                picked.append(pool.pop())
    order = {g: i for i, g in enumerate(pools)}
    return sorted(picked, key=lambda s: (order[_group(s)], s.file_name))


def _open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, fully decoded.

    Raises:
        UserError: the file is missing, truncated, not an image or absurdly large, naming it.
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"cannot read image {path} ({reason}); the probe set is damaged: regenerate it") from None


def _fit(path: Path, size: int) -> tuple[Image.Image, int]:
    """The image scaled so that its longer side is ``size``, and its original width."""
    tile = _open_rgb(path)
    scale = size / max(tile.size)
    thumb = tile.resize(
        (max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), Image.Resampling.LANCZOS
    )
    return thumb, tile.width


def _clip(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def _scene_cell(ps: ProbeSet, scene: Scene, tile: int, rows: int, font: ImageFont.ImageFont) -> Image.Image:
    cell = Image.new("RGB", (tile, tile + 4 + rows * LINE), "white")
    img, width = _fit(ps.path(scene), tile)
    cell.paste(img, (0, 0))
    draw = ImageDraw.Draw(cell)
    scale = img.width / width
    for k, obj in enumerate(scene.objects):
        if obj.is_large and obj.bbox is not None:
            x0, y0, x1, y1 = (round(v * scale) for v in obj.bbox)
            draw.rectangle((x0 - 1, y0 - 1, x1, y1), outline=LARGE_COLOUR, width=2)
        label = ("* " if obj.is_large else "  ") + obj.name
        colour = LARGE_COLOUR if obj.is_large else TEXT_COLOUR
        draw.text((2, tile + 2 + k * LINE), _clip(draw, label, tile - 4, font), fill=colour, font=font)
    return cell


def _grid(cells: list[Image.Image], columns: int) -> Image.Image:
    if not cells:
        return Image.new("RGB", (1, 1), "white")
    w, h = max(c.width for c in cells), max(c.height for c in cells)
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * (w + PAD) - PAD, rows * (h + PAD) - PAD), "white")
    for i, c in enumerate(cells):
        sheet.paste(c, ((i % columns) * (w + PAD), (i // columns) * (h + PAD)))
    return sheet


def _reference_cell(path: Path, name: str, tile: int, font: ImageFont.ImageFont) -> Image.Image:
    cell = Image.new("RGB", (tile, tile + LINE + 2), "white")
    cell.paste(_fit(path, tile)[0], (0, 0))
    draw = ImageDraw.Draw(cell)
    draw.text((1, tile + 1), _clip(draw, name, tile - 2, font), fill=TEXT_COLOUR, font=font)
    return cell


def sheet_memory(scenes: int, columns: int, tile: int, rows: int, references: int, reference_tile: int) -> int:
    """Bytes that drawing a contact sheet takes at most: every cell, the two grids, the sheet and its PNG.

    Args:
        scenes: scenes shown.
        columns: scenes per row.
        tile: scene thumbnail side.
        rows: label lines under a scene (its largest object count).
        references: reference images shown.
        reference_tile: reference thumbnail side.
    """
    cell_h = tile + 4 + rows * LINE
    grid_w, grid_h = (columns * (tile + PAD), -(-scenes // columns) * (cell_h + PAD)) if scenes else (1, 1)
    ref_cols = max(1, (grid_w + PAD) // (reference_tile + PAD))
    ref_h = reference_tile + LINE + 2
    ref_w, ref_rows = ref_cols * (reference_tile + PAD), -(-references // ref_cols)
    sheet = (max(grid_w, ref_w, 400) + 2 * PAD) * (6 * LINE + grid_h + ref_rows * (ref_h + PAD) + 3 * PAD)
    pixels = scenes * tile * cell_h + grid_w * grid_h + references * reference_tile * ref_h
    pixels += ref_w * ref_rows * (ref_h + PAD) + 2 * sheet  # the sheet, and its PNG while it is encoded
    return 3 * pixels


def preview(
    probe_set: str,
    out: str | None = None,
    scenes: int = 24,
    columns: int = 6,
    tile: int = 160,
    reference_tile: int = 96,
    seed: int = 0,
) -> Path:
    """Draw a contact sheet of a probe set: sampled scenes with their objects, then all references.

    Args:
        probe_set: a folder made by 'clipprobe data comco|simco', or the study's published layout.
        out: PNG to write (default: ``<probe set folder name>_preview.png`` in the current folder).
        scenes: number of scenes to show, spread over all groups (0: references only).
        columns: scenes per row.
        tile: side of a scene thumbnail in pixels.
        reference_tile: side of a reference thumbnail in pixels.
        seed: which scenes are sampled.
    """
    if columns < 1 or tile < 32 or reference_tile < 16 or scenes < 0:
        raise UserError("preview needs --columns >= 1, --tile >= 32, --reference-tile >= 16 and --scenes >= 0")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if out is not None:
        check_output_file(out, "--out", ".png")
    ps = ProbeSet.load(probe_set)
    target = Path(out) if out is not None else Path(f"{ps.root.resolve().name}_preview.png")
    check_output_file(target, "--out", ".png")
    inside = Path(os.path.abspath(target))
    if Path(os.path.abspath(ps.root)) in inside.parents:
        raise UserError(f"--out {target} is inside the probe set {ps.root}; write the preview elsewhere")
    shown = min(scenes, len(ps.scenes))
    rows = max(ps.counts(), default=1)
    check_memory(
        sheet_memory(shown, columns, tile, rows, len(ps.references), reference_tile),
        f"--tile {tile}, --columns {columns}, --scenes {shown} and --reference-tile {reference_tile}",
        "lower --tile, --columns, --scenes or --reference-tile",
    )
    font = _font()
    picked = sample_scenes(ps.scenes, scenes, seed)
    rows = max((s.n for s in picked), default=1)
    scene_grid = _grid([_scene_cell(ps, s, tile, rows, font) for s in picked], columns)
    ref_cols = max(1, (scene_grid.width + PAD) // (reference_tile + PAD))
    refs = [_reference_cell(p, name, reference_tile, font) for name, p in sorted(ps.references.items())]
    ref_grid = _grid(refs, ref_cols)
    title = (
        f"{ps.name} ({ps.kind}): {len(ps.scenes)} scenes, objects per scene {','.join(map(str, ps.counts()))}; "
        f"{len(picked)} shown, * = large object"
    )
    width = max(scene_grid.width, ref_grid.width, 400) + 2 * PAD
    height = 3 * LINE + scene_grid.height + 3 * LINE + ref_grid.height + 3 * PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD), _clip(draw, title, width - 2 * PAD, font), fill=TEXT_COLOUR, font=font)
    y = PAD + 2 * LINE
    sheet.paste(scene_grid, (PAD, y))
    y += scene_grid.height + 2 * LINE
    draw.text((PAD, y - LINE - 2), f"references ({len(ps.references)})", fill=TEXT_COLOUR, font=font)
    sheet.paste(ref_grid, (PAD, y + 2))
    atomic_write_bytes(target, encode_png(sheet))
    print(f"wrote preview of {ps.name} to {target}")
    return target
