import hashlib
import io
import random

import numpy as np
from datasets import Dataset, List
from datasets import Image as ImageFeature
from PIL import Image

from picovlm.data.cauldron import cauldron_features
from picovlm.data.split import find_leaks, split_dataset


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def paraphrased_dataset(originals: int = 60, copies: int = 10) -> Dataset:
    """Ten-fold paraphrasing: each original's variants share its group id; some images are shared
    across different originals too (so groups must be joined through images)."""
    rows = {"images": [], "texts": [], "group": []}
    for original in range(originals):
        for copy in range(copies):
            image = png(original if copy else original // 2 * 2 + 1000)  # copy 0: shared image
            rows["images"].append([{"bytes": image, "path": None}])
            source = "lab" if original % 3 else "web"
            rows["texts"].append(
                [{"user": "q", "assistant": f"answer {original} variant {copy}", "source": source}]
            )
            rows["group"].append(f"orig-{original}")
    return Dataset.from_dict(rows, features=cauldron_features(group=True))


def keys_of(split) -> tuple[set, set]:
    """Image content hashes and group ids of a split, computed independently of the library."""
    raw = split.cast_column("images", List(ImageFeature(decode=False)))
    images = {hashlib.sha256(image["bytes"]).hexdigest() for row in raw["images"] for image in row}
    return images, set(split["group"])


def test_grouped_split_has_no_leaks():
    dataset = paraphrased_dataset()
    splits = split_dataset(dataset, seed=3)
    assert sum(len(s) for s in splits.values()) == len(dataset)
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            images_a, groups_a = keys_of(splits[a])
            images_b, groups_b = keys_of(splits[b])
            assert not images_a & images_b and not groups_a & groups_b
    assert find_leaks(splits) == {"image": 0, "group": 0}
    assert 0.7 < len(splits["train"]) / len(dataset) < 0.9 and len(splits["test"]) > 0


def test_a_random_row_split_would_leak():
    """Why grouping matters: the same rows split at random put paraphrases on both sides."""
    dataset = paraphrased_dataset()
    order = list(range(len(dataset)))
    random.Random(0).shuffle(order)
    cut = int(0.8 * len(order))
    naive = {"train": dataset.select(order[:cut]), "test": dataset.select(order[cut:])}
    assert find_leaks(naive)["group"] > 0


def test_split_is_deterministic_and_stratifies_by_source():
    dataset = paraphrased_dataset()
    first, second = split_dataset(dataset, seed=1), split_dataset(dataset, seed=1)
    assert first["test"]["texts"] == second["test"]["texts"]
    assert split_dataset(dataset, seed=2)["test"]["texts"] != first["test"]["texts"]
    stratified = split_dataset(dataset, seed=1, stratify_by_source=True)
    for name in ("train", "validation", "test"):
        assert {row[0]["source"] for row in stratified[name]["texts"]} == {"lab", "web"}


def test_demo_split_keeps_identical_scenes_together(demo_dir):
    from picovlm.data.cauldron import load_cauldron_splits

    splits = load_cauldron_splits(demo_dir)
    assert set(splits) == {"train", "validation", "test"}
    assert find_leaks(splits) == {"image": 0, "group": 0}
