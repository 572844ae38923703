"""Split a dataset into train / validation / test without leakage.

A random row split lies as soon as rows are related: after ten-fold paraphrasing, each original item
has ten near-copies, and a row split puts some of them in validation while their siblings are in
train. The model has then seen the answer, validation loss falls with memorisation, and it says
nothing about new images. So rows are grouped first, and whole groups are assigned to splits:

- rows that share an image (same content hash) are one group;
- rows that share a `group` id (e.g. the paraphrases of one original, written by `augment`) are one group;
- both relations are joined transitively (union-find), so A-image-B-group-C all stay together.

Groups are shuffled by the seed and dealt to the split that is furthest below its target size,
optionally within each `source` separately (stratified), so every source is represented in each split.
"""

from __future__ import annotations

import random
from collections import defaultdict

from picovlm.data.cauldron import image_bytes, image_hash, iter_column_batches, row_sources
from picovlm.errors import DataError

SPLIT_NAMES = ("train", "validation", "test")


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving: find and union in near-constant time."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def row_keys(dataset, group_by_image: bool = True) -> tuple[list[list[str]], list[str]]:
    """For each row: the keys that tie it to other rows (image hashes, group id), and its source."""
    columns = (
        ["texts"]
        + (["images"] if group_by_image else [])
        + (["group"] if "group" in dataset.column_names else [])
    )
    keys: list[list[str]] = []
    sources: list[str] = []
    for _, batch in iter_column_batches(dataset, columns):
        for i in range(len(batch["texts"])):
            row = []
            if group_by_image:
                row += ["image:" + image_hash(image_bytes(img)) for img in batch["images"][i] or []]
            group = batch.get("group", [None] * (i + 1))[i]
            if group:
                row.append("group:" + group)
            keys.append(row)
            sources.append(row_sources(batch["texts"][i]))
    return keys, sources


def connected_groups(keys: list[list[str]]) -> list[int]:
    """Component id (the smallest row index in it) of every row, joining rows that share any key."""
    union_find = UnionFind(len(keys))
    first_row_with: dict[str, int] = {}
    for row, row_keys_ in enumerate(keys):
        for key in row_keys_:
            union_find.union(row, first_row_with.setdefault(key, row))
    return [union_find.find(row) for row in range(len(keys))]


def assign_splits(
    components: list[int],
    sources: list[str],
    fractions: tuple[float, float, float],
    seed: int,
    stratify_by_source: bool,
) -> list[list[int]]:
    """Row indices of each split: whole components, dealt to the split furthest below its target."""
    members: dict[int, list[int]] = defaultdict(list)
    for row, component in enumerate(components):
        members[component].append(row)
    strata: dict[str, list[int]] = defaultdict(list)
    for component in sorted(members):  # sorted: the order must not depend on dict history
        stratum = sources[component] if stratify_by_source else "all"
        strata[stratum].append(component)
    rng = random.Random(seed)
    split_rows: list[list[int]] = [[] for _ in SPLIT_NAMES]
    for stratum in sorted(strata):
        component_ids = strata[stratum]
        rng.shuffle(component_ids)
        total = sum(len(members[c]) for c in component_ids)
        targets = [fraction * total for fraction in fractions]
        filled = [0] * len(SPLIT_NAMES)
        for component in component_ids:
            # ties go to the earlier split (train): small datasets still fill train first
            best = max(range(len(SPLIT_NAMES)), key=lambda s: (targets[s] - filled[s], -s))
            split_rows[best].extend(members[component])
            filled[best] += len(members[component])
    return [sorted(rows) for rows in split_rows]


def split_dataset(
    dataset,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    stratify_by_source: bool = False,
    group_by_image: bool = True,
):
    """Split a Dataset into a DatasetDict with "train", "validation" and "test", grouped (see above)."""
    from datasets import DatasetDict

    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    keys, sources = row_keys(dataset, group_by_image)
    components = connected_groups(keys)
    split_rows = assign_splits(components, sources, tuple(fractions), seed, stratify_by_source)
    return DatasetDict({name: dataset.select(rows) for name, rows in zip(SPLIT_NAMES, split_rows)})


def save_rows(rows: list[dict], out_dir, seed: int = 0, split: bool = True, overwrite: bool = False):
    """Generated rows (dicts with images, texts, fields, group) saved to out_dir atomically: a grouped
    train/validation/test DatasetDict when split, else one Dataset. What every `picovlm realset` writer
    ends with; returns out_dir."""
    from picovlm.data.cauldron import rows_to_dataset, save_cauldron

    if not rows:
        raise DataError(f"no rows to write to {out_dir}: the source gave none (see the message above)")
    dataset = rows_to_dataset(rows)
    return save_cauldron(
        split_dataset(dataset, seed=seed) if split else dataset, out_dir, overwrite=overwrite
    )


def find_leaks(splits: dict) -> dict[str, int]:
    """Count image hashes and group ids that occur in more than one split (0 and 0 for a clean split)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for name, split in splits.items():
        keys, _ = row_keys(split)
        for row_keys_ in keys:
            for key in row_keys_:
                seen[key].add(name)
    leaks = {"image": 0, "group": 0}
    for key, names in seen.items():
        if len(names) > 1:
            leaks[key.split(":", 1)[0]] += 1
    return leaks
