"""The leakage check between splits: pictures shared by content, identical answers, the 1% rule."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from picovlm.data import leakage
from picovlm.data.cauldron import cauldron_features
from picovlm.data.leakage import check_training_leakage, splits_overlap
from picovlm.errors import DataError


def png(seed: int, comment: str | None = None) -> bytes:
    from PIL import PngImagePlugin

    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    if comment:
        info.add_text("comment", comment)  # other bytes, the same pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def rows(pictures: list[bytes], answers: list[str]):
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "images": [[{"bytes": p, "path": None}] for p in pictures],
            "texts": [[{"user": "What is it?", "assistant": a, "source": "t"}] for a in answers],
        },
        features=cauldron_features(),
    )


TRAIN = rows([png(i) for i in range(10)], [f"Train answer {i}." for i in range(10)])


def test_pictures_are_compared_by_content_and_answers_by_words():
    held_out = rows(
        [png(0), png(1, comment="resaved"), png(100), png(101)],  # a copy, a re-encoded copy, two new
        ["Train answer 0.", "Something new.", "  train ANSWER 2. ", "Also new."],
    )
    (overlap,) = splits_overlap({"train": TRAIN, "validation": held_out})
    assert (overlap.split, overlap.rows, overlap.compared_by) == ("validation", 4, "pixels")
    assert (overlap.shared_image_rows, overlap.shared_answer_rows, overlap.shared_both_rows) == (2, 2, 1)
    assert overlap.leaks and overlap.metrics()["leakage_shared_image_share"] == 0.5
    assert overlap.sentence() == (
        "validation: 2 of 4 rows (50.0%) share an image with 'train' (compared by pixels), "
        "2 (50.0%) an identical answer, 1 both"
    )


def test_very_large_splits_are_compared_by_bytes(monkeypatch):
    monkeypatch.setattr(leakage, "PIXEL_HASH_MAX_IMAGES", 5)
    held_out = rows([png(0), png(1, comment="resaved")], ["a", "b"])
    (overlap,) = splits_overlap({"train": TRAIN, "test": held_out})
    assert overlap.compared_by == "bytes" and overlap.shared_image_rows == 1  # the re-encoded copy is missed


def save_splits(root, **splits):
    from datasets import DatasetDict

    DatasetDict(splits).save_to_disk(str(root))
    return root


def test_training_refuses_a_leaking_test_split_with_the_counts_and_the_fix(tmp_path):
    clean = rows([png(200 + i) for i in range(5)], [f"Val {i}." for i in range(5)])
    leaky = rows([png(3), png(4), png(300)], ["x", "y", "z"])
    data = save_splits(tmp_path / "d", train=TRAIN, validation=clean, test=leaky)
    with pytest.raises(DataError) as refused:
        check_training_leakage(data, TRAIN)
    message = str(refused.value)
    assert "test: 2 of 3 rows (66.7%) share an image with 'train'" in message
    assert "validation:" not in message  # the clean split is not blamed
    assert f"picovlm data mix {data}:split=train {data}:split=validation {data}:split=test --out" in message
    assert "picovlm data split DATA-all --out DATA-resplit" in message
    assert "train.allow_leakage=true" in message
    notes = check_training_leakage(data, TRAIN, allow=True)
    assert notes == [
        "leakage check: test: 2 of 3 rows (66.7%) share an image with 'train' (compared by pixels), "
        "0 (0.0%) an identical answer, 0 both (allowed by train.allow_leakage)"
    ]


def test_one_percent_is_tolerated_and_shared_answers_alone_never_refuse(tmp_path):
    # 1 of 100 validation rows is a copy: at the threshold, reported, not refused
    pictures = [png(0)] + [png(1000 + i) for i in range(99)]
    validation = rows(pictures, [f"Held out {i}." for i in range(100)])
    # every test answer is a training answer, about new pictures (a set of facts repeats its sentences)
    test = rows([png(500 + i) for i in range(4)], [f"Train answer {i}." for i in range(4)])
    data = save_splits(tmp_path / "d", train=TRAIN, validation=validation, test=test)
    notes = check_training_leakage(data, TRAIN)
    assert notes == [
        "leakage check: validation: 1 of 100 rows (1.0%) share an image with 'train' (compared by pixels), "
        "0 (0.0%) an identical answer, 0 both",
        "leakage check: test: 0 of 4 rows (0.0%) share an image with 'train' (compared by pixels), "
        "4 (100.0%) an identical answer, 0 both",
    ]
