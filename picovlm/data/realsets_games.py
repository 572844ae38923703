"""Real sets from two free games' data packages: Wesnoth unit sprites and Freeciv nation flags.

Both games are free software (GPL-2+) and Debian ships their art and texts as data packages, so these
sets build offline, from material nobody on this project wrote:

    apt-get install wesnoth-1.16-data   # Battle for Wesnoth: unit configs (WML) + sprites
    apt-get install freeciv-data        # Freeciv: nation rulesets + flag images

`wesnoth`: one picture per sprite file of a unit (its base image, animation frames, variations),
composited on white, and an answer that names the unit and states its race, alignment, level and
movement type from the unit's config, followed by a trimmed piece of the unit's own description:

    "The Spearman is a level 1 human unit; it is lawful and has smallfoot movement. Swords are, for
     many, an expensive luxury, and one which peasants can ill afford."

`freeciv-flags`: four renderings of each playable nation's flag (the game's small and large flag and
its small and large shield, each placed on white at a seeded scale and position), with an answer from
the nation's ruleset: its name, region and era groups, city style and a trimmed piece of its legend.

The `fields` column holds the facts ({"race", "alignment", "level", "movement type"} and {"era",
"region", "city style"}) as plain strings that the answer states word for word, so evaluation scores
field accuracy with the generic reader (picovlm.eval.facts.ValueMatcher); no set-specific parser.
`group` is the unit or the flag: all pictures of one unit (one flag) land in one split, so the test
split holds units and flags the model has never seen.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from picovlm.data.cauldron import picture_row
from picovlm.data.split import save_rows
from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import register_fact_parser

DESIGN_SIZE = 112  # side of the stored picture unless image_size says otherwise
MIN_WORDS, MAX_WORDS = 10, 50  # every answer's length, in words
WESNOTH_MIN_WORDS = 26  # a unit's answer carries at least this much: its facts and some description

# ---------------------------------------------------------------------------------------------------
# Text clean-up shared by both games


_ASCII = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ", "\u2013": "-",
          "\u2026": "...", "\u00a0": " "}  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]*\s+(?=[\"'(]*[A-Z0-9])")


def clean_text(text: str) -> str:
    """Plain prose: markup tags dropped (a <ref>'s text kept), typographic quotes as ASCII, one space."""
    text = re.sub(r"<ref>[^<]*?text='([^']*)'[^<]*</ref>", r"\1", text)
    text = re.sub(r"<header>.*?</header>", " ", text)
    text = re.sub(r"</?\w+>", " ", text)
    text = "".join(_ASCII.get(ch, ch) for ch in unicodedata.normalize("NFC", text))
    return re.sub(r"\s+", " ", text).strip()


def words(text: str) -> int:
    return len(text.split())


def trim_text(text: str, budget: int, at_least: int = 0) -> str:
    """The first sentences of `text` that fit in `budget` words. When they come to fewer than
    `at_least` words (or even the first does not fit), the next sentence is added cut at its last
    clause break (or word) within the budget, ending in "..."."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    kept: list[str] = []
    for sentence in sentences:
        if words(" ".join(kept + [sentence])) > budget:
            break
        kept.append(sentence)
    left = budget - words(" ".join(kept))
    if len(kept) == len(sentences) or words(" ".join(kept)) >= max(at_least, 1) or left < 3:
        return " ".join(kept)
    head = sentences[len(kept)].split()[:left]
    breaks = [k for k, word in enumerate(head[:-1]) if word.endswith((",", ";", ":"))]
    if breaks and words(" ".join(kept)) + breaks[-1] + 1 >= at_least:  # a clause break long enough
        head = head[: breaks[-1] + 1]
    return " ".join(kept + [" ".join(head).rstrip(",;:") + "..."])


def _png(image: Image.Image, image_size: int) -> bytes:
    """`image` (RGB, DESIGN_SIZE) as PNG bytes, resized to image_size (0 keeps the design size)."""
    if image_size and image_size != image.width:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _pixel_hash(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Reading WML, Wesnoth's config language: tags, key=value lines, _ "translatable" strings, macros


@dataclass
class WmlNode:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[WmlNode] = field(default_factory=list)

    def find_all(self, tag: str) -> list[WmlNode]:
        """Every descendant node with this tag, depth first."""
        found = []
        for child in self.children:
            if child.tag == tag:
                found.append(child)
            found.extend(child.find_all(tag))
        return found


# a body may end on its own line or right before "#enddef" ("units/dunefolk/herbalist/#enddef")
_DEFINE = re.compile(r"^[ \t]*#define[ \t]+(\w+)([^\n]*)\n(.*?)#enddef\b[^\n]*$", re.M | re.S)


def expand_local_macros(text: str) -> str:
    """Expand the macros a file #defines for itself ({NAME arg ...}); others stay as they are.

    Units such as the Walking Corpse set their stats and images through such macros; the core macros
    (animations, sounds) only add frames this reader does not need, so they are not expanded."""
    macros = {m.group(1): (m.group(2).split(), m.group(3)) for m in _DEFINE.finditer(text)}
    text = _DEFINE.sub("", text)
    call = re.compile(r"\{(" + "|".join(map(re.escape, macros)) + r")\b([^{}]*)\}") if macros else None
    for _ in range(5):  # macros that call macros: a few rounds reach the bottom
        if call is None or not call.search(text):
            break

        def expand(match: re.Match) -> str:
            params, body = macros[match.group(1)]
            args = re.findall(r'"[^"]*"|\([^)]*\)|\S+', match.group(2))
            for name, value in zip(params, args):
                body = body.replace("{" + name + "}", value.strip("()"))
            return body

        text = call.sub(expand, text)
    return text


def _strip_comments(text: str) -> str:
    """Drop '#' comments (and preprocessor lines) outside "strings" ("" is a quote inside one)."""
    out, in_string, k = [], False, 0
    while k < len(text):
        ch = text[k]
        if ch == '"':
            in_string = not in_string
        elif ch == "#" and not in_string:
            end = text.find("\n", k)
            k = len(text) if end < 0 else end
            continue
        out.append(ch)
        k += 1
    return "".join(out)


def parse_wml(text: str) -> WmlNode:
    """A WML file as a tree: attributes keep the last value given; `_ "..."` and `"a" + "b"` become
    plain text; macro calls ({...}) are skipped."""
    text = _strip_comments(text)
    root = WmlNode("")
    stack = [root]
    k, n = 0, len(text)
    while k < n:
        ch = text[k]
        if ch.isspace():
            k += 1
        elif ch == "[":
            end = text.index("]", k)
            tag = text[k + 1 : end].strip()
            if tag.startswith("/"):
                if len(stack) > 1:
                    stack.pop()
            else:
                node = WmlNode(tag.lstrip("+"))
                stack[-1].children.append(node)
                stack.append(node)
            k = end + 1
        elif ch == "{":
            k = _skip_braces(text, k)
        else:
            eq = text.find("=", k)
            newline = text.find("\n", k)
            if eq < 0 or (0 <= newline < eq):  # a stray word: skip the line
                k = n if newline < 0 else newline + 1
                continue
            key = text[k:eq].strip()
            value, k = _read_value(text, eq + 1)
            stack[-1].attrs[key] = value
    return root


def _skip_braces(text: str, k: int) -> int:
    depth, in_string = 0, False
    while k < len(text):
        ch = text[k]
        if ch == '"':
            in_string = not in_string
        elif not in_string and ch == "{":
            depth += 1
        elif not in_string and ch == "}":
            depth -= 1
            if depth == 0:
                return k + 1
        k += 1
    return k


def _read_value(text: str, k: int) -> tuple[str, int]:
    """The value after '=' up to the end of its line: quoted pieces joined, a trailing '+' continues."""
    parts: list[str] = []
    n = len(text)
    while k < n:
        ch = text[k]
        if ch == "\n":
            if text[:k].rstrip().endswith("+"):  # "a" + <newline> "b"
                k += 1
                continue
            return "".join(parts).strip(), k + 1
        if ch == '"':
            end = k + 1
            while True:  # "" inside a string is a literal quote
                end = text.index('"', end)
                if text[end + 1 : end + 2] == '"':
                    end += 2
                    continue
                break
            parts.append(text[k + 1 : end].replace('""', '"'))
            k = end + 1
        elif ch in " \t":
            k += 1
        elif ch == "{":
            k = _skip_braces(text, k)
        elif ch == "_" and (k + 1 < n and text[k + 1] in ' \t"'):  # the translation mark
            k += 1
        elif ch == "+":
            k += 1
        else:
            end = text.find("\n", k)
            end = n if end < 0 else end
            piece = text[k:end]
            if '"' in piece or "{" in piece:
                cut = min(i for i in (piece.find('"'), piece.find("{")) if i >= 0)
                piece, end = piece[:cut], k + cut
            parts.append(piece)
            k = end
    return "".join(parts).strip(), k


def translated(value: str) -> str:
    """A translatable string without its context prefix: "race^Human" -> "Human"."""
    return value.split("^", 1)[1] if "^" in value else value


# ---------------------------------------------------------------------------------------------------
# Battle for Wesnoth: units and their sprites

WESNOTH_SOURCE = "wesnoth"
WESNOTH_PACKAGE = "wesnoth-1.16-data"
WESNOTH_INSTALL = f"apt-get install {WESNOTH_PACKAGE}"
WESNOTH_ROOT = Path("/usr/share/games/wesnoth")  # <version>/data/core inside
WESNOTH_QUESTION = "Describe this unit."
WESNOTH_FIELDS = ("race", "alignment", "level", "movement type")
IMAGES_PER_UNIT = 18  # sprite files per unit at most: 271 units give ~3,000 (many have only 1-3)
MIN_SPRITE_SHARE = 0.4  # a frame with fewer opaque pixels than this share of the base image is dropped
SPRITE_MARGIN = 0.08  # white border around the cropped sprite, as a share of the picture

WESNOTH_OPENINGS = [
    "The {name} is a level {level} {race} unit; it is {alignment} and has {movement} movement.",
    "This is the {name}, a level {level} {race} unit with {alignment} alignment and {movement} movement.",
]
_HALO_LINE = re.compile(r"\s*\w*halo\w*\s*=")
_IMAGE_PATH = re.compile(r"units/(?:[\w+.\-/]|\[[^\]\n]*\])*?\.png")


@dataclass
class WesnothUnit:
    id: str
    name: str
    race: str  # the race's display name, lower case ("human", "saurian")
    alignment: str
    level: str
    movement_type: str
    cost: str
    hitpoints: str
    description: str  # clean prose
    images: list[str]  # sprite paths under data/core/images, the base image first
    file: str

    def facts(self) -> dict[str, str]:
        return {"race": self.race, "alignment": self.alignment, "level": self.level,
                "movement type": self.movement_type}  # fmt: skip


def wesnoth_data_dir(source_dir: str | Path | None = None) -> Path:
    """data/core of the installed Wesnoth (the newest version when several are), or source_dir."""
    if source_dir:
        path = Path(source_dir)
        candidates = [path, path / "data" / "core", path / "core"]
        for candidate in candidates:
            if (candidate / "units").is_dir() and (candidate / "images" / "units").is_dir():
                return candidate
        raise PicovlmError(
            f"{path}: no Wesnoth data here (expected units/ and images/units/ in it, or in data/core/): "
            f"pass the data/core folder of a Wesnoth install, or `{WESNOTH_INSTALL}`"
        )
    found = sorted(WESNOTH_ROOT.glob("*/data/core/units"), key=lambda p: _version_key(p.parents[2].name))
    if not found:
        raise PicovlmError(
            f"{WESNOTH_ROOT}: Battle for Wesnoth data not found. Install it with `{WESNOTH_INSTALL}` "
            "(Debian 12; newer releases ship wesnoth-1.18-data), or pass --source-dir with the data/core "
            "folder of a Wesnoth install"
        )
    return found[-1].parent


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def expand_brackets(path: str) -> list[str]:
    """Wesnoth's image-path lists: "a-[1~3,5].png" -> a-1.png, a-2.png, a-3.png, a-5.png."""
    match = re.search(r"\[([^\]]*)\]", path)
    if not match:
        return [path]
    items: list[str] = []
    for item in match.group(1).split(","):
        item = item.strip()
        if "*" in item:  # a repeat count ("ranged*2") names the same file
            item = item.split("*")[0]
        bounds = item.split("~")
        if len(bounds) == 2 and all(b.isdigit() for b in bounds):
            a, b = int(bounds[0]), int(bounds[1])
            step = 1 if b >= a else -1
            width = len(bounds[0]) if bounds[0].startswith("0") else 0
            items += [str(v).zfill(width) for v in range(a, b + step, step)]
        else:
            items.append(item)
    head, tail = path[: match.start()], path[match.end() :]
    return [expanded for item in items for expanded in expand_brackets(head + item + tail)]


def _race_names(data_dir: Path) -> dict[str, str]:
    """race id -> display name, from units.cfg next to units/ ("lizard" -> "Saurian")."""
    units_cfg = data_dir / "units.cfg"
    if not units_cfg.is_file():
        raise DataError(
            f"{units_cfg}: missing; the Wesnoth data is incomplete: reinstall ({WESNOTH_INSTALL})"
        )
    root = parse_wml(units_cfg.read_text(encoding="utf-8"))
    names = {}
    for race in root.find_all("race"):
        name = race.attrs.get("male_name") or race.attrs.get("name") or race.attrs.get("id", "")
        names[race.attrs.get("id", "")] = translated(name)
    return names


def load_wesnoth_units(source_dir: str | Path | None = None) -> list[WesnothUnit]:
    """Every listed unit type of Wesnoth's core data that has a description and a base sprite, sorted by
    id. Hidden units (hide_help, do_not_list) are left out, and so are units that share their base image
    (one picture, two answers: the Great Troll is drawn as the Troll Warrior). A sprite file that several
    units name (shared frames) is dropped from all of them, unless it is one's base image."""
    data_dir = wesnoth_data_dir(source_dir)
    images_dir = data_dir / "images"
    races = _race_names(data_dir)
    units: list[WesnothUnit] = []
    for cfg in sorted((data_dir / "units").rglob("*.cfg")):
        text = expand_local_macros(cfg.read_text(encoding="utf-8"))
        try:
            nodes = parse_wml(text).find_all("unit_type")
        except ValueError as err:  # an unclosed [tag or "string
            raise DataError(f"{cfg}: not readable as WML ({err}); reinstall ({WESNOTH_INSTALL})") from err
        units += [u for u in (_unit_from_node(node, text, cfg, races, images_dir) for node in nodes) if u]
    base_count = Counter(unit.images[0] for unit in units)
    units = [unit for unit in units if base_count[unit.images[0]] == 1]
    bases = {unit.images[0]: unit.id for unit in units}
    users = Counter(image for unit in units for image in unit.images)
    for unit in units:
        unit.images = [
            image for image in unit.images
            if (bases[image] == unit.id if image in bases else users[image] == 1)
        ]  # fmt: skip
    ids = [unit.id for unit in units]
    if len(set(ids)) != len(ids):
        raise DataError(f"{data_dir}: unit ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return sorted(units, key=lambda u: u.id)


def _unit_from_node(node: WmlNode, text: str, cfg: Path, races: dict, images_dir: Path) -> WesnothUnit | None:
    a = node.attrs
    if a.get("hide_help") == "yes" or a.get("do_not_list") == "yes":
        return None
    required = ("id", "name", "race", "alignment", "level", "movement_type", "image", "description")
    if any(not a.get(key) for key in required):
        return None
    description = clean_text(translated(a["description"]))
    if words(description) < 5:
        return None
    base = a["image"].split("~")[0]
    # the sprites the unit's block names, in the order of first mention, base image first
    start = re.search(rf"^[ \t]*id[ \t]*=[ \t]*{re.escape(a['id'])}[ \t]*$", text, re.M)
    block = text[start.start() :] if start else text
    end = block.find("[/unit_type]")
    block = block[: end if end >= 0 else None]
    # halos (glows, flames, torches drawn over a unit) are not the unit: leave out halo= lines
    block = "\n".join(line for line in block.splitlines() if not _HALO_LINE.match(line))
    images = []
    for path in [base] + [p for m in _IMAGE_PATH.findall(block) for p in expand_brackets(m)]:
        if path not in images and (images_dir / path).is_file():
            images.append(path)
    if not images or images[0] != base:
        return None
    return WesnothUnit(
        id=a["id"], name=translated(a["name"]), race=translated(races.get(a["race"], a["race"])).lower(),
        alignment=a["alignment"].lower(), level=a["level"], movement_type=a["movement_type"],
        cost=a.get("cost", ""), hitpoints=a.get("hitpoints", ""), description=description,
        images=images, file=str(cfg),
    )  # fmt: skip


def team_colour_palette(data_dir: Path) -> set[tuple[int, int, int]]:
    """The magenta colours Wesnoth repaints in a side's colour (team-colors.cfg's color_palette)."""
    path = data_dir / "team-colors.cfg"
    if not path.is_file():
        return set()
    palette = parse_wml(path.read_text(encoding="utf-8")).find_all("color_palette")
    values = palette[0].attrs.get("magenta", "") if palette else ""
    return {tuple(int(v[i : i + 2], 16) for i in (0, 2, 4)) for v in values.split(",") if len(v) == 6}


def sprite_picture(path: Path, palette: set, size: int = DESIGN_SIZE) -> tuple[Image.Image, int]:
    """A sprite on white: team-colour pixels shown in red (as side 1 sees them), cropped to the visible
    pixels, centred on a square with a small margin, resized to `size`. Also its opaque-pixel count."""
    rgba = np.array(Image.open(path).convert("RGBA"))
    if palette:
        rgb = rgba[..., :3]
        key = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
        team = np.isin(key, codes)
        rgba[..., 2] = np.where(team, rgba[..., 1], rgba[..., 2])  # magenta -> red of the same lightness
    alpha = rgba[..., 3]
    opaque = int((alpha > 127).sum())
    rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
    if not len(rows):
        return Image.new("RGB", (size, size), "white"), 0
    crop = Image.fromarray(rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], "RGBA")
    side = max(crop.size)
    inner = size - 2 * round(size * SPRITE_MARGIN)
    scale = inner / side
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                       Image.Resampling.LANCZOS)  # fmt: skip
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return canvas.convert("RGB"), opaque


def wesnoth_answer(unit: WesnothUnit, opening: int = 0) -> str:
    """The unit's answer: its facts, then as much of its own description as keeps it within 50 words."""
    head = WESNOTH_OPENINGS[opening].format(
        name=unit.name, level=unit.level, race=unit.race, alignment=unit.alignment,
        movement=unit.movement_type,
    )  # fmt: skip
    budget = MAX_WORDS - words(head)
    return f"{head} {trim_text(unit.description, budget, WESNOTH_MIN_WORDS - words(head))}".strip()


def make_wesnoth_rows(
    n: int = 3000,
    seed: int = 0,
    image_size: int = DESIGN_SIZE,
    mirror: bool = False,
    source_dir: str | Path | None = None,
    images_per_unit: int = IMAGES_PER_UNIT,
) -> list[dict]:
    """About n rows: units in a seeded order, each with its base sprite and up to images_per_unit - 1
    other sprite files (a seeded sample), until n rows; fewer when the units run out. mirror adds each
    picture flipped left-right (units face both ways in the game), in the same group."""
    data_dir = wesnoth_data_dir(source_dir)
    units = load_wesnoth_units(data_dir)
    palette = team_colour_palette(data_dir)
    rng = random.Random(f"picovlm-wesnoth/{seed}")
    rng.shuffle(units)
    rows: list[dict] = []
    limit = n * (2 if mirror else 1)  # --mirror doubles the rows, as for Fashion-MNIST
    seen: set[str] = set()  # pixel hashes: a frame saved twice under two names is one picture
    for unit in units:
        if len(rows) >= limit:
            break
        base, base_opaque = sprite_picture(data_dir / "images" / unit.images[0], palette)
        others = unit.images[1:]
        rng.shuffle(others)
        pictures = [(unit.images[0], base)]
        for path in others:
            if len(pictures) >= images_per_unit:
                break
            picture, opaque = sprite_picture(data_dir / "images" / path, palette)
            if opaque >= MIN_SPRITE_SHARE * base_opaque:
                pictures.append((path, picture))
        answer_rng = random.Random(f"picovlm-wesnoth-answer/{seed}/{unit.id}")
        for path, picture in pictures:
            for mirrored in [False, True] if mirror else [False]:
                if len(rows) >= limit:
                    break
                shown = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else picture
                digest = _pixel_hash(shown)
                if digest in seen:
                    continue
                seen.add(digest)
                file_name = path.replace("/", "_")[:-4] + ("-mirrored" if mirrored else "") + ".png"
                answer = wesnoth_answer(unit, answer_rng.randrange(len(WESNOTH_OPENINGS)))
                png, facts, group = _png(shown, image_size), unit.facts(), f"{WESNOTH_SOURCE}/{unit.id}"
                rows.append(
                    picture_row(png, file_name, WESNOTH_QUESTION, answer, WESNOTH_SOURCE, facts, group)
                )
    return rows


def set_writer(make_rows, item: str):
    """The `picovlm realset` writer of a game set: make_rows' rows saved to out_dir, grouped by `item`
    into train/validation/test when split (one Dataset otherwise). Returns out_dir."""

    def write(
        out_dir: str | Path,
        n: int = 3000,
        seed: int = 0,
        image_size: int = DESIGN_SIZE,
        mirror: bool = False,
        split: bool = True,
        source_dir: str | Path | None = None,
        overwrite: bool = False,
    ) -> Path:
        return save_rows(make_rows(n, seed, image_size, mirror, source_dir), out_dir, seed, split, overwrite)

    write.__doc__ = f"Build the set of {make_rows.__name__} and save it (split grouped by {item})."
    return write


write_wesnoth = set_writer(make_wesnoth_rows, "unit")


# ---------------------------------------------------------------------------------------------------
# Freeciv: nations and their flags

FREECIV_SOURCE = "freeciv-flags"
FREECIV_PACKAGE = "freeciv-data"
FREECIV_INSTALL = f"apt-get install {FREECIV_PACKAGE}"
FREECIV_DIR = Path("/usr/share/games/freeciv")  # nation/*.ruleset and flags/*.png inside
FREECIV_QUESTION = "Describe this flag."
FREECIV_FIELDS = ("era", "region", "city style")
# The game's four pictures of a flag: file suffix -> how much of the canvas (width) it may take
FLAG_RENDERINGS = {
    "": (0.55, 0.75),
    "-large": (0.75, 0.92),
    "-shield": (0.4, 0.55),
    "-shield-large": (0.5, 0.7),
}
ERAS = ("Ancient", "Medieval", "Early Modern", "Modern")  # the ruleset's era groups, in time order
REGIONS = ("African", "American", "Asian", "European", "Oceanian", "Imaginary")
FREECIV_OPENINGS = [
    "The flag of the {plural}, {region} nation{era}, whose cities are built in {style} style.",
    "This flag belongs to the {plural}, {region} nation{era}; their cities are built in {style} style.",
]


@dataclass
class FreecivNation:
    id: str  # the ruleset section without "nation_"
    name: str  # the adjective the game uses as its name ("Roman")
    plural: str  # "Romans"
    regions: list[str]  # the ruleset's region groups ("Asian", "European")
    eras: list[str]  # its era groups in time order, possibly none
    style: str  # city style ("European")
    legend: str
    flag: str  # flags/<flag>*.png
    file: str

    def facts(self) -> dict[str, str]:
        """The era only where the ruleset gives one (a fifth of the nations have no era group)."""
        facts = {"region": _and(self.regions).lower(), "city style": self.style.lower()}
        if self.eras:
            facts["era"] = _and(self.eras).lower()
        return facts


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def parse_ruleset(text: str) -> dict[str, dict[str, object]]:
    """A Freeciv ruleset (the 'secfile' format) as {section: {key: value}}: a value is a string, or a
    list of strings when it has several; _("...") marks and "?context:" prefixes are dropped; tables
    ({ ... }) are skipped; comments start with ';' or '#' outside strings."""
    sections: dict[str, dict[str, object]] = {}
    current: dict[str, object] = {}
    k, n = 0, len(text)
    while k < n:
        ch = text[k]
        if ch.isspace():
            k += 1
        elif ch in ";#" or text.startswith("*include", k):
            end = text.find("\n", k)
            k = n if end < 0 else end + 1
        elif ch == "[":
            end = text.index("]", k)
            current = sections.setdefault(text[k + 1 : end].strip(), {})
            k = end + 1
        else:
            eq = text.find("=", k)
            newline = text.find("\n", k)
            if eq < 0 or (0 <= newline < eq):
                k = n if newline < 0 else newline + 1
                continue
            key = text[k:eq].strip()
            values, k = _read_ruleset_values(text, eq + 1)
            current[key] = values[0] if len(values) == 1 else values
    return sections


def _read_ruleset_values(text: str, k: int) -> tuple[list[str], int]:
    values: list[str] = []
    n = len(text)
    while k < n:
        ch = text[k]
        if ch in " \t":
            k += 1
        elif ch == "\n":
            if text[:k].rstrip().endswith(","):  # a list continues on the next line
                k += 1
                continue
            return values, k + 1
        elif ch in ";#":  # a comment to the end of the line
            end = text.find("\n", k)
            k = n if end < 0 else end
        elif ch == "{":  # a table: not needed here
            end = text.find("}", k)
            k = n if end < 0 else end + 1
            values.append("")
        elif ch == "_" and text[k + 1 : k + 2] == "(":
            k += 2
        elif ch in "),":
            k += 1
        elif ch == '"':
            chars, k = [], k + 1
            while k < n and text[k] != '"':
                if text[k] == "\\" and k + 1 < n:
                    nxt = text[k + 1]
                    chars.append("" if nxt == "\n" else "\n" if nxt == "n" else nxt)
                    k += 2
                    continue
                chars.append(text[k])
                k += 1
            value = "".join(chars)
            values.append(re.sub(r"^\?[\w ]+:", "", value))
            k += 1
        else:
            end = k
            while end < n and text[end] not in ",\n;#":
                end += 1
            values.append(text[k:end].strip())
            k = end
    return values, k


def freeciv_dir(source_dir: str | Path | None = None) -> Path:
    path = Path(source_dir) if source_dir else FREECIV_DIR
    if not (path / "nation").is_dir() or not (path / "flags").is_dir():
        raise PicovlmError(
            f"{path}: Freeciv data not found (expected nation/ and flags/ in it). Install it with "
            f"`{FREECIV_INSTALL}` (Debian/Ubuntu), or pass --source-dir with a Freeciv data folder"
        )
    return path


def load_freeciv_nations(source_dir: str | Path | None = None) -> list[FreecivNation]:
    """The playable nations of Freeciv's nation/*.ruleset that have all four flag pictures, sorted by id.
    Barbarians and animals (barbarian_type, is_playable=FALSE) are left out; a flag that two nations
    share stays with the first of them (by id), so one picture never has two answers."""
    root = freeciv_dir(source_dir)
    nations, flag_owner = [], {}
    for path in sorted((root / "nation").glob("*.ruleset")):
        try:
            sections = parse_ruleset(path.read_text(encoding="utf-8"))
        except ValueError as err:  # an unclosed [section
            raise DataError(
                f"{path}: not readable as a ruleset ({err}); reinstall ({FREECIV_INSTALL})"
            ) from err
        for section, entries in sections.items():
            if not section.startswith("nation_"):
                continue
            nation = _nation_from_entries(section[len("nation_") :], entries, path, root)
            if nation is not None and nation.flag not in flag_owner:
                flag_owner[nation.flag] = nation.id
                nations.append(nation)
    return sorted(nations, key=lambda nation: nation.id)


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def _nation_from_entries(nation_id: str, e: dict, path: Path, root: Path) -> FreecivNation | None:
    if e.get("barbarian_type") or str(e.get("is_playable", "TRUE")).upper() == "FALSE":
        return None
    groups = [g.strip() for g in _as_list(e.get("groups"))]
    flag = str(e.get("flag", "")).strip()
    if not flag or not e.get("name") or not e.get("plural"):
        return None
    if not all((root / "flags" / f"{flag}{suffix}.png").is_file() for suffix in FLAG_RENDERINGS):
        return None
    regions = [g for g in REGIONS if g in groups]
    eras = [g for g in ERAS if g in groups]  # in time order; some skip one ("Medieval", "Modern")
    if not regions:
        return None
    return FreecivNation(
        id=nation_id, name=str(e["name"]), plural=str(e["plural"]), regions=regions, eras=eras,
        style=str(e.get("style", "")).strip().capitalize() or "unknown",
        legend=clean_text(str(e.get("legend", "") or "")), flag=flag, file=str(path),
    )  # fmt: skip


def flag_picture(path: Path, rng: random.Random, width_share: tuple[float, float], size: int = DESIGN_SIZE):
    """A flag picture on white: scaled with nearest neighbour, so the game's pixels stay crisp."""
    return place_on_white(Image.open(path), rng, width_share, size, Image.Resampling.NEAREST)


def place_on_white(
    picture: Image.Image,
    rng: random.Random,
    width_share: tuple[float, float],
    size: int = DESIGN_SIZE,
    resample: Image.Resampling = Image.Resampling.NEAREST,
) -> Image.Image:
    """`picture` on a white square: scaled so its width is a seeded share of the canvas (its height
    capped to fit), at a seeded position near the centre that keeps it whole."""
    picture = picture.convert("RGBA")
    target = rng.uniform(*width_share) * size
    scale = min(target / picture.width, (size - 4) / picture.height)
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), resample
    )
    x = rng.randint(0, size - picture.width)
    y = rng.randint(0, size - picture.height)
    # keep it near the centre: a position drawn over the free space, pulled half-way to the middle
    x, y = (x + (size - picture.width) // 2) // 2, (y + (size - picture.height) // 2) // 2
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(picture, (x, y))
    return canvas.convert("RGB")


def freeciv_answer(nation: FreecivNation, opening: int = 0) -> str:
    """The nation's answer: its metadata, then as much of its legend as keeps it within 50 words."""
    region = _and(nation.regions)
    era = ""
    if nation.eras:
        era = f" of the {_and(nation.eras).lower()} era{'s' if len(nation.eras) > 1 else ''}"
    head = FREECIV_OPENINGS[opening].format(
        plural=nation.plural, region=("an " if region[0] in "AIO" else "a ") + region, era=era,
        style=nation.style,
    )  # fmt: skip
    return f"{head} {trim_text(nation.legend, MAX_WORDS - words(head))}".strip()


def make_freeciv_rows(
    n: int = 3000,
    seed: int = 0,
    image_size: int = DESIGN_SIZE,
    mirror: bool = False,
    source_dir: str | Path | None = None,
) -> list[dict]:
    """About n rows: nations in a seeded order, four pictures each (the game's flag, large flag, shield
    and large shield), until n rows; fewer when the nations run out. mirror is refused: a mirrored flag
    is a different flag."""
    if mirror:
        raise PicovlmError("freeciv-flags: --mirror would show flags the answers do not describe; drop it")
    root = freeciv_dir(source_dir)
    nations = load_freeciv_nations(root)
    rng = random.Random(f"picovlm-freeciv/{seed}")
    rng.shuffle(nations)
    rows: list[dict] = []
    for nation in nations[: -(-n // len(FLAG_RENDERINGS))]:
        answer_rng = random.Random(f"picovlm-freeciv-answer/{seed}/{nation.id}")
        for suffix, share in FLAG_RENDERINGS.items():
            if len(rows) >= n:
                break
            picture = flag_picture(root / "flags" / f"{nation.flag}{suffix}.png", rng, share)
            answer = freeciv_answer(nation, answer_rng.randrange(len(FREECIV_OPENINGS)))
            png, name = _png(picture, image_size), f"{nation.flag}{suffix}.png"
            facts, group = nation.facts(), f"{FREECIV_SOURCE}/{nation.flag}"
            rows.append(picture_row(png, name, FREECIV_QUESTION, answer, FREECIV_SOURCE, facts, group))
    return rows


write_freeciv_flags = set_writer(make_freeciv_rows, "flag")


# name -> (writer, install line), merged into realsets.REAL_SETS
GAME_SETS = {
    WESNOTH_SOURCE: (write_wesnoth, WESNOTH_INSTALL),
    FREECIV_SOURCE: (write_freeciv_flags, FREECIV_INSTALL),
}

# The answers state each fact of `fields` word for word: evaluation learns them (a ValueMatcher).
register_fact_parser(WESNOTH_SOURCE)
register_fact_parser(FREECIV_SOURCE)
