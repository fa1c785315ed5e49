"""Extract ComCO's object sprites from Debian's Noto Color Emoji font (run once; results are shipped).

    apt-get install -y fonts-noto-color-emoji
    .venv/bin/python scripts/extract_emoji_sprites.py

Renders each glyph with Pillow (``embedded_color=True`` at 109 px, the font's only bitmap size),
trims it to its opaque pixels and writes ``clipprobe/data/assets/comco/<name>.png`` plus
``index.json`` (name -> emoji, code points) and the font's licence. Names are the study's COCO
vocabulary; a name is covered only where a clear, recognisable emoji exists, preferring whole-body
glyphs (a dog, not a dog's face).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipprobe.data.vocab import COCO_NAMES  # noqa: E402

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
LICENCE = Path("/usr/share/doc/fonts-noto-color-emoji/copyright")
OUT = Path(__file__).resolve().parents[1] / "clipprobe" / "data" / "assets" / "comco"

# COCO name -> emoji. Names without a clear emoji (fire hydrant, street sign, parking meter, bench,
# dining table, snowboard, baseball bat/glove, tennis racket, hair drier/brush, surfboard, fork,
# desk, remote, microwave, oven, toaster, sink, refrigerator, blender) are left out.
EMOJI: dict[str, str] = {
    "person": "\U0001f9cd", "bicycle": "\U0001f6b2", "car": "\U0001f697", "motorcycle": "\U0001f3cd",
    "airplane": "\u2708", "bus": "\U0001f68c", "train": "\U0001f686", "truck": "\U0001f69a",
    "boat": "\u26f5", "traffic light": "\U0001f6a6", "stop sign": "\U0001f6d1", "bird": "\U0001f426",
    "cat": "\U0001f408", "dog": "\U0001f415", "horse": "\U0001f40e", "sheep": "\U0001f411", "cow": "\U0001f404",
    "elephant": "\U0001f418", "bear": "\U0001f43b", "zebra": "\U0001f993", "giraffe": "\U0001f992",
    "hat": "\U0001f3a9", "backpack": "\U0001f392", "umbrella": "\u2602", "shoe": "\U0001f45f",
    "eye glasses": "\U0001f453", "handbag": "\U0001f45c", "tie": "\U0001f454", "suitcase": "\U0001f9f3",
    "frisbee": "\U0001f94f", "skis": "\U0001f3bf", "kite": "\U0001fa81", "wine glass": "\U0001f377",
    "hot dog": "\U0001f32d", "potted plant": "\U0001fab4", "teddy bear": "\U0001f9f8", "cell phone": "\U0001f4f1",
    "skateboard": "\U0001f6f9", "bottle": "\U0001f37e", "plate": "\U0001f37d", "cup": "\u2615",
    "knife": "\U0001f52a", "spoon": "\U0001f944", "bowl": "\U0001f963", "banana": "\U0001f34c",
    "apple": "\U0001f34e", "sandwich": "\U0001f96a", "orange": "\U0001f34a", "broccoli": "\U0001f966",
    "carrot": "\U0001f955", "pizza": "\U0001f355", "donut": "\U0001f369", "cake": "\U0001f370",
    "chair": "\U0001fa91", "couch": "\U0001f6cb", "bed": "\U0001f6cf", "mirror": "\U0001fa9e",
    "window": "\U0001fa9f", "toilet": "\U0001f6bd", "door": "\U0001f6aa", "tv": "\U0001f4fa",
    "laptop": "\U0001f4bb", "mouse": "\U0001f5b1", "keyboard": "\u2328", "book": "\U0001f4d5",
    "clock": "\U0001f570", "vase": "\U0001f3fa", "scissors": "\u2702", "toothbrush": "\U0001faa5",
}  # fmt: skip
VS16 = "\ufe0f"  # emoji presentation selector: colour glyph for characters that default to text


def render(font: ImageFont.FreeTypeFont, glyph: str) -> Image.Image:
    """Render one glyph in colour on a transparent canvas and trim it to its opaque pixels."""
    canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((10, 10), glyph, font=font, embedded_color=True)
    box = canvas.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
    if box is None:
        raise RuntimeError(f"glyph {glyph!r} rendered empty: is the font missing it?")
    return canvas.crop(box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--font", type=Path, default=FONT)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not args.font.is_file():
        sys.exit(f"error: {args.font} not found; run 'apt-get install -y fonts-noto-color-emoji'")
    font = ImageFont.truetype(str(args.font), 109)
    args.out.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, str]] = {}
    for name in COCO_NAMES:
        if name not in EMOJI:
            continue
        glyph = EMOJI[name] if ord(EMOJI[name]) > 0x1F000 else EMOJI[name] + VS16
        im = render(font, glyph)
        path = args.out / f"{name.replace(' ', '_')}.png"
        im.save(path, optimize=True)
        index[name] = {
            "emoji": EMOJI[name],
            "codepoints": " ".join(f"U+{ord(c):04X}" for c in EMOJI[name]),
            "size": f"{im.width}x{im.height}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        }
    (args.out / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if LICENCE.is_file():
        shutil.copy(LICENCE, args.out / "LICENSE-noto-emoji.txt")
    print(f"{len(index)} of {len(COCO_NAMES)} COCO names covered -> {args.out}")


if __name__ == "__main__":
    main()
