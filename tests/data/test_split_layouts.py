"""Every split layout users have loads split by split: a Hub download must never be read as one split
(issue 15: a push_to_hub folder trained on all its rows and was validated on its own training rows)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from picovlm.data.cauldron import cauldron_features, find_splits, load_cauldron, split_names
from picovlm.errors import DataError
from tests.conftest import SPLIT_LAYOUTS

SIZES = {"train": 6, "validation": 3, "test": 2}


def png(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def make_split(name: str, n: int, seed: int):
    """n rows whose answers name their split and row ("validation row 2"), each with its own picture."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "images": [[{"bytes": png(seed + i), "path": None}] for i in range(n)],
            "texts": [
                [{"user": "Which row?", "assistant": f"{name} row {i}", "source": "t"}] for i in range(n)
            ],
        },
        features=cauldron_features(),
    )


@pytest.fixture(scope="module")
def tiny_splits():
    return {name: make_split(name, n, seed=100 * k) for k, (name, n) in enumerate(SIZES.items())}


def answers(dataset) -> list[str]:
    return [texts[0]["assistant"] for texts in dataset["texts"]]


@pytest.mark.parametrize("layout", SPLIT_LAYOUTS)
def test_each_split_of_every_layout_loads_on_its_own(tmp_path, tiny_splits, split_layout_writer, layout):
    root = split_layout_writer(tiny_splits, tmp_path / "ds", layout)
    assert split_names(root) == ["train", "validation", "test"]
    for name, split in tiny_splits.items():
        assert answers(load_cauldron(root, split=name)) == answers(split), name  # its rows, in order
    # the names `datasets` uses for the same splits mean them here too
    assert answers(load_cauldron(root, split="val")) == answers(tiny_splits["validation"])
    assert answers(load_cauldron(root, split="dev")) == answers(tiny_splits["validation"])
    # several splits and none chosen: an error, never all the rows together
    with pytest.raises(DataError, match="--split"):
        load_cauldron(root)
    with pytest.raises(
        DataError, match=r"has no split 'holdout'; it holds \['train', 'validation', 'test'\]"
    ):
        load_cauldron(root, split="holdout")


def test_hub_shards_of_one_split_are_read_together(tmp_path, tiny_splits, split_layout_writer):
    root = split_layout_writer(tiny_splits, tmp_path / "ds", "hub-data")
    how, paths = find_splits(root)["train"]
    assert how == "parquet"
    assert [p.name for p in paths] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert len(load_cauldron(root, split="train")) == SIZES["train"]


def test_files_that_name_no_split_are_one_train_split_or_an_error_beside_named_ones(tmp_path, tiny_splits):
    alone = tmp_path / "alone"
    alone.mkdir()
    tiny_splits["train"].to_parquet(str(alone / "part-a.parquet"))
    tiny_splits["test"].to_parquet(str(alone / "part-b.parquet"))
    assert split_names(alone) == ["train"]
    assert len(load_cauldron(alone)) == SIZES["train"] + SIZES["test"]
    with pytest.raises(DataError, match=r"no split 'test'; it holds \['train'\].*picovlm data split"):
        load_cauldron(alone, split="test")
    # beside files that name their split, an unnamed file would land in some split: refused, named
    tiny_splits["validation"].to_parquet(str(alone / "validation-00000-of-00001.parquet"))
    with pytest.raises(
        DataError,
        match=r"found the splits \['validation'\], but 2 file\(s\) name no split: part-a.parquet, part-b",
    ):
        load_cauldron(alone, split="validation")
