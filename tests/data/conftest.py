"""Shared fixtures for the data tests: a tiny demo set, a folder of real image files, a bad dataset."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from picovlm.data.cauldron import cauldron_features
from picovlm.data.scenes import make_demo_dataset, write_demo

QUESTION = "Describe the image."
LONG_ANSWER = (
    "A wooden table stands in a bright kitchen with a bowl of green apples, a glass of water, a folded "
    "napkin and a small vase of yellow flowers next to the open window on a sunny morning."
)


def noise_png(seed: int, size: int = 48, mode: str = "RGB") -> bytes:
    """A random-pixel image: every seed gives different bytes, and it does not compress to nothing."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def demo_dataset():
    return make_demo_dataset(n=120, seed=0, image_size=64)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """A demo set on disk split into train/validation/test."""
    return write_demo(tmp_path_factory.mktemp("demo") / "demo", n=120, seed=0, image_size=64, split=True)


def make_bad_rows() -> tuple[list[dict], dict[str, set[int]]]:
    """Rows with every kind of problem `data check` knows, and the rows where each must be found."""

    def row(images, answer=LONG_ANSWER, user=QUESTION, source="fixture"):
        return {"images": [{"bytes": b, "path": None} for b in images],
                "texts": [{"user": user, "assistant": answer, "source": source}]}  # fmt: skip

    good = noise_png(0)
    near_answer = LONG_ANSWER.replace("yellow flowers", "red flowers")
    bomb = encoded(Image.new("1", (12000, 8000)), "PNG")  # 96 M pixels > Pillow's 89 M limit
    rows = [
        row([good]),  # 0 the original of the duplicates below
        row([], answer="Answer zero."),  # 1 no image
        row([b""], answer="Answer one."),  # 2 zero-size file
        row([b"this is not an image"], answer="Answer two."),  # 3 unreadable
        row([noise_png(4)[:-300]], answer="Answer three."),  # 4 truncated
        row([bomb], answer="Answer four."),  # 5 decompression bomb
        row([noise_png(6, mode="P")], answer="Answer five."),  # 6 palette
        row([noise_png(7, mode="RGBA")], answer="Answer six."),  # 7 RGBA
        row(
            [encoded(Image.new("CMYK", (32, 32), (10, 200, 30, 0)), "JPEG")], answer="Answer seven."
        ),  # 8 CMYK
        row(
            [encoded(Image.fromarray(np.full((16, 16), 40000, np.uint16)), "PNG")], answer="Answer eight."
        ),  # 9 I;16
        {"images": [{"bytes": noise_png(10), "path": None}], "texts": []},  # 10 no turns
        row([noise_png(11)], answer="   "),  # 11 empty answer
        row([noise_png(12)], user=None, answer="Answer twelve."),  # 12 missing question
        row([noise_png(13)], answer=" ".join(["word"] * 60)),  # 13 answer too long (60 > 50)
        row([good], answer="A different answer about the same picture."),  # 14 duplicate image of 0
        row([noise_png(15)]),  # 15 duplicate answer of 0
        row([noise_png(16)], answer=near_answer),  # 16 near-duplicate answer of 0
        row([good]),  # 17 exact copy of row 0
    ]
    expected = {
        "missing_image": {1},
        "zero_size_image": {2},
        "unreadable_image": {3},
        "truncated_image": {4},
        "decompression_bomb": {5},
        "non_rgb_image": {6, 7, 8, 9},
        "missing_text": {10, 12},
        "empty_text": {11},
        "answer_too_long": {13},
        "duplicate_image": {14, 17},
        "duplicate_answer": {15, 17},
        "near_duplicate_answer": {16},
        "duplicate_row": {17},
    }
    return rows, expected


@pytest.fixture(scope="session")
def bad_dataset():
    from datasets import Dataset

    rows, expected = make_bad_rows()
    columns = {key: [r[key] for r in rows] for key in ("images", "texts")}
    return Dataset.from_dict(columns, features=cauldron_features()), expected


@pytest.fixture()
def image_folder(tmp_path):
    """Real PNG and JPEG files plus a CSV and a JSONL table, each with two bad rows (lines 4 and 5)."""
    images = tmp_path / "images"
    images.mkdir()
    colours = {
        "red.png": (255, 0, 0),
        "green.jpg": (0, 255, 0),
        "blue.png": (0, 0, 255),
        "gray.jpeg": (90, 90, 90),
    }
    for name, colour in colours.items():
        Image.new("RGB", (40, 30), colour).save(images / name)
    csv_path = tmp_path / "items.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "question", "answer", "group"])
        writer.writerow(["red.png", "What colour is it?", "It is a red rectangle.", "g1"])  # line 2
        writer.writerow(["green.jpg", "", "A green rectangle fills the picture.", "g1"])  # line 3
        writer.writerow(["missing.png", "", "This image does not exist.", ""])  # line 4: missing file
        writer.writerow(["blue.png", "", "   ", ""])  # line 5: empty answer
        writer.writerow(["blue.png;gray.jpeg", "", "A blue picture and a gray picture.", "g2"])  # line 6
    jsonl_path = tmp_path / "items.jsonl"
    lines = [
        {"image": "red.png", "answer": "Red."},
        {"images": ["blue.png", "gray.jpeg"],
         "texts": [{"user": "First?", "assistant": "Blue."}, {"user": "Second?", "assistant": "Gray."}]},
        {"image": "red.png", "answer": "Red again.", "group": "g9"},
        {"image": "nope.jpg", "answer": "Missing."},  # line 4
        {"image": "green.jpg", "answer": ""},  # line 5
    ]  # fmt: skip
    jsonl_path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return images, csv_path, jsonl_path


@pytest.fixture(scope="module")
def processor(demo_dataset):
    """A processor for 32 px images with 4 image tokens and a BPE trained on the demo answers."""
    from picovlm.data.processor import Processor
    from picovlm.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([t[0]["assistant"] for t in demo_dataset["texts"]], vocab_size=400)
    return Processor(tokenizer, image_size=32, image_token_length=4, max_length=96)
