"""The built-in demo set: procedurally drawn scenes of coloured shapes with one factual answer each.

It is the project's default data, so a newcomer trains end to end without downloading anything. Each
scene is drawn from a small grammar of facts:

    background colour, then 1-3 objects, each with a shape, a colour, a size and a cell of a 3x3 grid

and described by a regular answer of 10-50 words, for example

    "The image shows two shapes on a white background. A large red circle is at the top left.
     A small blue triangle is at the center."

Everything is deterministic by (seed, row index), so the same call gives the same bytes on every
machine. The scene facts are also stored as JSON in the top-level `fields` column, and
`extract_fields(answer)` parses an answer back into the same facts, so evaluation can score the facts
a model got right, not just its word overlap. Rows with identical facts share a `group` id, so a
grouped split keeps every held-out scene unseen: the test set measures generalisation to new
combinations, not recall of drawn pictures.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

from picovlm.config import DEFAULT_QUESTION
from picovlm.data.cauldron import picture_row
from picovlm.eval.facts import register_fact_parser

DEMO_QUESTION = DEFAULT_QUESTION
DEMO_SOURCE = "picovlm-demo"

SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 140, 20),
    "purple": (140, 60, 180),
    "pink": (245, 130, 190),
    "brown": (130, 80, 40),
}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ["circle", "square", "triangle", "diamond", "star"]
SIZES = {"small": 0.38, "large": 0.78}  # shape extent as a share of a grid cell
# The 3x3 grid, row-major: (name, column, row).
POSITIONS = [
    ("top left", 0, 0),
    ("top center", 1, 0),
    ("top right", 2, 0),
    ("middle left", 0, 1),
    ("center", 1, 1),
    ("middle right", 2, 1),
    ("bottom left", 0, 2),
    ("bottom center", 1, 2),
    ("bottom right", 2, 2),
]
COUNT_WORDS = {1: "one shape", 2: "two shapes", 3: "three shapes"}

# A few regular templates: enough variety to look like real answers, regular enough that a tiny model
# trained for minutes on a CPU can learn them. Each template must stay parseable by extract_fields.
OPENINGS = [
    "The image shows {count} on a {background} background.",
    "We can see {count} on a {background} background.",
    "This picture has {count} on a {background} background.",
]
OBJECT_SENTENCES = [
    "A {size} {colour} {shape} is at the {position}.",
    "At the {position} there is a {size} {colour} {shape}.",
]


def make_scene(seed: int, index: int) -> dict:
    """The facts of scene `index` for `seed`: background, objects (sorted in reading order), templates."""
    rng = random.Random(f"picovlm-demo/{seed}/{index}")
    count = rng.randint(1, 3)
    cells = sorted(rng.sample(range(len(POSITIONS)), count))  # reading order keeps answers predictable
    objects = [
        {
            "shape": rng.choice(SHAPES),
            "colour": rng.choice(list(SHAPE_COLOURS)),
            "size": rng.choice(list(SIZES)),
            "position": POSITIONS[cell][0],
        }
        for cell in cells
    ]
    return {
        "background": rng.choice(list(BACKGROUNDS)),
        "count": count,
        "objects": objects,
        "opening": rng.randrange(len(OPENINGS)),
        "sentence": rng.randrange(len(OBJECT_SENTENCES)),
        "jitter": [(rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)) for _ in objects],
    }


def scene_answer(scene: dict) -> str:
    """The answer text of a scene (10-50 words)."""
    parts = [
        OPENINGS[scene["opening"]].format(count=COUNT_WORDS[scene["count"]], background=scene["background"])
    ]
    parts += [OBJECT_SENTENCES[scene["sentence"]].format(**obj) for obj in scene["objects"]]
    return " ".join(parts)


def scene_fields(scene: dict) -> dict:
    """The facts a model should get right: what extract_fields returns for the answer."""
    return {"background": scene["background"], "count": scene["count"], "objects": scene["objects"]}


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    # a five-pointed star: alternate outer and inner radius every 36 degrees
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_scene(scene: dict, image_size: int = 224) -> Image.Image:
    """Draw a scene with Pillow as an RGB image of image_size x image_size pixels."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene["background"]])
    draw = ImageDraw.Draw(image)
    cell = image_size / 3
    cell_of = {name: (col, row) for name, col, row in POSITIONS}
    for obj, (jx, jy) in zip(scene["objects"], scene["jitter"]):
        col, row = cell_of[obj["position"]]
        r = cell * SIZES[obj["size"]] / 2
        cx, cy = (col + 0.5 + jx) * cell, (row + 0.5 + jy) * cell
        colour = SHAPE_COLOURS[obj["colour"]]
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif obj["shape"] == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=colour)
    return image


def make_demo_row(seed: int, index: int, image_size: int = 224) -> dict:
    """One cauldron-schema row: PNG bytes, the fixed question, the answer, facts and a group id."""
    scene = make_scene(seed, index)
    buffer = io.BytesIO()
    draw_scene(scene, image_size).save(buffer, format="PNG", compress_level=1)
    facts = json.dumps(scene_fields(scene), sort_keys=True)
    # identical facts = one group, so they never straddle splits
    name, answer = f"demo-{seed}-{index:06d}.png", scene_answer(scene)
    return picture_row(buffer.getvalue(), name, DEMO_QUESTION, answer, DEMO_SOURCE, facts, group=facts)


def _make_rows(args: tuple[int, int, int, int]) -> list[dict]:
    seed, start, stop, image_size = args
    return [make_demo_row(seed, i, image_size) for i in range(start, stop)]


def make_demo_dataset(n: int = 3000, seed: int = 0, image_size: int = 224, num_proc: int = 1):
    """Generate n demo rows as a datasets.Dataset in the cauldron schema (plus `fields`, `group`)."""
    from picovlm.data.cauldron import rows_to_dataset

    chunk = 500
    jobs = [(seed, start, min(start + chunk, n), image_size) for start in range(0, n, chunk)]
    if num_proc > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(num_proc) as pool:
            chunks = list(pool.map(_make_rows, jobs))
    else:
        chunks = [_make_rows(job) for job in jobs]
    return rows_to_dataset([row for rows in chunks for row in rows])


def write_demo(
    out_dir: str | Path,
    n: int = 3000,
    seed: int = 0,
    image_size: int = 224,
    split: bool = True,
    num_proc: int = 1,
    overwrite: bool = False,
) -> Path:
    """Generate the demo set and save it to out_dir: a DatasetDict (train/validation/test) when split,
    else a single Dataset. Returns out_dir."""
    from picovlm.data.cauldron import save_cauldron
    from picovlm.data.split import split_dataset

    dataset = make_demo_dataset(n, seed, image_size, num_proc=num_proc)
    to_save = split_dataset(dataset, seed=seed) if split else dataset
    return save_cauldron(to_save, out_dir, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------------
# Parsing an answer back into facts (for field accuracy in evaluation)

_WORD = {"one": 1, "two": 2, "three": 3}
_ALT = "|".join
_OPENING_RE = re.compile(
    rf"(?:The image shows|We can see|This picture has) (one|two|three) shapes? on an? "
    rf"({_ALT(BACKGROUNDS)}) background",
    re.IGNORECASE,
)
_OBJECT_PART = rf"(?P<size>{_ALT(SIZES)}) (?P<colour>{_ALT(SHAPE_COLOURS)}) (?P<shape>{_ALT(SHAPES)})"
_POSITION_PART = rf"(?P<position>{_ALT(sorted((p[0] for p in POSITIONS), key=len, reverse=True))})"
_OBJECT_RES = [
    re.compile(rf"An? {_OBJECT_PART} is at the {_POSITION_PART}", re.IGNORECASE),
    re.compile(rf"At the {_POSITION_PART} there is an? {_OBJECT_PART}", re.IGNORECASE),
]


def extract_fields(answer_text: str) -> dict:
    """Parse an answer (generated by a model or by this module) back into facts.

    Returns {"background": str | None, "count": int | None, "objects": [{"shape","colour","size",
    "position"}]} with objects in the order they appear. Sentences that match no template are ignored,
    so a partly wrong answer still yields the facts it does state.
    """
    fields: dict = {"background": None, "count": None, "objects": []}
    opening = _OPENING_RE.search(answer_text)
    if opening:
        fields["count"] = _WORD[opening.group(1).lower()]
        fields["background"] = opening.group(2).lower()
    found = []
    for sentence_re in _OBJECT_RES:
        for match in sentence_re.finditer(answer_text):
            obj = {key: match.group(key).lower() for key in ("shape", "colour", "size", "position")}
            found.append((match.start(), obj))
    fields["objects"] = [obj for _, obj in sorted(found, key=lambda item: item[0])]
    return fields


register_fact_parser(DEMO_SOURCE, extract_fields)  # evaluation reads the scenes' answers with it
