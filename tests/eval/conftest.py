"""Fixtures for the evaluation tests: a tiny dataset of coloured squares and tiny models trained on it.

The dataset is small on purpose: one question, the answer names the square's colour, test images are
new drawings (other positions and sizes). Three models are trained for a few seconds each:
  * "grounded": trained on the true (image, answer) pairs: it must read the colour from the image;
  * "shuffled": trained with the images shuffled across rows: it cannot use them;
  * "collapsed": trained with every answer replaced by one fixed answer: it always says the same thing.
"""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 180),
    "black": (15, 15, 15),
}
QUESTION = "What colour is the square?"
FIXED_ANSWER = "The square is red and it is small."


def answer_for(colour: str) -> str:
    return f"The square is {colour}."


def draw_square(colour: str, rng: random.Random, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (250, 250, 250))
    side = rng.randint(size // 2, size - 4)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    ImageDraw.Draw(image).rectangle([x, y, x + side - 1, y + side - 1], fill=COLOURS[colour])
    return image


def make_rows(n: int, seed: int, avoid: list[dict] = ()) -> list[dict]:
    """n rows cycling through the colours; no picture is one of `avoid`'s (test rows drawn again where
    they would repeat a training picture: eval counts such rows as seen in training)."""
    rng = random.Random(seed)
    taken = {row["images"][0].tobytes() for row in avoid}
    rows = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        image = draw_square(colour, rng)
        while image.tobytes() in taken:
            image = draw_square(colour, rng)
        rows.append(
            {
                "images": [image],
                "texts": [{"user": QUESTION, "assistant": answer_for(colour), "source": "squares"}],
            }
        )
    return rows


@pytest.fixture(scope="session")
def squares_dir(tmp_path_factory):
    """A saved cauldron DatasetDict with train (120 rows) and test (24 rows, no training picture among them)."""
    from datasets import Dataset, DatasetDict

    from picovlm.data.cauldron import cauldron_features, save_cauldron

    def to_dataset(rows):
        return Dataset.from_dict(
            {"images": [r["images"] for r in rows], "texts": [r["texts"] for r in rows]},
            features=cauldron_features(),
        )

    out = tmp_path_factory.mktemp("data") / "squares"
    train = make_rows(120, 0)
    save_cauldron(DatasetDict(train=to_dataset(train), test=to_dataset(make_rows(24, 1, avoid=train))), out)
    return out


def train_tiny(rows: list[dict], steps: int = 150, seed: int = 0):
    """A few seconds of AdamW on a `tiny`-preset model with a tokenizer trained on the answers."""
    from picovlm.config import preset
    from picovlm.data.tokenizer import train_tokenizer
    from picovlm.model.vlm import VisionLanguageModel

    torch.manual_seed(seed)
    texts = [QUESTION, FIXED_ANSWER] + [answer_for(c) for c in COLOURS]
    tokenizer = train_tokenizer(texts * 5, vocab_size=300)
    model = VisionLanguageModel(preset("tiny"), tokenizer)
    examples = [model.processor.encode_example(row) for row in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        batch = rng.sample(examples, 32)
        width = max(len(e["input_ids"]) for e in batch)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in batch])
        mask = (
            torch.arange(width)[None] < torch.tensor([len(e["input_ids"]) for e in batch])[:, None]
        ).long()
        pixels = torch.cat([torch.from_numpy(e["pixel_values"]) for e in batch])
        loss = model(input_ids=input_ids, pixel_values=pixels, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{"grounded" | "shuffled" | "collapsed": saved model folder}."""
    torch.set_num_threads(1)
    rows = make_rows(120, 0)
    rng = random.Random(1)
    shuffled_images = [row["images"] for row in rows]
    rng.shuffle(shuffled_images)
    variants = {
        "grounded": rows,
        "shuffled": [{**row, "images": images} for row, images in zip(rows, shuffled_images)],
        "collapsed": [{**row, "texts": [{**row["texts"][0], "assistant": FIXED_ANSWER}]} for row in rows],
    }
    root = tmp_path_factory.mktemp("models")
    return {name: train_tiny(variant).save_pretrained(root / name) for name, variant in variants.items()}


@pytest.fixture
def square_rows():
    """make_rows(n, seed) -> n rows of coloured squares (decoded images), for tests that need rows."""
    return make_rows
