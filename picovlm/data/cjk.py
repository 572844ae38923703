"""`picovlm realset cjk`: common Chinese characters in three typefaces, described from the Unihan database.

Debian packages, none written by this project:

    apt-get install fonts-noto-cjk fonts-wqy-microhei unicode-data

  * the pictures: each character drawn black on white in Noto Sans CJK SC, Noto Serif CJK SC
    (fonts-noto-cjk, SIL Open Font License 1.1) and WenQuanYi Micro Hei (fonts-wqy-microhei, Apache
    2.0 or GPL 3 with the font exception);
  * the text: Unicode's Unihan database as unicode-data ships it (/usr/share/unicode/Unihan_*.txt.bz2):
    kDefinition (English meaning) and kMandarin (reading) from Unihan_Readings, kRSUnicode (radical and
    residual strokes) and kTotalStrokes from Unihan_IRGSources; the radical's meaning is its Kangxi
    radical's character name in UnicodeData.txt ("KANGXI RADICAL WATER"), through CJKRadicals.txt.

"Common" = the most frequent characters by kHanyuPinlu (the counts of Xiandai Hanyu Pinlu Cidian, a
frequency dictionary of modern Mandarin), simplified and traditional forms alike. Each character gives
one row per typeface, for example

    "The character 水 means 'water, liquid, lotion, juice'. Its Mandarin reading is shuǐ. Its stroke
     count is 4 and it is listed under radical 85, the water radical."

`fields` holds {"radical", "radical meaning", "strokes"}: the facts a model can read off an unseen
character (its radical is one of its parts; its strokes can be counted), read back from an answer by
picovlm.eval.facts.ValueMatcher. The `group` column is the character, so its three typefaces share a
split and a test character is one the model never saw in any typeface.
"""

from __future__ import annotations

import bz2
import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

from picovlm.config import DEFAULT_QUESTION
from picovlm.data.cauldron import picture_row
from picovlm.data.glyphs import FontFile, GlyphFont, png_bytes
from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import register_fact_parser

CJK_SOURCE = "cjk"
CJK_INSTALL = "apt-get install fonts-noto-cjk fonts-wqy-microhei unicode-data"
UNICODE_DIR = Path("/usr/share/unicode")
CJK_SIZE = 88  # pixels per em on the 112-pixel canvas: a character's ink keeps a margin of white
CJK_CANVAS = 112
_NOTO = Path("/usr/share/fonts/opentype/noto")
CJK_FONTS = (  # index 2 of the Noto collections is the Simplified Chinese face (SC)
    FontFile(
        "Noto Sans CJK SC", _NOTO / "NotoSansCJK-Regular.ttc", "apt-get install fonts-noto-cjk", CJK_SIZE, 2
    ),
    FontFile(
        "Noto Serif CJK SC", _NOTO / "NotoSerifCJK-Regular.ttc", "apt-get install fonts-noto-cjk", CJK_SIZE, 2
    ),
    FontFile(
        "WenQuanYi Micro Hei",
        Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
        "apt-get install fonts-wqy-microhei",
        CJK_SIZE,
    ),
)
# Every file the set is made from (the tests' `cjk_sources` fixture checks them).
CJK_FILES = (
    *(font.path for font in CJK_FONTS),
    UNICODE_DIR / "Unihan_Readings.txt.bz2",
    UNICODE_DIR / "Unihan_IRGSources.txt.bz2",
    UNICODE_DIR / "UnicodeData.txt",
    UNICODE_DIR / "CJKRadicals.txt",
)
CJK_QUESTION = DEFAULT_QUESTION
MAX_DEFINITION_WORDS = 8  # meanings past this are left out from the end

# Two templates, chosen per row by the seed. Each fact keeps its neighbours in both, which is how a
# ValueMatcher tells it from the other numbers and words: "radical" before the radical's number and after
# its meaning, "count" or "is" before the strokes and "and" or "radical" after them. The strokes come
# first because a stroke count can equal a radical number: read first, it is found first.
TEMPLATES = [
    "The character {char} means '{definition}'. Its Mandarin reading is {reading}. Its stroke count is "
    "{strokes} and it is listed under radical {radical}, the {meaning} radical.",
    "This is {char}, read {reading} in Mandarin and meaning '{definition}'. Stroke count: {strokes}; "
    "radical {radical}, the {meaning} radical.",
]


@dataclass(frozen=True)
class Character:
    """One character's Unihan facts, as an answer states them."""

    char: str
    definition: str  # the first sense of kDefinition: "water, liquid, lotion, juice"
    reading: str  # the first kMandarin reading: "shuǐ"
    radical: str  # Kangxi radical number, "85" (a simplified form's "149'" is radical 149)
    meaning: str  # the radical's name: "water"
    strokes: str  # kTotalStrokes: "4"
    frequency: int  # kHanyuPinlu count summed over its readings


def _missing(path: Path, what: str) -> PicovlmError:
    return PicovlmError(f"{path}: {what} not found. Install it with `{CJK_INSTALL}` (Debian/Ubuntu)")


def read_unihan(path: Path, keys: set[str]) -> dict[str, dict[str, str]]:
    """{character: {key: value}} for the given Unihan keys of one Unihan_*.txt(.bz2) file."""
    if not path.is_file():
        raise _missing(path, "Unicode's Unihan database")
    found: dict[str, dict[str, str]] = {}
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.startswith("U+"):
                    continue
                parts = line.rstrip("\n").split("\t", 2)
                if len(parts) != 3:
                    raise DataError(f"{path}:{number}: not 'U+XXXX<tab>key<tab>value': {line!r}")
                if parts[1] in keys:
                    found.setdefault(chr(int(parts[0][2:], 16)), {})[parts[1]] = parts[2]
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not readable ({err}); reinstall: {CJK_INSTALL}") from err
    return found


def radical_names(unicode_dir: Path = UNICODE_DIR) -> dict[str, str]:
    """Kangxi radical number -> its meaning, from CJKRadicals.txt and the radicals' names in
    UnicodeData.txt: "85" -> "water" (the simplified forms, "149'", share their radical's name)."""
    names = {}
    data = unicode_dir / "UnicodeData.txt"
    radicals = unicode_dir / "CJKRadicals.txt"
    for path in (data, radicals):
        if not path.is_file():
            raise _missing(path, "Unicode's character data")
    for line in data.read_text(encoding="utf-8").splitlines():
        code, name = line.split(";", 2)[:2]
        if name.startswith("KANGXI RADICAL "):
            names[chr(int(code, 16))] = name.removeprefix("KANGXI RADICAL ").lower()
    meanings = {}
    for line in radicals.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            number, radical = (part.strip() for part in line.split(";")[:2])
            if not number.endswith("'") and chr(int(radical, 16)) in names:
                meanings[number] = names[chr(int(radical, 16))]
    if len(meanings) != 214:
        raise DataError(
            f"{radicals}: expected the 214 Kangxi radicals, found {len(meanings)}; reinstall: {CJK_INSTALL}"
        )
    return meanings


def first_sense(definition: str) -> str:
    """kDefinition's first sense (senses are separated by ';'), leaving out the notes that are not a
    meaning (Cantonese-only senses, "Kangxi radical 166", "simp. for X") and meanings past
    MAX_DEFINITION_WORDS: "one; a, an; alone" -> "one"."""
    senses = [s.strip() for s in definition.split(";")]
    senses = [s for s in senses if s and not re.search(r"Cant\.|radical|simp\. for|U\+", s, re.IGNORECASE)]
    if not senses:
        return ""
    meanings = [m.strip() for m in senses[0].split(",")]
    while len(meanings) > 1 and len(", ".join(meanings).split()) > MAX_DEFINITION_WORDS:
        meanings.pop()
    return ", ".join(meanings)


@functools.lru_cache(maxsize=2)  # parsing Unihan takes seconds; a process builds several sets from it
def load_characters(unicode_dir: Path = UNICODE_DIR) -> tuple[Character, ...]:
    """Every character with a kHanyuPinlu frequency and all the facts an answer states, most frequent
    first (ties by code point)."""
    readings = read_unihan(
        unicode_dir / "Unihan_Readings.txt.bz2", {"kDefinition", "kMandarin", "kHanyuPinlu"}
    )
    shapes = read_unihan(unicode_dir / "Unihan_IRGSources.txt.bz2", {"kRSUnicode", "kTotalStrokes"})
    meanings = radical_names(unicode_dir)
    found = []
    for char, facts in readings.items():
        shape = shapes.get(char, {})
        if not {"kDefinition", "kMandarin", "kHanyuPinlu"} <= facts.keys() or len(shape) < 2:
            continue
        definition = first_sense(facts["kDefinition"])
        radical = shape["kRSUnicode"].split()[0].split(".")[0].rstrip("'")
        if not definition or radical not in meanings:
            continue
        found.append(Character(
            char, definition, facts["kMandarin"].split()[0], radical, meanings[radical],
            shape["kTotalStrokes"].split()[0], sum(int(c) for c in re.findall(r"\((\d+)\)", facts["kHanyuPinlu"])),
        ))  # fmt: skip
    found.sort(key=lambda c: (-c.frequency, c.char))
    return tuple(found)


def character_fields(character: Character) -> dict:
    return {"radical": character.radical, "radical meaning": character.meaning, "strokes": character.strokes}


def character_answer(character: Character, template: int = 0) -> str:
    return TEMPLATES[template].format(**{k: getattr(character, k) for k in Character.__dataclass_fields__})


def make_cjk_rows(n: int = 1000, seed: int = 0, image_size: int = 112) -> list[dict]:
    """The n most frequent characters that every typeface draws, one row per typeface (3n rows),
    character by character in frequency order."""
    fonts = [GlyphFont(spec, CJK_CANVAS) for spec in CJK_FONTS]
    characters = load_characters()
    if n > len(characters):
        raise PicovlmError(
            f"asked for {n} characters, but Unihan has facts for {len(characters)}: use --n {len(characters)} or less"
        )
    rng = random.Random(f"picovlm-cjk-templates/{seed}")
    rows: list[dict] = []
    taken = 0
    for character in characters:
        if taken == n:
            break
        pictures = [font.draw(character.char) for font in fonts]
        if any(picture is None for picture in pictures):
            continue
        taken += 1
        facts, code = character_fields(character), f"{ord(character.char):04x}"
        for spec, picture in zip(CJK_FONTS, pictures):
            file_name = f"cjk-{code}-{spec.name.lower().replace(' ', '-')}.png"
            answer = character_answer(character, rng.randrange(len(TEMPLATES)))
            png, group = png_bytes(picture, image_size), f"{CJK_SOURCE}/{code}"
            rows.append(picture_row(png, file_name, CJK_QUESTION, answer, CJK_SOURCE, facts, group))
    if taken < n:
        raise PicovlmError(
            f"asked for {n} characters, but only {taken} have Unihan facts and all three typefaces: use --n {taken} or less"
        )
    return rows


def write_cjk(
    out_dir: str | Path,
    n: int = 1000,
    seed: int = 0,
    image_size: int = 112,
    split: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build the CJK set (n characters x 3 typefaces) and save it (train/validation/test grouped by
    character when split)."""
    from picovlm.data.split import save_rows

    return save_rows(make_cjk_rows(n, seed, image_size), out_dir, seed=seed, split=split, overwrite=overwrite)


# The answers state each fact of `fields` word for word: evaluation learns them (a ValueMatcher).
register_fact_parser(CJK_SOURCE)
