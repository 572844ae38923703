"""`picovlm data mix`: combine datasets with a ratio or a cap per input, keeping provenance.

The blog's recipe: 3k original items, grown to 30k with paraphrases, plus ~200k localized_narratives
rows. Mixing must not load 230k images into memory: every input stays Arrow-backed (memory-mapped
from disk) and rows are picked with `select` on index lists, then joined with
`concatenate_datasets`; nothing is decoded and only the final save writes bytes.

Each input is "PATH" (all rows), "PATH:cap=N" (at most N rows, sampled by seed) or "PATH:ratio=R"
(R is this input's share of the mix; with --total T it takes round(R*T) rows, repeating rows when an
input is smaller than its share, else the largest mix that needs no repeats is built).
Provenance: `texts[].source` is kept (filled with the input's name where empty), and `group` ids are
prefixed with the input's name so groups of different inputs never merge by accident.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from picovlm.data.cauldron import cauldron_features, load_cauldron
from picovlm.errors import DataError


@dataclass
class MixInput:
    path: str
    cap: int | None = None
    ratio: float | None = None
    name: str | None = None
    split: str | None = None

    @classmethod
    def parse(cls, spec: str) -> MixInput:
        """Parse "PATH[:cap=N][:ratio=R][:name=NAME][:split=S]"."""
        path, *options = spec.split(":")
        mix_input = cls(path=path)
        for option in options:
            key, _, value = option.partition("=")
            try:
                if key == "cap":
                    mix_input.cap = int(value)
                elif key == "ratio":
                    mix_input.ratio = float(value)
                elif key in ("name", "split"):
                    setattr(mix_input, key, value)
                else:
                    raise ValueError(f"unknown option {key!r}")
            except ValueError as err:
                raise DataError(
                    f"mix input {spec!r}: {err}; expected PATH[:cap=N][:ratio=R][:name=NAME][:split=S]"
                ) from err
        return mix_input


def _rows_per_input(sizes: list[int], inputs: list[MixInput], total: int | None) -> list[int]:
    if any(i.ratio is not None for i in inputs):
        if not all(i.ratio is not None for i in inputs):
            raise DataError("give a ratio to every mix input, or to none (use caps instead)")
        weights = [i.ratio / sum(j.ratio for j in inputs) for i in inputs]
        if total is None:  # the largest mix in which no input repeats a row
            total = int(min(size / weight for size, weight in zip(sizes, weights) if weight > 0))
        return [round(weight * total) for weight in weights]
    return [min(size, i.cap) if i.cap is not None else size for size, i in zip(sizes, inputs)]


def mix_datasets(inputs: list[MixInput], seed: int = 0, total: int | None = None, shuffle: bool = True):
    """Return one Arrow-backed Dataset mixing `inputs` (see the module doc for caps and ratios)."""
    from datasets import Value, concatenate_datasets

    if not inputs:
        raise DataError("nothing to mix: give at least one input")
    loaded = [load_cauldron(i.path, split=i.split) for i in inputs]
    counts = _rows_per_input([len(d) for d in loaded], inputs, total)
    # Relabel each whole input (only its text columns are read), join them, then pick rows with one
    # `select` over global indices: no input's Arrow files are copied or re-indexed on disk.
    rng = random.Random(seed)
    parts, picked, offset = [], [], 0
    for mix_input, dataset, count in zip(inputs, loaded, counts):
        name = mix_input.name or Path(mix_input.path).name
        if dataset._indices is not None:  # e.g. a capped selection: make its rows contiguous first
            dataset = dataset.flatten_indices(keep_in_memory=True)
        groups = dataset["group"] if "group" in dataset.column_names else [""] * len(dataset)
        texts = [[{**t, "source": t.get("source") or name} for t in row] for row in dataset["texts"]]
        part = dataset.select_columns(["images"])
        part = part.add_column("texts", texts, feature=cauldron_features()["texts"])
        part = part.add_column("group", [f"{name}:{g}" if g else "" for g in groups], feature=Value("string"))
        parts.append(part)
        order = list(range(len(dataset)))
        rng.shuffle(order)
        picked += [offset + order[k % len(order)] for k in range(count)] if order else []
        offset += len(dataset)
    if shuffle:
        rng.shuffle(picked)
    # keep_in_memory: the index list is small, and must not be cached next to an input's files
    return concatenate_datasets(parts).select(picked, keep_in_memory=True)
