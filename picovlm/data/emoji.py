"""`picovlm realset emoji`: every emoji of Noto Color Emoji, described from Unicode's and CLDR's data.

Three Debian packages, none written by this project:

    apt-get install fonts-noto-color-emoji unicode-data unicode-cldr-core

  * the pictures: Noto Color Emoji (/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf, SIL Open Font
    License 1.1), drawn at its bitmap size (109 pixels per em) on white;
  * name, group and subgroup: emoji-test.txt of the Unicode emoji data (unicode-data,
    /usr/share/unicode/emoji/emoji-test.txt): every fully-qualified emoji, skin-tone variants included;
  * keywords: CLDR's English annotations (unicode-cldr-core, common/annotations/en.xml, and
    common/annotationsDerived/en.xml for the skin-tone and gender variants).

One row per emoji that the font draws as one picture of its own and CLDR has keywords for, for example

    "This is the emoji 'grinning face with big eyes', in the group smileys and emotion, subgroup
     face-smiling. Keywords: face, mouth, open, smile."

The `fields` column holds {"group", "subgroup"} (the facts field accuracy scores, read back from an
answer by picovlm.eval.facts.ValueMatcher, which needs no parser of its own). The `group` column is the
base emoji, the sequence without skin tones and with man/woman, boy/girl and the gender signs made
neutral, so the variants of one emoji ("thumbs up: dark skin tone", "woman technologist") stay in one
split: a test emoji is never a recoloured training one.
"""

from __future__ import annotations

import hashlib
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from picovlm.config import DEFAULT_QUESTION
from picovlm.data.cauldron import picture_row
from picovlm.data.glyphs import FontFile, GlyphFont, png_bytes
from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import register_fact_parser

EMOJI_SOURCE = "emoji"
EMOJI_INSTALL = "apt-get install fonts-noto-color-emoji unicode-data unicode-cldr-core"
EMOJI_FONT = FontFile(
    "Noto Color Emoji",
    Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
    "apt-get install fonts-noto-color-emoji",
    size=109,  # the font's only bitmap size: any other is a rescaled copy of it
    colour=True,
)
EMOJI_CANVAS = 144  # a glyph is 136 x 128 pixels at size 109: a few pixels of white around it
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
CLDR_ANNOTATIONS = Path("/usr/share/unicode/cldr/common")  # annotations/en.xml, annotationsDerived/en.xml
# Every file the set is made from (the tests' `emoji_sources` fixture checks them).
EMOJI_FILES = (
    EMOJI_FONT.path,
    EMOJI_TEST,
    CLDR_ANNOTATIONS / "annotations" / "en.xml",
    CLDR_ANNOTATIONS / "annotationsDerived" / "en.xml",
)
EMOJI_QUESTION = DEFAULT_QUESTION
MAX_WORDS = 47  # keywords are left out from the end past this
MAX_KEYWORDS = 8

# Two templates, chosen per row by the seed. A subgroup always follows the word "subgroup" and never
# comes before it: a ValueMatcher finds each fact by the words around it, and some subgroups are also
# a group's last word ("emotion" of "smileys and emotion").
TEMPLATES = [
    "This is the emoji '{name}', in the group {group}, subgroup {subgroup}. Keywords: {keywords}.",
    "The picture shows the '{name}' emoji, from the {group} group, subgroup {subgroup}. "
    "Related words: {keywords}.",
]

SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
GENDER_SIGNS = {"\u2640", "\u2642"}  # female and male sign, joined to a person by a ZWJ
ZWJ, VS16 = "\u200d", "\ufe0f"
# gendered people -> the neutral one, so "woman technologist" and "technologist" share a base
NEUTRAL_PERSON = {
    "\U0001f468": "\U0001f9d1",  # man -> person
    "\U0001f469": "\U0001f9d1",  # woman -> person
    "\U0001f466": "\U0001f9d2",  # boy -> child
    "\U0001f467": "\U0001f9d2",  # girl -> child
    "\U0001f474": "\U0001f9d3",  # old man -> older person
    "\U0001f475": "\U0001f9d3",  # old woman -> older person
}
_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E\d+\.\d+\s+(.+)$")


@dataclass(frozen=True)
class Emoji:
    """One fully-qualified emoji of emoji-test.txt with its CLDR keywords."""

    text: str
    name: str  # "thumbs up: medium skin tone"
    group: str  # "people and body" (emoji-test's "People & Body", as an answer says it)
    subgroup: str  # "hand-fingers-closed"
    keywords: tuple[str, ...]


def _missing(path: Path, what: str) -> PicovlmError:
    return PicovlmError(f"{path}: {what} not found. Install it with `{EMOJI_INSTALL}` (Debian/Ubuntu)")


def base_emoji(text: str) -> str:
    """The emoji without skin tones, variation selectors and gender: the `group` of its variants."""
    kept = [NEUTRAL_PERSON.get(ch, ch) for ch in text if ch not in SKIN_TONES and ch != VS16]
    parts = "".join(kept).split(ZWJ)
    return ZWJ.join(part for part in parts if part not in GENDER_SIGNS) or text


def read_emoji_test(path: Path = EMOJI_TEST) -> list[tuple[str, str, str, str]]:
    """(emoji, name, group, subgroup) of every fully-qualified emoji, in the file's order."""
    if not path.is_file():
        raise _missing(path, "Unicode's emoji-test.txt")
    rows, group, subgroup = [], None, None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line:
            match = _LINE.match(line)
            if not match or not group or not subgroup:
                raise DataError(f"{path}:{number}: not a line of emoji-test.txt's format: {line!r}")
            text = "".join(chr(int(code, 16)) for code in match.group(1).split())
            rows.append((text, match.group(2).strip(), group, subgroup))
    if not rows:
        raise DataError(f"{path}: no fully-qualified emoji in it; reinstall: {EMOJI_INSTALL}")
    return rows


def read_cldr_keywords(cldr_dir: Path = CLDR_ANNOTATIONS) -> dict[str, list[str]]:
    """Emoji (without variation selectors) -> CLDR's English keywords; the base file wins over the
    derived one (skin-tone and gender variants, which only the derived file has)."""
    keywords: dict[str, list[str]] = {}
    for name in ("annotations/en.xml", "annotationsDerived/en.xml"):
        path = cldr_dir / name
        if not path.is_file():
            raise _missing(path, "CLDR's English emoji annotations")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as err:
            raise DataError(f"{path}: not readable XML ({err}); reinstall: {EMOJI_INSTALL}") from err
        for node in root.iter("annotation"):
            if node.get("type") != "tts" and node.text:
                words = [word.strip() for word in node.text.split("|") if word.strip()]
                keywords.setdefault(node.get("cp", "").replace(VS16, ""), words)
    return keywords


def answer_keywords(name: str, keywords: list[str]) -> list[str]:
    """The keywords an answer lists: without those the name already says ("thumbs up", "medium skin
    tone" for "thumbs up: medium skin tone"), unless that leaves none."""
    said = {part.strip().lower() for part in re.split(r":|,", name)} | {name.lower()}
    kept = [word for word in keywords if word.lower() not in said]
    return (kept or keywords)[:MAX_KEYWORDS]


def load_emoji(emoji_test: Path = EMOJI_TEST, cldr_dir: Path = CLDR_ANNOTATIONS) -> list[Emoji]:
    """Every fully-qualified emoji that CLDR has keywords for (CLDR 41 lacks the 31 of Emoji 15.0)."""
    keywords = read_cldr_keywords(cldr_dir)
    found = []
    for text, name, group, subgroup in read_emoji_test(emoji_test):
        words = keywords.get(text.replace(VS16, ""))
        if words:
            group_words = group.lower().replace("&", "and")
            found.append(Emoji(text, name, group_words, subgroup, tuple(answer_keywords(name, words))))
    return found


def emoji_fields(emoji: Emoji) -> dict:
    return {"group": emoji.group, "subgroup": emoji.subgroup}


def emoji_answer(emoji: Emoji, template: int = 0) -> str:
    """The answer (13-47 words): keywords are dropped from the end while it is longer than MAX_WORDS."""
    keywords = list(emoji.keywords)
    while True:
        answer = TEMPLATES[template].format(
            name=emoji.name, group=emoji.group, subgroup=emoji.subgroup, keywords=", ".join(keywords)
        )
        if len(answer.split()) <= MAX_WORDS or len(keywords) <= 1:
            return answer
        keywords.pop()


def make_emoji_rows(n: int | None = None, seed: int = 0, image_size: int = 112) -> list[dict]:
    """One row per emoji the font draws (n: a sample of that many, fixed by the seed; None: all), in
    emoji-test.txt's order. An emoji the font draws as several pictures, or not at all, or exactly as an
    emoji kept before it, is left out."""
    font = GlyphFont(EMOJI_FONT, EMOJI_CANVAS)
    emoji_list = load_emoji()
    order = list(range(len(emoji_list)))
    if n is not None:  # a sample: draw in the seed's order until n are drawn
        random.Random(f"picovlm-emoji/{seed}").shuffle(order)
    drawn: dict[int, bytes] = {}
    seen: set[bytes] = set()
    for index in order:
        picture = font.draw(emoji_list[index].text)
        if picture is None:
            continue
        # One picture, one answer: the font draws a few emoji exactly alike (a snowboarder's skin tones,
        # a territory's flag as its country's), and only the first of them is kept.
        digest = hashlib.sha1(picture.tobytes()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        drawn[index] = png_bytes(picture, image_size)  # PNG bytes, not 3,600 pictures in memory
        if len(drawn) == n:
            break
    if n is not None and len(drawn) < n:
        raise PicovlmError(
            f"asked for {n} emoji, but the font draws {len(drawn)}: use --n {len(drawn)} or less"
        )
    rng = random.Random(f"picovlm-emoji-templates/{seed}")
    rows = []
    for index, png in sorted(drawn.items()):  # in emoji-test.txt's order
        emoji = emoji_list[index]
        code = "-".join(f"{ord(ch):04x}" for ch in emoji.text)
        base = "-".join(f"{ord(ch):04x}" for ch in base_emoji(emoji.text))
        answer = emoji_answer(emoji, rng.randrange(len(TEMPLATES)))
        name, facts, group = f"emoji-{code}.png", emoji_fields(emoji), f"{EMOJI_SOURCE}/{base}"
        rows.append(picture_row(png, name, EMOJI_QUESTION, answer, EMOJI_SOURCE, facts, group))
    return rows


def write_emoji(
    out_dir: str | Path,
    n: int | None = None,
    seed: int = 0,
    image_size: int = 112,
    split: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build the emoji set and save it (train/validation/test grouped by base emoji when split)."""
    from picovlm.data.split import save_rows

    return save_rows(
        make_emoji_rows(n, seed, image_size), out_dir, seed=seed, split=split, overwrite=overwrite
    )


# The answers state each fact of `fields` word for word: evaluation learns them (a ValueMatcher).
register_fact_parser(EMOJI_SOURCE)
