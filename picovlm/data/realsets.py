"""Real-image datasets that are available offline: Fashion-MNIST from Debian's `dataset-fashion-mnist`.

The demo set of scenes (picovlm/data/scenes.py) is drawn by a program. This module builds a second set from real
photographs: Fashion-MNIST, 70,000 grayscale product photos from Zalando's catalogue (28 x 28 pixels,
ten kinds of clothing, MIT/Expat licence), which Debian ships as a 31 MB package:

    apt-get install dataset-fashion-mnist      # -> /usr/share/datasets/fashion-mnist/*-ubyte.gz

Every answer states facts a model can see in the picture: the label from the dataset's metadata (and
the kind of garment it belongs to), plus four facts measured from the pixels (tone, texture, shape,
how much of the frame the item fills), for example

    "This is a small grayscale photo of an ankle boot, a kind of footwear. The item is light gray on a
     black background and looks plain. It is wider than tall and fills about half of the frame."

The facts are stored as JSON in the `fields` column and `extract_fields(answer)` parses an answer back
into them, as for the demo set. The rows are a class-balanced sample of the 70,000 photos, fixed by the
seed. `mirror=True` adds a left-right mirrored copy of each photo (mirroring changes none of the facts);
both copies share one `group` id, so a grouped split never puts one in train and the other in test.

`fashion-mnist-pairs` puts two of those photos side by side in one picture and describes both:

    "Two photos side by side. On the left is a sandal; it is dark gray, looks patterned and fills a
     small part of its photo. On the right is a coat that looks plain, is light gray and fills most of
     its photo."

A single photo's facts repeat across photos (111 fact combinations in 300 test photos), so a model can
only give distinct answers to distinct photos where the photos differ in a stated fact. A pair's facts
repeat far less (96 % of 300 test pictures have their own), and a nearest-image lookup can no longer
find a training picture that matches both halves: the model has to read each half.

Two more real sets draw one glyph per picture and live in their own modules: `emoji` (emoji.py) and
`cjk` (cjk.py); three come from games' data packages: `wesnoth` and `freeciv-flags`
(realsets_games.py) and `freeorion` (freeorion.py). REAL_SETS at the end of this module registers
them all for `picovlm realset`.
"""

from __future__ import annotations

import gzip
import io
import random
import re
from pathlib import Path

import numpy as np
from PIL import Image

from picovlm.config import DEFAULT_QUESTION
from picovlm.data.cauldron import picture_row, rows_to_dataset
from picovlm.data.cjk import CJK_INSTALL, CJK_SOURCE, write_cjk
from picovlm.data.emoji import EMOJI_INSTALL, EMOJI_SOURCE, write_emoji
from picovlm.data.freeorion import FREEORION_INSTALL, FREEORION_SOURCE, write_freeorion
from picovlm.data.realsets_games import GAME_SETS
from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import register_fact_parser

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
FASHION_SOURCE = "fashion-mnist"
FASHION_QUESTION = DEFAULT_QUESTION  # the same fixed question as the demo set
FASHION_FILES = {  # split -> (images file, labels file), as named by the dataset and the Debian package
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# The label table of the dataset's README (label 0..9), with the phrase an answer uses and the kind of
# garment, which is what a person would also say when they see the photo.
ITEMS = [
    ("t-shirt", "a T-shirt", "upper-body clothing"),
    ("trousers", "a pair of trousers", "legwear"),
    ("pullover", "a pullover", "upper-body clothing"),
    ("dress", "a dress", "one-piece clothing"),
    ("coat", "a coat", "upper-body clothing"),
    ("sandal", "a sandal", "footwear"),
    ("shirt", "a shirt", "upper-body clothing"),
    ("sneaker", "a sneaker", "footwear"),
    ("bag", "a bag", "accessory"),
    ("ankle boot", "an ankle boot", "footwear"),
]
_ITEM_PHRASE = {name: phrase for name, phrase, _ in ITEMS}  # "t-shirt" -> "a T-shirt"

# Pixel facts. Thresholds were chosen on the 10,000 test photos so each value is common (see
# docs/datasets-real.md); an item pixel is one brighter than INK (the background is black).
INK = 25
TONES = [(130, "dark gray"), (180, "medium gray"), (256, "light gray")]  # mean item brightness below
TEXTURES = [(35.0, "plain"), (float("inf"), "patterned")]  # brightness std. dev. inside the item below
SHAPES = [(0.85, "taller than wide"), (1.18, "about as wide as tall"), (float("inf"), "wider than tall")]
FILLS = [(0.35, "a small part"), (0.55, "about half"), (1.01, "most")]  # share of item pixels below

# Two templates per sentence, chosen per row; each must stay parseable by extract_fields.
OPENINGS = [
    "This is a small grayscale photo of {item}, a kind of {group}.",
    "The picture shows {item}, which is a kind of {group}.",
]
BODIES = [
    "The item is {tone} on a black background and looks {texture}. "
    "It is {shape} and fills {fill} of the frame.",
    "It looks {texture} and {tone} against a black background. "
    "The item is {shape} and fills {fill} of the frame.",
]

PAIR_SOURCE = "fashion-mnist-pairs"
PAIR_SIDES = ("left", "right")
# Per photo: the facts that tell photos apart best (the group follows from the item; shape adds less
# than fill); four facts keep the answer at 38-50 words.
PAIR_FACTS = ("item", "tone", "texture", "fill")
PAIR_OPENINGS = ["Two photos side by side.", "Two products next to each other."]
PAIR_SIDE_SENTENCES = [
    "On the {side} is {item}; it is {tone}, looks {texture} and fills {fill} of its photo.",
    "On the {side} is {item} that looks {texture}, is {tone} and fills {fill} of its photo.",
]
# The pair picture at its 112-pixel design size: each photo upscaled to 48 pixels, 16 black pixels
# between them, centred vertically. At a model's 224 pixels and 32-pixel patches each photo covers
# exactly 3 x 3 patches and no patch holds parts of both.
PAIR_CANVAS, PAIR_PHOTO, PAIR_GAP = 112, 48, 16


# ---------------------------------------------------------------------------------------------------
# Reading the IDX files (the dataset's own format: a big-endian header, then raw uint8 values)


def _missing_source(path: Path) -> PicovlmError:
    return PicovlmError(
        f"{path}: Fashion-MNIST not found. Install it with `{FASHION_MNIST_INSTALL}` (Debian/Ubuntu), or "
        "pass --source-dir DIR with the four *-ubyte.gz files of github.com/zalandoresearch/fashion-mnist"
    )


def read_idx(path: str | Path, expected_magic: int) -> np.ndarray:
    """Read a gzipped IDX file: magic 2051 -> images (n, rows, cols), magic 2049 -> labels (n,)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_source(path)
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:
        raise DataError(
            f"{path}: not a readable gzip file ({err}); reinstall: {FASHION_MNIST_INSTALL}"
        ) from err
    magic = int.from_bytes(raw[0:4], "big") if len(raw) >= 4 else None
    if magic != expected_magic:
        raise DataError(f"{path}: not an IDX file with magic number {expected_magic} (found {magic})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    header = 4 + 4 * len(dims)
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(f"{path}: truncated: header says {dims}, file has {len(raw) - header} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(source_dir: str | Path | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(split, images uint8 (n, 28, 28), labels uint8 (n,))] for "train" and "t10k"."""
    source_dir = Path(source_dir) if source_dir else FASHION_MNIST_DIR
    if not source_dir.is_dir():
        raise _missing_source(source_dir)
    parts = []
    for split, (images_file, labels_file) in FASHION_FILES.items():
        images = read_idx(source_dir / images_file, 2051)
        labels = read_idx(source_dir / labels_file, 2049)
        if len(images) != len(labels) or labels.max(initial=0) >= len(ITEMS):
            raise DataError(f"{source_dir}: {images_file} and {labels_file} do not match (counts or labels)")
        parts.append((split, images, labels))
    return parts


# ---------------------------------------------------------------------------------------------------
# Facts and answers


def _bucket(value: float, buckets: list[tuple[float, str]]) -> str:
    return next(name for limit, name in buckets if value < limit)


def pixel_facts(pixels: np.ndarray) -> dict:
    """Tone, texture, shape and fill of a 28x28 uint8 photo (bright item on a black background)."""
    item = pixels > INK
    if not item.any():  # a blank photo: report what is there, a dark, plain, empty frame
        return {"tone": TONES[0][1], "texture": TEXTURES[0][1], "shape": SHAPES[1][1], "fill": FILLS[0][1]}
    rows, cols = np.nonzero(item.any(axis=1))[0], np.nonzero(item.any(axis=0))[0]
    aspect = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
    # texture inside the item only: erode the item mask by 2 pixels so the outline's edge is not counted
    inner = item.copy()
    for _ in range(2):
        inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
    spread = float(pixels[inner].std()) if inner.sum() > 5 else 0.0
    return {
        "tone": _bucket(float(pixels[item].mean()), TONES),
        "texture": _bucket(spread, TEXTURES),
        "shape": _bucket(aspect, SHAPES),
        "fill": _bucket(float(item.mean()), FILLS),
    }


def photo_fields(pixels: np.ndarray, label: int) -> dict:
    """All the facts of one photo: what extract_fields returns for its answer."""
    name, _, group = ITEMS[label]
    return {"item": name, "group": group, **pixel_facts(pixels)}


def fashion_answer(fields: dict, opening: int = 0, body: int = 0) -> str:
    """The answer text (about 35 words) stating `fields` with the chosen templates."""
    phrase = _ITEM_PHRASE[fields["item"]]
    return OPENINGS[opening].format(item=phrase, group=fields["group"]) + " " + BODIES[body].format(**fields)


def pair_fields(left: dict, right: dict) -> dict:
    """The facts of a pair picture from its two photos' facts: what extract_pair_fields returns."""
    return {side: {k: facts[k] for k in PAIR_FACTS} for side, facts in zip(PAIR_SIDES, (left, right))}


def pair_answer(fields: dict, opening: int = 0, sentences: tuple[int, int] = (0, 0)) -> str:
    """The answer text (about 40 words) for a pair picture: an opening, then one sentence per side."""
    parts = [PAIR_OPENINGS[opening]]
    for side, template in zip(PAIR_SIDES, sentences):
        facts = fields[side]
        parts.append(
            PAIR_SIDE_SENTENCES[template].format(**dict(facts, item=_ITEM_PHRASE[facts["item"]], side=side))
        )
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------------
# Building the dataset


def sample_photos(labels_by_split: dict[str, np.ndarray], n: int, seed: int) -> list[tuple[str, int]]:
    """n (split, index) pairs, as even across the ten labels as n allows, fixed by the seed."""
    pool: list[list[tuple[str, int]]] = [[] for _ in ITEMS]
    for split, labels in labels_by_split.items():
        for index, label in enumerate(labels.tolist()):
            pool[label].append((split, index))
    total = sum(len(p) for p in pool)
    if n > total:
        raise PicovlmError(f"asked for {n} photos, but Fashion-MNIST has {total}: use --n {total} or less")
    rng = random.Random(f"picovlm-fashion/{seed}")
    per_label = [n // len(ITEMS) + (1 if k < n % len(ITEMS) else 0) for k in range(len(ITEMS))]
    chosen = [pick for label, count in enumerate(per_label) for pick in rng.sample(pool[label], count)]
    rng.shuffle(chosen)  # mixed labels in row order, so a capped read still sees every label
    return chosen


def _png(image: Image.Image, image_size: int, mirror: bool) -> bytes:
    """`image` as RGB PNG bytes (RGB: what the rest of the pipeline expects), mirrored and resized."""
    image = image.convert("RGB")
    if mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if image_size and image_size != image.width:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def pair_picture(left: np.ndarray, right: np.ndarray) -> Image.Image:
    """Two 28x28 photos side by side on black, at the 112-pixel design size (PAIR_CANVAS)."""
    canvas = Image.new("L", (PAIR_CANVAS, PAIR_CANVAS))
    top = (PAIR_CANVAS - PAIR_PHOTO) // 2
    for x, pixels in ((0, left), (PAIR_PHOTO + PAIR_GAP, right)):
        photo = Image.fromarray(pixels, "L").resize((PAIR_PHOTO, PAIR_PHOTO), Image.Resampling.BICUBIC)
        canvas.paste(photo, (x, top))
    return canvas


def make_fashion_rows(
    n: int = 3000,
    seed: int = 0,
    image_size: int = 112,
    mirror: bool = False,
    source_dir: str | Path | None = None,
    pairs: bool = False,
) -> list[dict]:
    """The rows of make_fashion_dataset as plain dicts (images as PNG bytes). pairs: n pictures of two
    photos each (2n distinct photos, each used once)."""
    parts = {split: (images, labels) for split, images, labels in load_fashion_mnist(source_dir)}
    labels_by_split = {split: labels for split, (_, labels) in parts.items()}
    total = sum(len(labels) for labels in labels_by_split.values())
    if pairs and 2 * n > total:  # say it in pictures: --n counts pictures here
        raise PicovlmError(
            f"asked for {n} pictures of two photos ({2 * n} photos), but Fashion-MNIST has {total}: "
            f"use --n {total // 2} or less"
        )
    picks = sample_photos(labels_by_split, 2 * n if pairs else n, seed)
    if pairs:
        rng = random.Random(f"picovlm-fashion-pairs-templates/{seed}")
        return [
            row
            for k in range(n)
            for row in _pair_rows(parts, picks[2 * k : 2 * k + 2], image_size, mirror, rng)
        ]
    rng = random.Random(f"picovlm-fashion-templates/{seed}")
    rows = []
    for split, index in picks:
        images, labels = parts[split]
        pixels = images[index]
        fields = photo_fields(pixels, int(labels[index]))
        group = f"{FASHION_SOURCE}/{split}/{index:05d}"  # one photo = one group, mirrored copy included
        for mirrored in [False, True] if mirror else [False]:
            answer = fashion_answer(fields, rng.randrange(len(OPENINGS)), rng.randrange(len(BODIES)))
            file_name = f"{split}-{index:05d}{'-mirrored' if mirrored else ''}.png"
            picture = _png(Image.fromarray(pixels, "L"), image_size, mirrored)
            rows.append(
                picture_row(picture, file_name, FASHION_QUESTION, answer, FASHION_SOURCE, fields, group)
            )
    return rows


def _pair_rows(parts: dict, photos: list[tuple[str, int]], image_size: int, mirror: bool, rng) -> list[dict]:
    """The row of one pair picture (two when mirrored: the whole picture flipped, so the sides swap)."""
    pixels = [parts[split][0][index] for split, index in photos]
    facts = [photo_fields(p, int(parts[split][1][index])) for p, (split, index) in zip(pixels, photos)]
    name = "+".join(f"{split}-{index:05d}" for split, index in photos)
    picture = pair_picture(*pixels)
    rows = []
    for mirrored in [False, True] if mirror else [False]:
        fields = pair_fields(*(facts[::-1] if mirrored else facts))  # mirroring keeps each photo's facts
        answer = pair_answer(fields, rng.randrange(len(PAIR_OPENINGS)),
                             (rng.randrange(len(PAIR_SIDE_SENTENCES)), rng.randrange(len(PAIR_SIDE_SENTENCES))))  # fmt: skip
        file_name = f"{name}{'-mirrored' if mirrored else ''}.png"
        group = f"{PAIR_SOURCE}/{name}"  # both photos appear in this picture only
        png = _png(picture, image_size, mirrored)
        rows.append(picture_row(png, file_name, FASHION_QUESTION, answer, PAIR_SOURCE, fields, group))
    return rows


def make_fashion_dataset(n: int = 3000, **options):
    """n Fashion-MNIST photos (2n rows with mirror) as a datasets.Dataset in the cauldron schema, plus the
    `fields` and `group` columns; options are make_fashion_rows's (seed, image_size: side of the stored
    PNG, 0 keeps the native 28 pixels or the 112-pixel design size of a pair picture; mirror; source_dir;
    pairs: n pictures of two photos side by side)."""
    return rows_to_dataset(make_fashion_rows(n, **options))


def write_fashion(
    out_dir: str | Path,
    n: int = 3000,
    seed: int = 0,
    image_size: int = 112,
    mirror: bool = False,
    split: bool = True,
    source_dir: str | Path | None = None,
    overwrite: bool = False,
    pairs: bool = False,
) -> Path:
    """Build the set and save it to out_dir: a DatasetDict (train/validation/test, grouped so mirrored
    copies stay together) when split, else a single Dataset. Returns out_dir."""
    from picovlm.data.split import save_rows

    rows = make_fashion_rows(n, seed, image_size, mirror, source_dir, pairs)
    return save_rows(rows, out_dir, seed=seed, split=split, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------------
# Parsing an answer back into facts (for field accuracy in evaluation)


def _alternatives(values: list[str]) -> str:
    return "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))


_PHRASE_TO_ITEM = {phrase.lower(): name for name, phrase in _ITEM_PHRASE.items()}
_ITEM_RE = re.compile(rf"(?:photo of|shows) ({_alternatives(list(_PHRASE_TO_ITEM))})\b", re.IGNORECASE)
_GROUP_RE = re.compile(rf"a kind of ({_alternatives(sorted({g for _, _, g in ITEMS}))})", re.IGNORECASE)
_TONE_RE = re.compile(rf"\b({_alternatives([t for _, t in TONES])})\b", re.IGNORECASE)
_TEXTURE_RE = re.compile(rf"\blooks ({_alternatives([t for _, t in TEXTURES])})\b", re.IGNORECASE)
_SHAPE_RE = re.compile(rf"\bis ({_alternatives([s for _, s in SHAPES])})\b", re.IGNORECASE)
_FILL_RE = re.compile(
    rf"\bfills ({_alternatives([f for _, f in FILLS])}) of (?:the frame|its photo)", re.IGNORECASE
)


def _first(pattern: re.Pattern, text: str) -> str | None:
    """The pattern's first group in text, lower-cased; None when it does not occur."""
    match = pattern.search(text)
    return match.group(1).lower() if match else None


def extract_fields(answer_text: str) -> dict:
    """Parse an answer (from a model or from this module) into {"item", "group", "tone", "texture",
    "shape", "fill"}; a fact the answer does not state in a known phrasing is None."""
    phrase = _first(_ITEM_RE, answer_text)
    return {
        "item": _PHRASE_TO_ITEM[phrase] if phrase else None,
        "group": _first(_GROUP_RE, answer_text),
        "tone": _first(_TONE_RE, answer_text),
        "texture": _first(_TEXTURE_RE, answer_text),
        "shape": _first(_SHAPE_RE, answer_text),
        "fill": _first(_FILL_RE, answer_text),
    }


_SIDE_RE = re.compile(r"\bOn the (left|right)\b", re.IGNORECASE)
_PAIR_ITEM_RE = re.compile(
    rf"On the (?:left|right) (?:is|there is) ({_alternatives(list(_PHRASE_TO_ITEM))})\b", re.IGNORECASE
)


def extract_pair_fields(answer_text: str) -> dict:
    """Parse a pair picture's answer into {"left": {item, tone, texture, fill}, "right": {...}}: each
    side's facts are read from its own sentence ("On the left ..." up to "On the right", or the end);
    the first sentence about a side counts, a fact not stated in a known phrasing is None."""
    fields = {side: dict.fromkeys(PAIR_FACTS) for side in PAIR_SIDES}
    marks = list(_SIDE_RE.finditer(answer_text))
    seen = set()
    for k, mark in enumerate(marks):
        side = mark.group(1).lower()
        if side in seen:
            continue
        seen.add(side)
        sentence = answer_text[mark.start() : marks[k + 1].start() if k + 1 < len(marks) else None]
        phrase = _first(_PAIR_ITEM_RE, sentence)
        fields[side] = {
            "item": _PHRASE_TO_ITEM[phrase] if phrase else None,
            "tone": _first(_TONE_RE, sentence),
            "texture": _first(_TEXTURE_RE, sentence),
            "fill": _first(_FILL_RE, sentence),
        }
    return fields


def write_fashion_pairs(out_dir: str | Path, n: int = 3000, **options) -> Path:
    """write_fashion with pairs=True: n pictures of two photos side by side."""
    return write_fashion(out_dir, n, pairs=True, **options)


# The real-image sets, by the name the CLI takes: name -> (writer, install line). Every writer takes
# (out_dir, n, seed, image_size, split, overwrite).
REAL_SETS = {
    FASHION_SOURCE: (write_fashion, FASHION_MNIST_INSTALL),
    PAIR_SOURCE: (write_fashion_pairs, FASHION_MNIST_INSTALL),
    EMOJI_SOURCE: (write_emoji, EMOJI_INSTALL),
    CJK_SOURCE: (write_cjk, CJK_INSTALL),
    **GAME_SETS,  # wesnoth, freeciv-flags (picovlm/data/realsets_games.py)
    FREEORION_SOURCE: (write_freeorion, FREEORION_INSTALL),
}
# How evaluation reads each set's answers back into facts, by the `source` its rows carry.
register_fact_parser(FASHION_SOURCE, extract_fields)
register_fact_parser(PAIR_SOURCE, extract_pair_fields)
