"""Leakage between splits: held-out rows whose image or answer also sits in the training split.

A validation or test row whose picture the model trained on measures memory, not generalisation:
val loss falls with memorisation and eval scores rows it has seen. `train` runs this check before
its first step and `eval` reports it beside its scores (`picovlm data check` shows it per split).

What counts as shared:
  - an image with the same content: the same pixels (decoded RGB, so a re-saved PNG or a copy with
    other metadata matches) when the splits hold at most PIXEL_HASH_MAX_IMAGES rows together, else
    the same encoded bytes (decoding every image of a very large mix would take minutes);
  - an identical answer (case and spacing ignored; all assistant turns of the row together).

The rule: training refuses to start when more than LEAKAGE_THRESHOLD of a held-out split's rows share
an image with the training split, unless `train.allow_leakage=true`. Identical answers alone never
stop it, they are reported: in sets of facts (picovlm's own demo scenes and Fashion-MNIST) the same
sentence legitimately describes different pictures, so an answer shared with training is not by
itself a copied item. A row that shares its image *and* its answer is a copy, and the image rule
already counts it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from picovlm.data.cauldron import image_bytes, image_hash, iter_column_batches, split_names
from picovlm.data.check import squeeze_lower
from picovlm.errors import DataError

# Above this share of a held-out split's rows sharing an image with training, training refuses to start
# and eval's verdict names the leak. Small, not zero: one stray duplicate in a large set is tolerated
# (and reported), a leaky split never is (a split written without grouping shares far more).
LEAKAGE_THRESHOLD = 0.01
# Up to this many rows in the compared splits together, images are compared by decoded pixels
# (~0.4 ms an image for the demo's 224 px PNGs); beyond it by encoded bytes.
PIXEL_HASH_MAX_IMAGES = 20_000


@dataclass
class SplitOverlap:
    """How much of one held-out split also sits in the training split."""

    split: str
    train_split: str
    rows: int
    shared_image_rows: int
    shared_answer_rows: int
    shared_both_rows: int  # same image and same answer: a copied item
    compared_by: str  # "pixels" or "bytes"

    @property
    def shared_image_share(self) -> float:
        return self.shared_image_rows / max(1, self.rows)

    @property
    def shared_answer_share(self) -> float:
        return self.shared_answer_rows / max(1, self.rows)

    @property
    def leaks(self) -> bool:
        return self.shared_image_share > LEAKAGE_THRESHOLD

    def sentence(self) -> str:
        return (
            f"{self.split}: {self.shared_image_rows} of {self.rows} rows ({self.shared_image_share:.1%}) "
            f"share an image with {self.train_split!r} (compared by {self.compared_by}), "
            f"{self.shared_answer_rows} ({self.shared_answer_share:.1%}) an identical answer, "
            f"{self.shared_both_rows} both"
        )

    def metrics(self) -> dict[str, float]:
        """The numbers eval adds to its metrics."""
        return {
            "leakage_compared_rows": self.rows,
            "leakage_shared_image_rows": self.shared_image_rows,
            "leakage_shared_image_share": round(self.shared_image_share, 4),
            "leakage_shared_answer_rows": self.shared_answer_rows,
            "leakage_shared_answer_share": round(self.shared_answer_share, 4),
            "leakage_shared_both_rows": self.shared_both_rows,
        }


def _pixel_hash(data: bytes | None) -> str:
    """Hash of the decoded RGB pixels and size; an image that cannot be decoded falls back to its bytes."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data or b"")) as image:
            rgb = image.convert("RGB")
            return image_hash(f"{rgb.size}".encode() + rgb.tobytes())
    except Exception:  # a broken image is `data check`'s business; here it is compared by its bytes
        return image_hash(data)


def row_fingerprints(dataset, by_pixels: bool) -> list[tuple[frozenset[str], str]]:
    """(image content hashes, normalised answer) of every row, without decoding anything but images."""
    content_hash = _pixel_hash if by_pixels else image_hash
    rows = []
    for _, batch in iter_column_batches(dataset, ["images", "texts"]):
        for images, texts in zip(batch["images"], batch["texts"]):
            hashes = frozenset(content_hash(image_bytes(image)) for image in images or [])
            answer = " ".join(t.get("assistant") or "" for t in texts or [] if isinstance(t, dict))
            rows.append((hashes, squeeze_lower(answer)))
    return rows


def compares_by_pixels(*datasets) -> bool:
    return sum(len(d) for d in datasets) <= PIXEL_HASH_MAX_IMAGES


def split_overlap(
    train_rows: list[tuple[frozenset[str], str]],
    held_out,
    split: str,
    train_split: str = "train",
    by_pixels: bool = True,
) -> SplitOverlap:
    """Count the rows of `held_out` (a Dataset) that share an image or an answer with `train_rows`
    (row_fingerprints of the training split, computed with the same by_pixels)."""
    train_images = set().union(*(hashes for hashes, _ in train_rows))
    train_answers = {answer for _, answer in train_rows if answer}
    image_rows = answer_rows = both_rows = 0
    held_rows = row_fingerprints(held_out, by_pixels)
    for hashes, answer in held_rows:
        shares_image = not hashes.isdisjoint(train_images)
        shares_answer = bool(answer) and answer in train_answers
        image_rows += shares_image
        answer_rows += shares_answer
        both_rows += shares_image and shares_answer
    return SplitOverlap(
        split,
        train_split,
        len(held_rows),
        image_rows,
        answer_rows,
        both_rows,
        "pixels" if by_pixels else "bytes",
    )


def overlap_with_training(train, held_out, split: str, train_split: str = "train") -> SplitOverlap:
    """The overlap of one held-out Dataset (e.g. the rows eval scores) with the training Dataset."""
    by_pixels = compares_by_pixels(train, held_out)
    return split_overlap(row_fingerprints(train, by_pixels), held_out, split, train_split, by_pixels)


def splits_overlap(splits: dict, train_split: str = "train") -> list[SplitOverlap]:
    """The overlap of every other split of `splits` ({name: Dataset}) with its training split."""
    train = splits[train_split]
    others = {name: data for name, data in splits.items() if name != train_split}
    by_pixels = compares_by_pixels(train, *others.values())
    train_rows = row_fingerprints(train, by_pixels)
    return [split_overlap(train_rows, data, name, train_split, by_pixels) for name, data in others.items()]


def check_training_leakage(data_dir, train_ds, train_split: str = "train", allow: bool = False) -> list[str]:
    """Compare every other split of data_dir with the training split before training starts.

    Raises DataError (counts and the fix) when a split shares images with training above
    LEAKAGE_THRESHOLD, unless allow; returns notes for the run's summary otherwise.
    """
    from picovlm.data.cauldron import load_cauldron

    names = [name for name in split_names(data_dir) if name != train_split]
    splits = {train_split: train_ds, **{name: load_cauldron(data_dir, split=name) for name in names}}
    overlaps = [o for o in splits_overlap(splits, train_split) if o.shared_image_rows or o.shared_answer_rows]
    leaking = [o for o in overlaps if o.leaks]
    if leaking and not allow:
        joined = " ".join(f"{data_dir}:split={name}" for name in splits)
        raise DataError(
            f"{data_dir}: held-out rows share images with the training split {train_split!r}, so validation "
            "and test would score rows the model trains on:\n"
            + "\n".join(f"  {o.sentence()}" for o in leaking)
            + f"\nMore than {LEAKAGE_THRESHOLD:.0%} of a split is refused. Fix: join the splits and split "
            "them again so rows that share an image stay together:\n"
            f"  picovlm data mix {joined} --out DATA-all\n"
            "  picovlm data split DATA-all --out DATA-resplit\n"
            "then train with train.data_dir=DATA-resplit. To train anyway, pass train.allow_leakage=true."
        )
    notes = []
    for overlap in overlaps:
        accepted = " (allowed by train.allow_leakage)" if overlap.leaks else ""
        notes.append(f"leakage check: {overlap.sentence()}{accepted}")
    return notes
