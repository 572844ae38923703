"""Batches from encoded samples: pad to the longest item, or pack several samples per sequence.

An encoded sample (from Processor.encode_example) is
    {"input_ids": list[int], "labels": list[int] (-100 = not supervised),
     "pixel_values": float32 array (n_images, 3, H, W)}
or None for a row that could not be encoded (dropped here and counted in "skipped_rows").

pad_collate: rows padded on the right to the longest sample of the batch (not a fixed length), so a
batch of short answers costs short sequences.
    input_ids (B, T) long, attention_mask (B, T) long (1 = real token), labels (B, T) long (-100 on
    padding), pixel_values (N_images, 3, H, W) float32 in row order.

pack_collate: greedy first-fit: each sample goes into the first row with room for it (at most
max_length tokens), so B samples become fewer, fuller rows. Adds
    position_ids (B, T): 0, 1, 2, ... restarting for every sample (RoPE sees each sample from 0),
    segment_ids (B, T): 1..k for the k samples of a row, 0 on padding.
The model must build a block-diagonal causal mask from segment_ids (attend only within the same
segment), unlike nanoVLM's packing, which lets packed samples attend to each other. pixel_values are
ordered as the image placeholder tokens appear in the flattened batch (row-major), so the model can
fill placeholders in order. No label crosses a sample boundary: each sample starts with its prompt,
whose labels are -100.

Both also return "n_samples" (samples in the batch) and "skipped_rows" (None samples dropped), so a
trainer can count consumed samples exactly even with worker processes.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = -100


def _pixel_values(samples: list[dict]) -> torch.Tensor:
    arrays = [np.asarray(s["pixel_values"], dtype=np.float32) for s in samples]
    if not arrays:
        return torch.zeros((0, 3, 1, 1), dtype=torch.float32)
    return torch.from_numpy(np.concatenate(arrays, axis=0))


def pad_collate(samples: list[dict | None], pad_token_id: int) -> dict[str, torch.Tensor | int]:
    """Right-pad a list of encoded samples to the longest one (see the module doc)."""
    kept = [s for s in samples if s is not None]
    batch_size = len(kept)
    longest = max((len(s["input_ids"]) for s in kept), default=0)
    input_ids = torch.full((batch_size, longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
    labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
    for row, sample in enumerate(kept):
        length = len(sample["input_ids"])
        input_ids[row, :length] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
        labels[row, :length] = torch.as_tensor(sample["labels"], dtype=torch.long)
        attention_mask[row, :length] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": _pixel_values(kept),
        "n_samples": batch_size,
        "skipped_rows": len(samples) - batch_size,
    }
    if kept and "fact_labels" in kept[0]:  # the auxiliary fact loss (picovlm/train/facts.py)
        batch["fact_labels"] = torch.tensor([s["fact_labels"] for s in kept], dtype=torch.long)
        counts = [len(s["pixel_values"]) for s in kept]
        starts = np.cumsum([0, *counts[:-1]])
        batch["first_image"] = torch.tensor(
            [int(a) if n else -1 for a, n in zip(starts, counts)], dtype=torch.long
        )
    return batch


def first_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """Greedy first-fit bin packing: sample indices per row, each row's total length <= max_length."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(max_length - length)
    return rows


def pack_collate(
    samples: list[dict | None], pad_token_id: int, max_length: int
) -> dict[str, torch.Tensor | int]:
    """Pack encoded samples into rows of at most max_length tokens (see the module doc).

    A sample longer than max_length cannot be packed whole; it is dropped and counted as skipped.
    """
    kept = [s for s in samples if s is not None and len(s["input_ids"]) <= max_length]
    rows = first_fit([len(s["input_ids"]) for s in kept], max_length)
    longest = max((sum(len(kept[i]["input_ids"]) for i in row) for row in rows), default=0)
    shape = (len(rows), longest)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment_ids = torch.zeros(shape, dtype=torch.long)
    ordered: list[dict] = []  # samples in flattened (row-major) order, for pixel_values
    for row, members in enumerate(rows):
        cursor = 0
        for segment, index in enumerate(members, start=1):
            sample = kept[index]
            length = len(sample["input_ids"])
            span = slice(cursor, cursor + length)
            input_ids[row, span] = torch.as_tensor(sample["input_ids"], dtype=torch.long)
            labels[row, span] = torch.as_tensor(sample["labels"], dtype=torch.long)
            position_ids[row, span] = torch.arange(length)
            segment_ids[row, span] = segment
            cursor += length
            ordered.append(sample)
    return {
        "input_ids": input_ids,
        "attention_mask": (segment_ids > 0).long(),
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
        "pixel_values": _pixel_values(ordered),
        "n_samples": len(kept),
        "skipped_rows": len(samples) - len(kept),
    }


def block_diagonal_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, T, T) bool mask, True where query t may attend to key s: same
    non-zero segment and s <= t. A reference for the model; padding rows attend to nothing."""
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, :, None]
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    return same_segment & real & causal[None]
