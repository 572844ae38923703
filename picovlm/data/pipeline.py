"""The training input pipeline: cauldron rows -> encoded samples -> batches, reproducibly.

    CauldronTorchDataset   a torch Dataset over one split; encodes each row with the Processor. A row
                           that fails (undecodable image, empty answer, ...) becomes None: the collate
                           function drops it and reports it in batch["skipped_rows"]; training goes on.
    ResumableSampler       the sample order for an epoch is a permutation fixed by (seed, epoch);
                           skip(k) starts mid-epoch at position k, for exact resume after a crash.
    group_by_length        reorders a permutation so each batch holds samples of similar length.
    make_dataloader        wires both to pad_collate or pack_collate, with worker processes.

Encoding a row (reading it from Arrow, decoding its PNG, tokenising the prompt) is the same every
epoch when no augmentation draws a fresh picture, so the dataset keeps what it encoded, up to
`cache_bytes` (its pictures as uint8), and later epochs read it back: 0.66 ms a sample of the
112 px suite, ~5-6 % of a training step (docs/training.md, "The sample cache").

The order depends only on (seed, epoch) and the position, never on num_workers: DataLoader returns
batches in sampler order whatever worker built them.

Length grouping: padding to the longest sample of a random batch wastes 6-10 % of the tokens on the
demo set. So the shuffled order is cut into mega-batches of 50 batches, each is sorted by length and
cut into batches, and the batches are shuffled: every batch holds neighbours in length (padding under
1 %), yet which samples meet and the batch order still change every epoch. The result is still one
flat sample order, so resume by sample position works unchanged.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from picovlm.data.collate import pack_collate, pad_collate
from picovlm.data.processor import normalise_pixels
from picovlm.errors import PicovlmError

# What a bad row may raise while it is decoded and encoded: our DataError, Pillow's errors on broken
# or huge images (OSError, SyntaxError, DecompressionBombError), and ValueError from odd values.
BAD_ROW_ERRORS = (PicovlmError, OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError)


class CauldronTorchDataset(torch.utils.data.Dataset):
    """A cauldron-schema datasets.Dataset (one split) as encoded samples for training."""

    def __init__(self, hf_dataset, processor, augment=None, seed: int = 0, facts=None, cache_bytes: int = 0):
        self.dataset = hf_dataset
        self.processor = processor
        # facts: a picovlm.train.facts.FactVocabulary; each sample then carries its row's fact classes
        # ("fact_labels") for the auxiliary fact loss.
        self.facts = facts
        # augment(image, rng) -> image, applied to every image of a row each time it is read
        # (train.image_augment: picovlm.data.image_jitter). Visit v of row i draws from the generator
        # seeded (seed, i, v), so a run is repeatable; a resumed run starts counting visits again.
        self.augment = augment
        self.seed = seed
        self._visits: dict[int, int] = {}
        self.bad_rows = 0  # counted in this process only; with workers, read batch["skipped_rows"]
        self.bad_row_examples: list[tuple[int, str]] = []  # the first few (row, reason), for a log line
        self._lengths: list[int] | None = None
        # Encoded samples by row (pixels as uint8: a quarter of the floats), read back on later visits;
        # an augmented picture differs every visit, so nothing is kept then.
        self._cache: dict[int, dict] = {}
        self.cache_room = cache_bytes if augment is None else 0

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def cached_rows(self) -> int:
        return len(self._cache)

    def __getitem__(self, index: int) -> dict | None:
        sample = self._cache.get(int(index))
        if sample is None:
            sample = self._encode(int(index))
            if sample is None:
                return None
            if (size := sample_bytes(sample)) <= self.cache_room:
                self._cache[int(index)] = sample
                self.cache_room -= size
        return {**sample, "pixel_values": normalise_pixels(sample["pixel_values"])}

    def _encode(self, index: int) -> dict | None:
        try:
            row = self.dataset[index]
            if self.augment is not None and row.get("images"):
                visit = self._visits.get(index, 0)
                self._visits[index] = visit + 1
                rng = np.random.default_rng([self.seed, index, visit])
                row = {**row, "images": [self.augment(image, rng) for image in row["images"]]}
            sample = self.processor.encode_example(row, pixel_bytes=True)
            if self.facts is not None:
                sample["fact_labels"] = self.facts.encode(row.get("fields"))
            return sample
        except BAD_ROW_ERRORS as err:
            self.bad_rows += 1
            if len(self.bad_row_examples) < 20:
                self.bad_row_examples.append((index, f"{type(err).__name__}: {err}"))
            return None

    def lengths(self) -> list[int]:
        """Token length of every row's encoding, from its texts and image count alone (no image is
        decoded, ~0.1 s per 1000 rows). A row that cannot be encoded gets length 0 (it is skipped later)."""
        if self._lengths is None:
            self._lengths = encoded_lengths(self.dataset, self.processor)
        return self._lengths


def sample_bytes(sample: dict) -> int:
    """About what an encoded sample holds in memory: its pixel bytes and its token lists (8 bytes an id)."""
    return int(sample["pixel_values"].nbytes) + 8 * (len(sample["input_ids"]) + len(sample["labels"]))


def encoded_lengths(hf_dataset, processor, chunk: int = 1000) -> list[int]:
    """len(processor.encode_example(row)["input_ids"]) for every row, without decoding images."""
    import pyarrow.compute as pc

    has_images = "images" in hf_dataset.column_names
    arrow_view = hf_dataset.select_columns(["images", "texts"] if has_images else ["texts"]).with_format(
        "arrow"
    )
    lengths = []
    for start in range(0, len(hf_dataset), chunk):
        table = arrow_view[start : start + chunk]
        texts = table.column("texts").to_pylist()
        if has_images:
            image_counts = pc.list_value_length(table.column("images")).fill_null(0).to_pylist()
        else:
            image_counts = [0] * len(texts)
        for turns, n_images in zip(texts, image_counts):
            try:
                pairs = [(turn["user"], turn["assistant"]) for turn in turns]
                if not pairs or not all(isinstance(a, str) and a.strip() for _, a in pairs):
                    raise ValueError("no answer")
                lengths.append(len(processor.encode_turns(pairs, n_images)[0]))
            except BAD_ROW_ERRORS + (KeyError,):
                lengths.append(0)
    return lengths


def group_by_length(
    order: list[int], lengths: list[int], batch_size: int, generator: torch.Generator, mega_batch: int = 50
) -> list[int]:
    """Reorder `order` so that consecutive runs of batch_size samples have similar lengths.

    The tail that does not fill a batch is set aside first (random samples, as the order is shuffled)
    and stays last, so every run of batch_size from the start is a whole batch. The rest is cut into
    mega-batches of mega_batch batches; each is sorted by length (longest first, ties in order) and cut
    into batches; then the batches of the whole epoch are shuffled with `generator`.
    """
    full = len(order) - len(order) % batch_size
    body, tail = order[:full], order[full:]
    span = batch_size * mega_batch
    batches = []
    for start in range(0, full, span):
        chunk = sorted(body[start : start + span], key=lambda index: -lengths[index])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return [index for batch in shuffled for index in batch] + tail


class ResumableSampler(torch.utils.data.Sampler):
    """Indices of one epoch in an order fixed by (seed, epoch), optionally starting mid-epoch.

    With world_size > 1 each rank takes every world_size-th index of the same permutation (the tail
    that does not divide evenly is dropped so all ranks run the same number of steps).

    lengths (one per sample) turn on length grouping (see group_by_length) in units of batch_size x
    world_size, batch_size being the samples one rank takes per optimizer step: after the interleaved
    sharding each rank's share of a step, and the shares all ranks run at that step, hold samples of
    similar length (consecutive in length order, so each micro-batch of the share is tight too).
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: list[int] | None = None,
        batch_size: int = 1,
    ):
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.lengths = lengths
        self.batch_size = batch_size
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
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.batch_size * self.world_size, generator)
        per_rank = self.num_samples // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def __iter__(self):
        return iter(self.epoch_order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples // self.world_size - self.start)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode images; BLAS threads would only fight the trainer
    # Ctrl-C reaches the whole process group and schedulers often signal it too: the trainer decides
    # when to stop (after its step, with a checkpoint, picovlm/train/interrupt.py), and a worker that
    # died first would fail that step. Workers end with the trainer, as they always do.
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def stop_workers(loader: torch.utils.data.DataLoader | None) -> None:
    """End a DataLoader's persistent worker processes now. They ignore SIGTERM (_worker_init), so a
    worker still alive when the interpreter exits keeps multiprocessing's exit handler, which
    terminates and then joins them, waiting forever (seen after a resumed run with the fact loss)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()  # what the iterator's __del__ does; not left to the collector
    if loader is not None:
        loader._iterator = None


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
    group_by_length: bool = False,
    accumulation_steps: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` in a reproducible order. Access the sampler as loader.sampler to
    call set_epoch(e) each epoch and skip(k) to resume at sample k of that epoch.

    packing: pack_collate with rows of at most max_length tokens (default: processor.max_length);
    batch_size then counts samples per batch, packed into fewer rows.
    group_by_length: batches of samples of similar length (less padding). It groups whole optimizer
    steps (batch_size x accumulation_steps x world_size samples), so a step's samples are the same
    whether it runs as one big batch, as accumulated micro-batches or on several ranks. skip(k)
    resumes the exact sample order at any k; at a multiple of the step (as the trainer resumes) the
    batches match too.
    """
    sampler = ResumableSampler(
        len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
        batch_size=batch_size * accumulation_steps, lengths=dataset.lengths() if group_by_length else None,
    )  # fmt: skip
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
