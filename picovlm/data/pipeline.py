"""The training input pipeline: cauldron rows -> encoded samples -> batches, reproducibly.

    CauldronTorchDataset   a torch Dataset over one split; encodes each row with the Processor. A row
                           that fails (undecodable image, empty answer, ...) becomes None: the collate
                           function drops it and reports it in batch["skipped_rows"]; training goes on.
    ResumableSampler       the sample order for an epoch is a permutation fixed by (seed, epoch);
                           skip(k) starts mid-epoch at position k, for exact resume after a crash.
    make_dataloader        wires both to pad_collate or pack_collate, with worker processes.

The order depends only on (seed, epoch) and the position, never on num_workers: DataLoader returns
batches in sampler order whatever worker built them.
"""

from __future__ import annotations

import functools

import torch
from PIL import Image

from picovlm.data.collate import pack_collate, pad_collate
from picovlm.errors import PicovlmError

# What a bad row may raise while it is decoded and encoded: our DataError, Pillow's errors on broken
# or huge images (OSError, SyntaxError, DecompressionBombError), and ValueError from odd values.
BAD_ROW_ERRORS = (PicovlmError, OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError)


class CauldronTorchDataset(torch.utils.data.Dataset):
    """A cauldron-schema datasets.Dataset (one split) as encoded samples for training."""

    def __init__(self, hf_dataset, processor):
        self.dataset = hf_dataset
        self.processor = processor
        self.bad_rows = 0  # counted in this process only; with workers, read batch["skipped_rows"]
        self.bad_row_examples: list[tuple[int, str]] = []  # the first few (row, reason), for a log line

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        try:
            return self.processor.encode_example(self.dataset[int(index)])
        except BAD_ROW_ERRORS as err:
            self.bad_rows += 1
            if len(self.bad_row_examples) < 20:
                self.bad_row_examples.append((int(index), f"{type(err).__name__}: {err}"))
            return None


class ResumableSampler(torch.utils.data.Sampler):
    """Indices of one epoch in an order fixed by (seed, epoch), optionally starting mid-epoch.

    With world_size > 1 each rank takes every world_size-th index of the same permutation (the tail
    that does not divide evenly is dropped so all ranks run the same number of steps).
    """

    def __init__(
        self, num_samples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ):
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch's permutation; also rewinds to its beginning (call skip() after to resume)."""
        self.epoch = epoch
        self.start = 0

    def skip(self, samples: int) -> None:
        """Start this epoch at position `samples` (samples this rank already consumed)."""
        self.start = samples

    def epoch_order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        per_rank = self.num_samples // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def __iter__(self):
        return iter(self.epoch_order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples // self.world_size - self.start)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode images; BLAS threads would only fight the trainer


def make_dataloader(
    dataset: CauldronTorchDataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    packing: bool = False,
    max_length: int | None = None,
    epoch: int = 0,
    start_sample: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` in a reproducible order. Access the sampler as loader.sampler to
    call set_epoch(e) each epoch and skip(k) to resume at sample k of that epoch.

    packing: pack_collate with rows of at most max_length tokens (default: processor.max_length);
    batch_size then counts samples per batch, packed into fewer rows.
    """
    sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    sampler.set_epoch(epoch)
    sampler.skip(start_sample)
    pad_token_id = dataset.processor.pad_token_id
    if packing:
        collate = functools.partial(
            pack_collate, pad_token_id=pad_token_id, max_length=max_length or dataset.processor.max_length
        )
    else:
        collate = functools.partial(pad_collate, pad_token_id=pad_token_id)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=False,
    )
