"""Which vocabulary objects a caption mentions, in the order it first mentions them.

The default extractor is a vocabulary matcher: captions and names are split into words (letters and
digits; hyphens, apostrophes and punctuation separate words), so "cat" never matches inside
"concatenate" and "hot-dog" matches "hot dog". Each name also matches its plural (regular -s, -es,
-ies and a small irregular table: people, mice, knives, ...) and its synonyms ("sofa" -> couch). At
each word the longest form wins, so "hot dog" is one hot dog, not a dog, and "microwave oven" is a
microwave, not an oven. Known limits: a word form is matched whatever its sense ("an orange cat"
mentions an orange; "to train" mentions a train).

A user may plug in any callable ``(caption, vocab) -> list of names in mention order`` by its import
path (``pkg.module:function``), e.g. a language model as the study used.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipprobe.data.vocab import read_text_file
from clipprobe.errors import UserError

Extractor = Callable[[str, Sequence[str]], list[str]]

_WORD = re.compile(r"[^\W_]+")  # letters and digits, any script

# Word -> its other number forms, where the -s/-es/-ies rules are wrong or not enough.
IRREGULAR: dict[str, tuple[str, ...]] = {
    "person": ("people", "persons"), "man": ("men",), "woman": ("women",), "child": ("children",),
    "gentleman": ("gentlemen",), "mouse": ("mice",), "goose": ("geese",), "knife": ("knives",),
    "leaf": ("leaves",), "calf": ("calves",), "wolf": ("wolves",), "shelf": ("shelves",), "skis": ("ski",),
    "sheep": (), "deer": (), "fish": (), "scissors": (), "glasses": (), "eyeglasses": (), "sunglasses": (),
    "spectacles": (), "cattle": (), "broccoli": (), "luggage": (),
}  # fmt: skip

# Default synonyms for COCO names (and COCO's "sports ball"). Names missing from the vocabulary in use
# are ignored, as is an alias that is itself a vocabulary name.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "teenager", "adult", "guy",
               "lady", "gentleman", "player", "skier", "surfer", "skateboarder", "snowboarder", "pedestrian"),
    "bicycle": ("bike",), "car": ("automobile", "sedan", "taxi", "suv"),
    "motorcycle": ("motorbike", "motor bike", "dirt bike"),
    "airplane": ("plane", "aeroplane", "airliner", "jet", "aircraft"), "train": ("locomotive",),
    "truck": ("lorry", "pickup truck", "fire truck"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry"),
    "traffic light": ("traffic signal", "stoplight", "stop light"), "fire hydrant": ("hydrant",),
    "bird": ("pigeon", "seagull", "gull", "duck", "goose", "parrot", "swan"), "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"), "horse": ("pony", "foal"), "sheep": ("lamb",), "cow": ("cattle", "bull", "calf"),
    "dining table": ("table", "dinner table", "kitchen table"),
    "cell phone": ("cellphone", "phone", "mobile phone", "smartphone"), "hat": ("cap",),
    "backpack": ("rucksack", "back pack"), "umbrella": ("parasol",), "shoe": ("sneaker", "boot"),
    "eye glasses": ("glasses", "eyeglasses", "spectacles", "sunglasses"), "handbag": ("purse", "hand bag"),
    "tie": ("necktie",), "suitcase": ("luggage", "suit case"), "frisbee": ("flying disc",),
    "sports ball": ("ball", "soccer ball", "tennis ball"), "baseball glove": ("baseball mitt", "mitt"),
    "tennis racket": ("racket", "racquet", "tennis racquet"), "wine glass": ("wineglass",), "hot dog": ("hotdog",),
    "potted plant": ("plant", "houseplant", "house plant"), "teddy bear": ("teddy", "stuffed animal"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"), "hair brush": ("hairbrush",),
    "skateboard": ("skate board",), "surfboard": ("surf board",), "cup": ("mug",), "donut": ("doughnut",),
    "couch": ("sofa", "settee"), "tv": ("television", "telly"), "laptop": ("laptop computer",),
    "mouse": ("computer mouse",), "remote": ("remote control",), "microwave": ("microwave oven",),
    "refrigerator": ("fridge",), "toothbrush": ("tooth brush",),
}  # fmt: skip

SYNONYM_TABLES: dict[str, dict[str, tuple[str, ...]]] = {"coco": COCO_SYNONYMS, "none": {}}


def words(text: str) -> list[tuple[str, int, int]]:
    """``(word, start, end)`` for each word of ``text``, case-folded; offsets index ``text``."""
    return [(m.group().casefold(), m.start(), m.end()) for m in _WORD.finditer(text)]


def number_forms(word: str) -> tuple[str, ...]:
    """The other number forms of one word: ``dog -> dogs``, ``bus -> buses``, ``puppy -> puppies``,
    ``mouse -> mice``, ``skis -> ski``; an uninflected word (``sheep``) has none."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return (word + "es",)
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return (word[:-1] + "ies",)
    if len(word) > 1 and word.endswith("o") and word[-2] not in "aeiou":
        return (word + "s", word + "es")  # photos, tomatoes
    return (word + "s",)


def _inflected(form: tuple[str, ...]) -> list[tuple[str, ...]]:
    """A multi-word form with its last word in each other number: ``traffic light -> traffic lights``."""
    return [form[:-1] + (w,) for w in number_forms(form[-1])] if form else []


@dataclass(frozen=True)
class Mention:
    """One match: the vocabulary ``name``, and where it stands in the caption (``caption[start:end]``)."""

    name: str
    start: int
    end: int
    text: str


class Matcher:
    """Vocabulary matcher: names, their plurals and synonyms, whole words, longest form first.

    Args:
        vocab: the object names (canonical names, reported as given).
        synonyms: name -> aliases. An alias naming an unknown object, an alias that is another
            vocabulary name, or one alias for two names is an error when ``strict`` (a user's
            file); otherwise (the shipped table) it is dropped.
        strict: raise :class:`UserError` on such conflicts.
    """

    def __init__(self, vocab: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None, strict: bool = False):
        self.vocab = list(vocab)
        names = {tuple(w for w, _, _ in words(n)): n for n in self.vocab}
        synonyms = dict(synonyms or {})
        unknown = sorted(set(synonyms) - set(self.vocab))
        if unknown and strict:
            raise UserError(f"synonyms given for {', '.join(unknown)}, not in the vocabulary; fix the synonyms file")
        aliases: dict[tuple[str, ...], str] = {}
        for name, alist in synonyms.items():
            if name not in self.vocab:
                continue
            for alias in alist:
                key = tuple(w for w, _, _ in words(alias))
                other = names.get(key) or aliases.get(key)
                if other is not None and other != name:
                    if strict:
                        raise UserError(
                            f"synonym '{alias}' of '{name}' already means '{other}'; keep it under one name"
                        )
                    continue
                if key:
                    aliases[key] = name
        # Priority: exact names, exact aliases, then plural forms of names, then of aliases.
        self.forms: dict[tuple[str, ...], str] = {}
        for level in (names, aliases):
            for key, name in level.items():
                self.forms.setdefault(key, name)
        for level in (names, aliases):
            for key, name in level.items():
                for form in _inflected(key):
                    self.forms.setdefault(form, name)
        self.max_len = max((len(k) for k in self.forms), default=0)

    def spans(self, caption: str) -> list[Mention]:
        """Every match in ``caption``, left to right (repeats included)."""
        toks = words(caption)
        out: list[Mention] = []
        i = 0
        while i < len(toks):
            for size in range(min(self.max_len, len(toks) - i), 0, -1):
                name = self.forms.get(tuple(w for w, _, _ in toks[i : i + size]))
                if name is not None:
                    start, end = toks[i][1], toks[i + size - 1][2]
                    out.append(Mention(name, start, end, caption[start:end]))
                    i += size
                    break
            else:
                i += 1
        return out

    def find(self, caption: str) -> list[str]:
        """The names ``caption`` mentions, ordered by first mention, each once."""
        return list(dict.fromkeys(m.name for m in self.spans(caption)))

    def __call__(self, caption: str, vocab: Sequence[str] | None = None) -> list[str]:
        """The extractor protocol: ``(caption, vocab) -> names``; ``vocab`` is the matcher's own."""
        return self.find(caption)

    def exact(self, label: str) -> str | None:
        """The vocabulary name ``label`` is a form of (the name, its plural, a synonym: ``"Hot_Dogs"`` is not,
        ``"hot dogs"`` is hot dog), or None; unlike :meth:`canonical`, never a name the label merely contains
        (``"police car"`` is not car)."""
        return self.forms.get(tuple(w for w, _, _ in words(label)))

    def canonical(self, label: str) -> str:
        """An annotation label as a vocabulary name: an exact form (``"dogs" -> "dog"``), else the one
        name the label mentions (``"a brown dog" -> "dog"``), else the label itself, case-folded."""
        key = tuple(w for w, _, _ in words(label))
        if key in self.forms:
            return self.forms[key]
        found = self.find(label)
        return found[0] if len(found) == 1 else " ".join(key)


def load_synonyms(source: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Synonyms by table name (``coco``, ``none``) or from a file of lines ``name: alias, alias``.

    ``#`` starts a comment; blank lines are skipped.

    Raises:
        UserError: the file is missing, unreadable or not UTF-8, or a line has no ``:``.
    """
    if str(source) in SYNONYM_TABLES:
        return dict(SYNONYM_TABLES[str(source)])
    path = Path(source)
    if not path.is_file():
        raise UserError(f"synonyms {source} is neither a table ({', '.join(SYNONYM_TABLES)}) nor a file")
    table: dict[str, tuple[str, ...]] = {}
    for lineno, raw in enumerate(read_text_file(path, "synonyms file").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, colon, rest = line.partition(":")
        if not colon or not name.strip():
            raise UserError(f"synonyms file {path} line {lineno}: write 'name: alias, alias', got '{line}'")
        aliases = tuple(a.strip() for a in rest.split(",") if a.strip())
        table[name.strip()] = table.get(name.strip(), ()) + aliases
    return table


def load_extractor(spec: str) -> Extractor:
    """Import a user's extractor from ``"pkg.module:function"``.

    Raises:
        UserError: the spec is malformed, the module cannot be imported, or the name is not callable.
    """
    module, colon, attr = spec.partition(":")
    if not colon or not module or not attr:
        raise UserError(f"extractor '{spec}' must be an import path 'pkg.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise UserError(f"cannot import extractor module '{module}' ({e}); check --extractor and PYTHONPATH") from None
    except AttributeError:
        raise UserError(f"module '{module}' has no '{attr}'; check --extractor") from None
    if not callable(fn):
        raise UserError(f"extractor '{spec}' is not callable; give a function (caption, vocab) -> list of names")
    return fn
