"""The real-image set: Fashion-MNIST from Debian's dataset-fashion-mnist, plus the IDX reader and the
pixel facts on small IDX files written here (so those parts are tested where the package is absent)."""

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
    FASHION_MNIST_DIR,
    FASHION_MNIST_INSTALL,
    FASHION_QUESTION,
    FASHION_SOURCE,
    ITEMS,
    extract_fields,
    fashion_answer,
    load_fashion_mnist,
    make_fashion_dataset,
    make_fashion_rows,
    pixel_facts,
    read_idx,
)
from picovlm.data.split import find_leaks, split_dataset
from picovlm.errors import DataError, PicovlmError

needs_package = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / FASHION_FILES["train"][0]).is_file(),
    reason=f"Fashion-MNIST is not installed: `{FASHION_MNIST_INSTALL}`",
)


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
