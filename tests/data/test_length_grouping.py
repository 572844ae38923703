"""Length-grouped batching: less padding, the same determinism, resume and DDP sharding guarantees."""

from __future__ import annotations

import pytest

from picovlm.data.pipeline import CauldronTorchDataset, ResumableSampler, make_dataloader
from picovlm.data.scenes import make_demo_dataset

BATCH = 32


@pytest.fixture(scope="module")
def demo_set():
    """1280 demo rows (40 batches of 32) at 32 px, encoded as the default config does: 49 image
    placeholders per image and a byte-level BPE trained on the answers."""
    from picovlm.config import VLMConfig
    from picovlm.data.processor import Processor
    from picovlm.data.tokenizer import train_tokenizer

    rows = make_demo_dataset(n=40 * BATCH, seed=0, image_size=32)
    tokenizer = train_tokenizer([t[0]["assistant"] for t in rows["texts"]], vocab_size=1024)
    processor = Processor(tokenizer, image_size=32, image_token_length=VLMConfig().mp_image_token_length,
                          max_length=VLMConfig().lm_max_length)  # fmt: skip
    return CauldronTorchDataset(rows, processor)


def padding_share(loader) -> float:
    real = slots = 0
    for batch in loader:
        real += int(batch["attention_mask"].sum())
        slots += batch["attention_mask"].numel()
    return 1 - real / slots


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # a bad row on purpose
def test_lengths_match_the_real_encoding(demo_set, bad_dataset, processor_small):
    lengths = demo_set.lengths()
    assert len(lengths) == len(demo_set)
    assert all(lengths[i] == len(demo_set[i]["input_ids"]) for i in range(0, len(demo_set), 37))
    # rows that cannot be encoded (empty answer, missing texts) get 0; image-only problems keep a length
    dataset, _ = bad_dataset
    bad = CauldronTorchDataset(dataset, processor_small)
    for row, length in enumerate(bad.lengths()):
        encoded = bad[row]
        if encoded is not None:
            assert length == len(encoded["input_ids"]), row
    assert 0 in bad.lengths()


@pytest.fixture(scope="module")
def processor_small(demo_set):
    from picovlm.data.processor import Processor

    return Processor(demo_set.processor.tokenizer, image_size=32, image_token_length=4, max_length=128)


def test_grouping_cuts_padding_below_five_percent(demo_set):
    """Real batches of 32 (decoded images, real collate): grouped padding < 5 %, random 6-10 %."""
    grouped = padding_share(make_dataloader(demo_set, BATCH, seed=0, group_by_length=True, drop_last=True))
    plain = padding_share(make_dataloader(demo_set, BATCH, seed=0, group_by_length=False, drop_last=True))
    assert grouped < 0.05 < plain
    assert grouped < plain / 4


def test_order_is_deterministic_a_permutation_and_changes_by_epoch(demo_set):
    lengths = demo_set.lengths()
    n = len(lengths) - 7  # a tail that does not fill a batch
    sampler = lambda seed: ResumableSampler(n, seed=seed, lengths=lengths[:n], batch_size=BATCH)  # noqa: E731
    first = list(sampler(5))
    assert first == list(sampler(5)) and first != list(sampler(6))
    assert sorted(first) == list(range(n))  # every sample once per epoch, the tail included
    again = sampler(5)
    again.set_epoch(1)
    second = list(again)
    assert sorted(second) == list(range(n)) and second != first
    # the batches themselves are mixed anew each epoch, not only their order
    as_sets = lambda order: {frozenset(order[i : i + BATCH]) for i in range(0, n - n % BATCH, BATCH)}  # noqa: E731
    assert len(as_sets(first) & as_sets(second)) < len(as_sets(first)) // 4
    # batch lengths are spread over the epoch, not sorted (long batches are not all first)
    longest = [max(lengths[i] for i in first[k : k + BATCH]) for k in range(0, n - n % BATCH, BATCH)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_resume_gives_the_same_remaining_batches(demo_set):
    small = CauldronTorchDataset(demo_set.dataset.select(range(60)), demo_set.processor)
    full = _batches(small, 0)
    assert len(full) == 7  # 60 samples, batches of 8, the last 4 dropped
    assert _batches(small, 24) == full[3:]  # resume after three batches of 8
    sampler = ResumableSampler(60, seed=3, lengths=small.lengths(), batch_size=8)
    order = list(sampler)
    sampler.skip(21)  # mid-batch too: the remaining sample order is exact
    assert list(sampler) == order[21:] and len(sampler) == 39


def _batches(dataset, start: int, workers: int = 0) -> list[list[int]]:
    loader = make_dataloader(dataset, 8, seed=3, group_by_length=True, start_sample=start,
                             num_workers=workers, drop_last=True)  # fmt: skip
    return [batch["input_ids"].flatten().tolist() for batch in loader]


def test_ddp_shards_are_disjoint_and_grouped_in_step(demo_set):
    """Each rank's batch, and the batches all ranks run at the same step, hold similar lengths."""
    lengths = demo_set.lengths()

    def rank_orders(grouped: bool, world: int = 2) -> list[list[int]]:
        return [
            list(
                ResumableSampler(
                    len(lengths),
                    seed=1,
                    rank=r,
                    world_size=world,
                    batch_size=BATCH,
                    lengths=lengths if grouped else None,
                )
            )  # fmt: skip
            for r in range(world)
        ]

    def step_padding(orders: list[list[int]]) -> tuple[float, float]:
        """(padding share per rank batch, if all ranks' batches of a step were padded alike)"""
        real = rank_slots = step_slots = 0
        for k in range(0, len(orders[0]) // BATCH * BATCH, BATCH):
            batches = [[lengths[i] for i in order[k : k + BATCH]] for order in orders]
            real += sum(map(sum, batches))
            rank_slots += sum(BATCH * max(b) for b in batches)
            step_slots += len(batches) * BATCH * max(map(max, batches))
        return 1 - real / rank_slots, 1 - real / step_slots

    orders = rank_orders(grouped=True)
    assert not set(orders[0]) & set(orders[1])
    assert sorted(orders[0] + orders[1]) == list(range(len(lengths)))
    per_rank, per_step = step_padding(orders)
    plain_rank, plain_step = step_padding(rank_orders(grouped=False))
    assert per_rank < 0.05 < plain_rank and per_step < 0.05 < plain_step


def test_workers_do_not_change_grouped_batches(demo_set):
    small = CauldronTorchDataset(demo_set.dataset.select(range(40)), demo_set.processor)
    assert _batches(small, 0, workers=2) == _batches(small, 0)


def test_lengths_must_match_the_sample_count_and_sort_within_a_mega_batch():
    with pytest.raises(ValueError, match="lengths"):
        ResumableSampler(10, lengths=[1, 2, 3], batch_size=2)
    order = list(ResumableSampler(4, shuffle=False, lengths=[1, 5, 2, 9], batch_size=2))
    assert {frozenset(order[:2]), frozenset(order[2:])} == {frozenset({3, 1}), frozenset({2, 0})}


def test_a_step_holds_the_same_samples_however_it_is_split(demo_set):
    """1 x 8, 2 micro-batches x 4 and 2 ranks x 4 see the same samples at each optimizer step, so the
    trainer's trajectory does not depend on the split (tests/train checks the losses)."""
    small = CauldronTorchDataset(demo_set.dataset.select(range(64)), demo_set.processor)

    def steps(batch_size: int, accumulation: int, world: int) -> list[set[int]]:
        per_rank = [
            make_dataloader(
                small,
                batch_size,
                seed=2,
                group_by_length=True,
                accumulation_steps=accumulation,
                rank=r,
                world_size=world,
            ).sampler  # fmt: skip
            for r in range(world)
        ]
        orders = [list(sampler) for sampler in per_rank]
        take = batch_size * accumulation
        return [{i for order in orders for i in order[k : k + take]} for k in range(0, len(orders[0]), take)]

    big = steps(8, 1, 1)
    assert len(big) == 8 and steps(4, 2, 1) == big and steps(4, 1, 2) == big
    micro_grouped = steps(4, 1, 1)  # grouping by micro-batch alone would change what a step of 8 holds
    assert [a | b for a, b in zip(micro_grouped[::2], micro_grouped[1::2])] != big
