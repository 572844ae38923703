"""The real-image sets: Fashion-MNIST from Debian's dataset-fashion-mnist, one photo or two side by side
per picture, plus the IDX reader, the pixel facts and the builders on small IDX files written here (so
those parts are tested where the package is absent)."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from picovlm.cli import main
from picovlm.data.cauldron import load_cauldron_splits, validate_schema
from picovlm.data.realsets import (
    FASHION_FILES,
    FASHION_QUESTION,
    FASHION_SOURCE,
    ITEMS,
    PAIR_CANVAS,
    PAIR_GAP,
    PAIR_OPENINGS,
    PAIR_PHOTO,
    PAIR_SIDE_SENTENCES,
    PAIR_SOURCE,
    extract_fields,
    extract_pair_fields,
    fashion_answer,
    load_fashion_mnist,
    make_fashion_dataset,
    make_fashion_rows,
    pair_answer,
    photo_fields,
    pixel_facts,
    read_idx,
)
from picovlm.data.split import find_leaks, split_dataset
from picovlm.errors import DataError, PicovlmError
from picovlm.eval.facts import fact_parser_for
from picovlm.eval.metrics import field_accuracy

needs_package = pytest.mark.usefixtures("fashion_mnist")  # fails where Debian's package is missing


def write_idx(path, array: np.ndarray) -> None:
    """Write a gzipped IDX file (the dataset's format) of a uint8 array."""
    magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def rectangle(height: int, width: int, brightness: int) -> np.ndarray:
    """A 28x28 black photo with one centred bright rectangle: facts known in advance."""
    pixels = np.zeros((28, 28), np.uint8)
    top, left = (28 - height) // 2, (28 - width) // 2
    pixels[top : top + height, left : left + width] = brightness
    return pixels


@pytest.fixture()
def small_source(tmp_path):
    """A folder in the layout of the Debian package: 20 rectangle photos per file, labels 0..9 twice."""
    photos = np.stack([rectangle(8 + k % 12, 24 - k % 12, 60 + 9 * k) for k in range(20)])
    labels = np.arange(20, dtype=np.uint8) % 10
    for images_file, labels_file in FASHION_FILES.values():
        write_idx(tmp_path / images_file, photos)
        write_idx(tmp_path / labels_file, labels)
    return tmp_path


def test_pixel_facts_measure_the_photo():
    wide_light = pixel_facts(rectangle(8, 24, 220))  # 192 of 784 pixels: a quarter of the frame
    assert wide_light == {
        "tone": "light gray",
        "texture": "plain",
        "shape": "wider than tall",
        "fill": "a small part",
    }
    tall_dark = pixel_facts(rectangle(26, 16, 90))  # 416 pixels: about half
    assert tall_dark == {
        "tone": "dark gray",
        "texture": "plain",
        "shape": "taller than wide",
        "fill": "about half",
    }
    stripes = rectangle(24, 24, 200)
    stripes[:, ::2] = 60  # alternating columns: a strong pattern inside the item
    assert pixel_facts(stripes)["texture"] == "patterned"
    assert pixel_facts(stripes)["fill"] == "most"
    assert pixel_facts(np.zeros((28, 28), np.uint8))["fill"] == "a small part"  # blank photo, no crash


def test_every_answer_template_parses_back():
    fields = {"item": "ankle boot", "group": "footwear", "tone": "medium gray", "texture": "patterned",
              "shape": "about as wide as tall", "fill": "most"}  # fmt: skip
    for opening in range(2):
        for body in range(2):
            answer = fashion_answer(fields, opening, body)
            assert extract_fields(answer) == fields
            assert 10 <= len(answer.split()) <= 50
    # "a shirt" must not be read out of "a T-shirt", nor the reverse
    shirt = dict(fields, item="shirt", group="upper-body clothing")
    assert extract_fields(fashion_answer(shirt))["item"] == "shirt"
    assert extract_fields(fashion_answer(dict(shirt, item="t-shirt")))["item"] == "t-shirt"
    partial = extract_fields("The picture shows a bag. Something else entirely.")
    assert partial == {
        "item": "bag",
        "group": None,
        "tone": None,
        "texture": None,
        "shape": None,
        "fill": None,
    }


def test_builder_reads_a_source_folder(small_source):
    rows = make_fashion_rows(n=10, seed=0, image_size=0, source_dir=small_source)
    labels = Counter(json.loads(row["fields"])["item"] for row in rows)
    assert labels == Counter(name for name, _, _ in ITEMS)  # one per label: balanced
    for row in rows:
        split, index = row["group"].split("/")[1:]
        source = load_fashion_mnist(small_source)[0 if split == "train" else 1][1][int(index)]
        image = np.array(Image.open(io.BytesIO(row["images"][0]["bytes"])))
        assert image.shape == (28, 28, 3) and (image[..., 0] == source).all()  # native size, same pixels
        assert json.loads(row["fields"]) == extract_fields(row["texts"][0]["assistant"])


def test_missing_or_broken_source_names_the_fix(small_source):
    with pytest.raises(PicovlmError, match="has 40"):
        make_fashion_rows(n=41, source_dir=small_source)  # 20 train + 20 test photos
    with pytest.raises(PicovlmError, match="42 photos.*use --n 20 or less"):
        make_fashion_rows(n=21, source_dir=small_source, pairs=True)  # --n counts pictures of two
    with pytest.raises(PicovlmError, match="apt-get install dataset-fashion-mnist"):
        make_fashion_rows(n=5, source_dir=small_source / "nowhere")
    (small_source / FASHION_FILES["t10k"][1]).unlink()
    with pytest.raises(PicovlmError, match="t10k-labels-idx1-ubyte.gz"):
        make_fashion_rows(n=5, source_dir=small_source)
    bad = small_source / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x01" * 10))
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad, 2051)
    with pytest.raises(DataError, match="magic number 2049"):
        read_idx(bad, 2049)


@needs_package
def test_fashion_set_is_deterministic_valid_and_factual():
    dataset = make_fashion_dataset(n=200, seed=0, image_size=32)
    validate_schema(dataset)
    assert make_fashion_dataset(n=200, seed=0, image_size=32)["images"] == dataset["images"]
    assert make_fashion_dataset(n=200, seed=1, image_size=32)["group"] != dataset["group"]
    assert len(set(dataset["group"])) == 200  # 200 distinct source photos
    assert Counter(json.loads(f)["item"] for f in dataset["fields"]) == {name: 20 for name, _, _ in ITEMS}
    for row in dataset:
        turn = row["texts"][0]
        assert (turn["user"], turn["source"]) == (FASHION_QUESTION, FASHION_SOURCE)
        assert 10 <= len(turn["assistant"].split()) <= 50
        assert extract_fields(turn["assistant"]) == json.loads(row["fields"])
        assert row["images"][0].size == (32, 32) and row["images"][0].mode == "RGB"
    # the pixel facts are not all one value: each one says something about the photo
    for key in ("tone", "texture", "shape", "fill"):
        assert len({json.loads(f)[key] for f in dataset["fields"]}) >= 2, key


@needs_package
def test_mirrored_copies_share_a_group_and_a_split():
    dataset = make_fashion_dataset(n=100, seed=3, image_size=0, mirror=True)
    members = defaultdict(list)
    for row in dataset:
        members[row["group"]].append(row)
    assert len(dataset) == 200 and len(members) == 100
    for pair in members.values():
        original, mirrored = (np.array(row["images"][0]) for row in pair)
        assert (mirrored == original[:, ::-1]).all()
        assert pair[0]["fields"] == pair[1]["fields"]
    splits = split_dataset(dataset, seed=0)
    assert find_leaks(splits) == {"image": 0, "group": 0}
    assert sum(len(s) for s in splits.values()) == 200 and min(len(s) for s in splits.values()) > 0


@needs_package
def test_realset_cli_writes_a_split_dataset(tmp_path, capsys):
    out = tmp_path / "fashion"
    assert main(["realset", "fashion-mnist", "--out", str(out), "--n", "60", "--image-size", "24"]) == 0
    assert "wrote 60 rows" in capsys.readouterr().out
    splits = load_cauldron_splits(out)
    assert sorted(splits) == ["test", "train", "validation"] and sum(len(s) for s in splits.values()) == 60
    assert main(["realset", "fashion-mnist", "--out", str(out), "--n", "60"]) == 1  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fashion-mnist", "emoji", "freeorion"])
def test_realset_cli_refuses_n_below_one_before_reading_anything(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["realset", name, "--out", str(out), "--n", "0", "--source-dir", str(tmp_path / "none")]) == 1
    assert "--n must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()


# --- Pairs: two photos side by side ----------------------------------------------------------------

BOOT = {"item": "ankle boot", "tone": "medium gray", "texture": "patterned", "fill": "most"}
TROUSERS = {"item": "trousers", "tone": "dark gray", "texture": "plain", "fill": "a small part"}


def test_every_pair_template_parses_back_side_by_side():
    fields = {"left": TROUSERS, "right": BOOT}
    for opening in range(len(PAIR_OPENINGS)):
        for left in range(len(PAIR_SIDE_SENTENCES)):
            for right in range(len(PAIR_SIDE_SENTENCES)):
                answer = pair_answer(fields, opening, (left, right))
                assert extract_pair_fields(answer) == fields
                assert 10 <= len(answer.split()) <= 50  # the longest item and fill phrases: 50 words
    # each side's facts come from its own sentence, whatever the order the sentences come in
    left, right = pair_answer({"left": BOOT, "right": TROUSERS}).split(" On the ")[1:]
    assert extract_pair_fields(f"On the {right} On the {left}") == {"left": BOOT, "right": TROUSERS}
    # a side not described, or a fact in an unknown phrasing, is None: it counts as wrong, not as missing
    partial = extract_pair_fields("Two photos. On the left is a shirt that glows.")
    assert partial == {
        "left": {"item": "shirt", "tone": None, "texture": None, "fill": None},
        "right": {"item": None, "tone": None, "texture": None, "fill": None},
    }
    # field accuracy compares side by side: swapping the sides gets wrong whatever the two differ in
    swapped = pair_answer({"left": BOOT, "right": TROUSERS})
    accuracy = field_accuracy([swapped], [pair_answer(fields)], extract_pair_fields)
    assert accuracy["all"] == 0.0 and accuracy["left.item"] == 0.0
    assert (
        field_accuracy([pair_answer(fields, 1, (1, 0))], [pair_answer(fields)], extract_pair_fields)["all"]
        == 1.0
    )


def test_pair_builder_places_each_photo_on_its_side(small_source):
    rows = make_fashion_rows(n=10, seed=0, image_size=0, source_dir=small_source, pairs=True, mirror=True)
    assert len(rows) == 20  # 10 pictures, each with its mirrored copy
    photos = [name for row in rows[::2] for name in row["images"][0]["path"][:-4].split("+")]
    assert len(photos) == len(set(photos)) == 20  # 20 photos, each in one picture only
    sources = {split: images for split, images, _ in load_fashion_mnist(small_source)}
    labels = {split: labels for split, _, labels in load_fashion_mnist(small_source)}
    top = (PAIR_CANVAS - PAIR_PHOTO) // 2
    for row, mirrored in zip(rows, rows[1:] + rows[:1]):
        if row["images"][0]["path"].endswith("-mirrored.png"):
            continue
        image = np.array(Image.open(io.BytesIO(row["images"][0]["bytes"])))[..., 0]
        assert image.shape == (PAIR_CANVAS, PAIR_CANVAS)  # image_size 0 keeps the design size
        fields = json.loads(row["fields"])
        for side, part in zip(("left", "right"), row["images"][0]["path"][:-4].split("+")):
            split, index = part.split("-")
            pixels = sources[split][int(index)]
            x = 0 if side == "left" else PAIR_PHOTO + PAIR_GAP
            photo = image[top : top + PAIR_PHOTO, x : x + PAIR_PHOTO]
            expected = np.array(
                Image.fromarray(pixels).resize((PAIR_PHOTO, PAIR_PHOTO), Image.Resampling.BICUBIC)
            )
            assert (photo == expected).all(), side
            facts = photo_fields(pixels, int(labels[split][int(index)]))
            assert fields[side] == {k: facts[k] for k in ("item", "tone", "texture", "fill")}
        assert extract_pair_fields(row["texts"][0]["assistant"]) == fields
        assert image[:top].max() == 0 and image[:, PAIR_PHOTO : PAIR_PHOTO + PAIR_GAP].max() == 0  # black
        # the mirrored copy: the whole picture flipped, so the sides and their facts swap
        assert mirrored["group"] == row["group"] and mirrored["images"][0]["path"].endswith("-mirrored.png")
        flipped = np.array(Image.open(io.BytesIO(mirrored["images"][0]["bytes"])))[..., 0]
        assert (flipped == image[:, ::-1]).all()
        assert json.loads(mirrored["fields"]) == {"left": fields["right"], "right": fields["left"]}


@needs_package
def test_pair_set_is_factual_and_its_pictures_are_told_apart(tmp_path, capsys):
    out = tmp_path / "pairs"
    assert main(["realset", PAIR_SOURCE, "--out", str(out), "--n", "300", "--image-size", "64"]) == 0
    assert "wrote 300 rows of fashion-mnist-pairs" in capsys.readouterr().out
    splits = load_cauldron_splits(out)
    assert find_leaks(splits) == {"image": 0, "group": 0}
    rows = [row for split in splits.values() for row in split]
    assert fact_parser_for(splits["test"]) is extract_pair_fields
    for row in rows:
        turn = row["texts"][0]
        assert (turn["user"], turn["source"]) == (FASHION_QUESTION, PAIR_SOURCE)
        assert extract_pair_fields(turn["assistant"]) == json.loads(row["fields"])
        assert row["images"][0].size == (64, 64)
    # what the set is for: nearly every picture has its own facts, so distinct answers are reachable
    assert len({row["fields"] for row in rows}) >= 0.9 * len(rows)
    assert Counter(json.loads(row["fields"])["left"]["item"] for row in rows).most_common(1)[0][1] < 60
