"""A real set from FreeOrion's data package: the game's pictures of its technologies, buildings, ship
hulls, ship parts, species and specials, each beside the game's own name and description of it.

FreeOrion is free software; its art and game texts are CC-BY-SA 3.0 and Debian ships them:

    apt-get install freeorion-data      # /usr/share/games/freeorion/default

Every item of the game's content scripts (`scripting/**/*.focs.txt`: `Tech`, `BuildingType`, `Hull`,
`Part`, `Species`, `Special`) names its picture (`graphic` / `icon`) and the stringtable keys of its
name and description (`stringtables/en.txt`). One item gives four rows: its picture placed on white at
four seeded scales and positions. The answer names the item and states its kind and, where the game
files it under one, its category; then as much of the game's description as fits in 50 words:

    "Active Radar is an intelligence technology. Unlocks the Active Radar ship part and the Scanning
     Facility building, increases the Detection Range of all planets to 75, ..."

`fields` holds {"kind", "category"} (no category for buildings and specials, which the game does not
file), as plain strings the answer states word for word: evaluation reads them back with the generic
reader (picovlm.eval.facts.ValueMatcher). `group` is the item, so the test split holds items the model
has never seen. A picture that several items name stays with one of them (one picture, one answer).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from picovlm.data.cauldron import picture_row
from picovlm.data.realsets_games import (
    DESIGN_SIZE,
    MAX_WORDS,
    MIN_WORDS,
    _png,
    clean_text,
    place_on_white,
    set_writer,
    trim_text,
    words,
)
from picovlm.errors import PicovlmError
from picovlm.eval.facts import register_fact_parser

FREEORION_SOURCE = "freeorion"
FREEORION_PACKAGE = "freeorion-data"
FREEORION_INSTALL = f"apt-get install {FREEORION_PACKAGE}"
FREEORION_DIR = Path("/usr/share/games/freeorion/default")  # scripting/, stringtables/, data/art/ inside
FREEORION_QUESTION = "Describe this item."
FREEORION_FIELDS = ("kind", "category")
FREEORION_MIN_WORDS = 20  # an answer carries at least this much: its name, kind and some description
# The content script's block name -> the kind the answer states
KINDS = {"Tech": "technology", "BuildingType": "building", "Hull": "ship hull", "Part": "ship part",
         "Species": "species", "Special": "special"}  # fmt: skip
# Where the game keeps each kind's own pictures, under data/art
HOME_FOLDERS = {"technology": "icons/tech/", "building": "icons/building/", "ship hull": "icons/ship_hulls/",
                "ship part": "icons/ship_parts/", "species": "icons/species/", "special": "icons/specials"}  # fmt: skip
# The four renderings of an item's picture: how much of the canvas (width) it may take
ICON_RENDERINGS = ((0.45, 0.6), (0.6, 0.75), (0.75, 0.9), (0.9, 1.0))
FREEORION_OPENINGS = ["{name} is {what}.", "This is {name}, {what}."]

_BLOCK = re.compile(r"^(" + "|".join(KINDS) + r")[ \t]*\n(.*?)(?=^\S|\Z)", re.M | re.S)
_LINK = re.compile(r"\[\[(\w+) (\w+)\]\]")  # [[metertype METER_SHIELD]]: the stringtable's name of a key
_MACRO = re.compile(r"\[\[(\w+)\]\]")  # [[BLD_SHIPYARD_BASE_REQUIRED]]: another key's whole text
_HEADING = re.compile(r"^[ \t]*[A-Z][\w ,'-]{0,40}:[ \t]*$", re.M)  # "Social Structure:" on its own line
_PLACEHOLDER_SENTENCE = re.compile(r"[^.!?]*%\w+%[^.!?]*[.!?]?")  # "%1% ..." is filled in by the game


@dataclass
class FreeOrionItem:
    key: str  # the stringtable key of its name ("GRO_PLANET_ECOL")
    kind: str  # "technology", "ship part", ...
    category: str  # "growth", "armour", ...; "" where the game files it under none
    name: str
    description: str
    picture: str  # path under data/art

    def facts(self) -> dict[str, str]:
        facts = {"kind": self.kind}
        if self.category:
            facts["category"] = self.category
        return facts


def freeorion_dir(source_dir: str | Path | None = None) -> Path:
    path = Path(source_dir) if source_dir else FREEORION_DIR
    needed = [path / "scripting", path / "stringtables" / "en.txt", path / "data" / "art"]
    if not all(p.exists() for p in needed):
        raise PicovlmError(
            f"{path}: FreeOrion data not found (expected scripting/, stringtables/en.txt and data/art/ in "
            f"it). Install it with `{FREEORION_INSTALL}` (Debian/Ubuntu), or pass --source-dir with a "
            "FreeOrion `default` folder"
        )
    return path


def read_stringtable(text: str) -> dict[str, str]:
    """FreeOrion's stringtable: a KEY line, then its value on the next line, or over several lines
    between ''' quotes. Comments (#) and blank lines between entries are skipped."""
    table: dict[str, str] = {}
    lines = text.split("\n")
    k = 0
    while k < len(lines) - 1:
        key = lines[k].strip()
        if not re.fullmatch(r"[A-Z0-9_]+", key):
            k += 1
            continue
        value = lines[k + 1]
        if not value.startswith("'''"):
            table[key] = value.strip()
            k += 2
            continue
        end = k + 1
        body = value[3:]
        while not body.rstrip().endswith("'''"):  # the first line holds at least the opening '''
            end += 1
            if end >= len(lines):
                raise ValueError(f"line {k + 2}: a ''' value of {key} is never closed")
            body += "\n" + lines[end]
        table[key] = body.rstrip()[:-3]
        k = end + 1
    return table


def resolve_text(text: str, table: dict[str, str], depth: int = 0) -> str:
    """A stringtable value as prose: links become the linked item's name ("the [[buildingtype
    BLD_X]] building" -> "the Scanning Facility building"), macros their text, headings and
    sentences with the game's %placeholders% are dropped, markup removed."""
    text = _LINK.sub(lambda m: table.get(m.group(2), m.group(2).replace("_", " ").lower()), text)
    text = _MACRO.sub(lambda m: resolve_text(table.get(m.group(1), ""), table, depth + 1) if depth < 3 else "",
                      text)  # fmt: skip
    text = re.sub(r"<img[^>]*>.*?</img>", " ", text, flags=re.S)
    text = re.sub(r"<[^>]*>", " ", text)
    text = _HEADING.sub(" ", text)
    text = re.sub(r"^\s*Description:\s*", "", text)
    text = _PLACEHOLDER_SENTENCE.sub(" ", text)
    return clean_text(text)


def _category(kind: str, body: str, script: Path, root: Path, table: dict[str, str]) -> str:
    if kind == "Tech":
        found = re.search(r'category\s*=\s*"(\w+)"', body)
        return table.get(found.group(1), "").lower() if found else ""
    if kind == "Part":  # class = ShortRange -> "short range"
        found = re.search(r"\bclass\s*=\s*(\w+)", body)
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", found.group(1)).lower() if found else ""
    if kind == "Hull":  # the hull line is the folder: ship_hulls/organic/SH_X.focs.txt
        folder = script.parent.relative_to(root / "scripting" / "ship_hulls")
        return "" if str(folder) == "." else folder.parts[0].replace("_", " ")
    if kind == "Species":  # tags = [ ... "PEDIA_SELF_SUSTAINING_SPECIES_CLASS" ]
        found = re.search(r"PEDIA_(\w+?)_SPECIES_CLASS", body)
        return found.group(1).lower().replace("_", "-") if found else ""
    return ""


def load_freeorion_items(source_dir: str | Path | None = None) -> list[FreeOrionItem]:
    """Every item of the content scripts with a picture, a name and a description, sorted by key. A
    picture that several items name (or files with the same pixels) stays with one of them: the one
    whose kind the picture's folder names, else the first by key; so does a key that two kinds share.
    One picture, one answer."""
    root = freeorion_dir(source_dir)
    stringtable = root / "stringtables" / "en.txt"
    try:
        table = read_stringtable(stringtable.read_text(encoding="utf-8-sig"))
    except ValueError as err:
        raise PicovlmError(f"{stringtable}: not readable as a stringtable ({err}); reinstall "
                           f"({FREEORION_INSTALL})") from err  # fmt: skip
    items = []
    for script in sorted((root / "scripting").rglob("*.focs.txt")):
        for block in _BLOCK.finditer(script.read_text(encoding="utf-8-sig")):
            kind, body = block.groups()
            key = re.search(r'\bname\s*=\s*"(\w+)"', body)
            description = re.search(r'\bdescription\s*=\s*"(\w+)"', body)
            picture = re.search(r'\bicon\s*=\s*"([^"]+)"', body) or re.search(
                r'\bgraphic\s*=\s*"([^"]+)"', body
            )
            if not (key and description and picture) or key.group(1) not in table:
                continue
            path = picture.group(1).lstrip("/")
            text = resolve_text(table.get(description.group(1), ""), table)
            if not text or not (root / "data" / "art" / path).is_file():
                continue
            items.append(FreeOrionItem(
                key=key.group(1), kind=KINDS[kind], category=_category(kind, body, script, root, table),
                name=clean_text(table[key.group(1)]), description=text, picture=path,
            ))  # fmt: skip
    kept, owner = [], {}
    # the item whose kind the picture's folder names comes first: a species' portrait is the species',
    # not its colony building's
    for item in sorted(
        items, key=lambda item: (not item.picture.startswith(HOME_FOLDERS[item.kind]), item.key)
    ):
        pixels = Image.open(root / "data" / "art" / item.picture).convert("RGBA").tobytes()
        digest = hashlib.sha1(pixels).hexdigest()
        if digest not in owner and item.key not in owner.values():
            owner[digest] = item.key
            kept.append(item)
    return sorted(kept, key=lambda item: item.key)


def freeorion_answer(item: FreeOrionItem, opening: int = 0) -> str:
    """The item's answer: its name, kind and category, then its description within 50 words."""
    what = f"{item.category} {item.kind}" if item.category else item.kind
    what = ("an " if what[0] in "aeiou" else "a ") + what
    head = FREEORION_OPENINGS[opening].format(name=item.name, what=what)
    body = trim_text(item.description, MAX_WORDS - words(head), FREEORION_MIN_WORDS - words(head))
    return f"{head} {body}".strip()


def make_freeorion_rows(
    n: int = 3000,
    seed: int = 0,
    image_size: int = DESIGN_SIZE,
    mirror: bool = False,
    source_dir: str | Path | None = None,
) -> list[dict]:
    """About n rows: items in a seeded order, four renderings of each item's picture, until n rows;
    fewer when the items run out (1,341 rows of 336 items in freeorion-data 0.4.10). An item gives no
    more rows from its first answer under 10 words on (its opening is drawn per row: one item gives a
    single row). mirror is refused: the game never shows its pictures mirrored."""
    if mirror:
        raise PicovlmError("freeorion: --mirror would show pictures the game never shows; drop it")
    root = freeorion_dir(source_dir)
    items = load_freeorion_items(root)
    rng = random.Random(f"picovlm-freeorion/{seed}")
    rng.shuffle(items)
    rows: list[dict] = []
    for item in items:
        if len(rows) >= n:
            break
        answer_rng = random.Random(f"picovlm-freeorion-answer/{seed}/{item.key}")
        picture = Image.open(root / "data" / "art" / item.picture)
        for share in ICON_RENDERINGS:
            if len(rows) >= n:
                break
            answer = freeorion_answer(item, answer_rng.randrange(len(FREEORION_OPENINGS)))
            if words(answer) < MIN_WORDS:  # the shorter opening can leave a brief description under 10
                break
            placed = place_on_white(picture, rng, share, DESIGN_SIZE, Image.Resampling.LANCZOS)
            png, name = _png(placed, image_size), f"{item.key.lower()}-{len(rows)}.png"
            group = f"{FREEORION_SOURCE}/{item.key}"
            rows.append(
                picture_row(png, name, FREEORION_QUESTION, answer, FREEORION_SOURCE, item.facts(), group)
            )
    return rows


write_freeorion = set_writer(make_freeorion_rows, "item")

# The answers state each fact of `fields` word for word: evaluation learns them (a ValueMatcher).
register_fact_parser(FREEORION_SOURCE)
