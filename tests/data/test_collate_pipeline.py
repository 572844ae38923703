import numpy as np
import pytest
import torch

from picovlm.data.collate import (
    IGNORE_INDEX,
    block_diagonal_causal_mask,
    first_fit,
    pack_collate,
    pad_collate,
)
from picovlm.data.pipeline import CauldronTorchDataset, ResumableSampler, make_dataloader, sample_bytes

PAD = 0


def sample(length: int, n_images: int, tag: int) -> dict:
    """A hand-made encoded sample: token ids tag*100+k, labels only on the second half, images filled
    with the tag so their order can be traced."""
    ids = [tag * 100 + k for k in range(length)]
    labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
    pixels = np.full((n_images, 3, 4, 4), float(tag), dtype=np.float32)
    return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


def test_pad_collate_pads_to_the_longest_item():
    batch = pad_collate([sample(5, 1, 1), None, sample(3, 2, 2)], pad_token_id=PAD)
    assert batch["input_ids"].shape == (2, 5) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][1].tolist() == [200, 201, 202, PAD, PAD]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 201, 202, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["pixel_values"].shape == (3, 3, 4, 4) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]
    assert batch["skipped_rows"] == 1 and batch["n_samples"] == 2


def test_first_fit_respects_capacity():
    rows = first_fit([6, 5, 4, 3, 2], max_length=10)
    assert rows == [[0, 2], [1, 3, 4]]


def test_pack_collate_positions_segments_and_pixel_order():
    samples = [sample(6, 1, 1), sample(5, 0, 2), sample(4, 2, 3), sample(3, 1, 4), sample(11, 1, 5)]
    batch = pack_collate(samples, pad_token_id=PAD, max_length=10)
    assert batch["skipped_rows"] == 1 and batch["n_samples"] == 4  # the 11-token sample cannot fit
    assert batch["input_ids"].shape == (2, 10)
    # row 0: samples 1 and 3 (6 + 4); row 1: samples 2 and 4 (5 + 3) then padding
    assert batch["input_ids"][0].tolist() == [100, 101, 102, 103, 104, 105, 300, 301, 302, 303]
    assert batch["input_ids"][1].tolist() == [200, 201, 202, 203, 204, 400, 401, 402, PAD, PAD]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 0]
    assert batch["segment_ids"][1].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1] * 8 + [0, 0]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 3 + [103, 104, 105] + [IGNORE_INDEX] * 2 + [
        302,
        303,
    ]
    # images in the order their samples appear, row-major: 1, 3, 3, (2 has none), 4
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 3.0, 3.0, 4.0]
    mask = block_diagonal_causal_mask(batch["segment_ids"])
    assert mask[1, 6, 5] and not mask[1, 6, 4] and not mask[1, 4, 6] and not mask[1, 8].any()


def test_labels_are_correct_token_by_token_for_a_real_row(demo_dataset, processor):
    row = demo_dataset[0]
    encoded = CauldronTorchDataset(demo_dataset, processor)[0]
    batch = pad_collate([encoded], pad_token_id=processor.pad_token_id)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tokenizer = processor.tokenizer
    answer_ids = tokenizer.encode(row["texts"][0]["assistant"]) + [tokenizer.im_end_id]
    supervised = [k for k, label in enumerate(labels) if label != IGNORE_INDEX]
    # exactly the answer and its closing <|im_end|> are supervised, as one contiguous span
    assert [ids[k] for k in supervised] == answer_ids and [labels[k] for k in supervised] == answer_ids
    assert supervised == list(range(supervised[0], supervised[0] + len(answer_ids)))
    prompt = processor.encode_prompt(row["texts"][0]["user"], n_images=1)
    assert ids[: supervised[0]] == prompt  # everything before the answer is the (unsupervised) prompt
    assert ids.count(processor.image_token_id) == 4
    assert tokenizer.decode(ids[supervised[0] : supervised[-1]]) == row["texts"][0]["assistant"]
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_bad_rows_are_skipped_and_counted(bad_dataset, processor):
    dataset, _ = bad_dataset
    torch_dataset = CauldronTorchDataset(dataset.select([0, 3, 4, 11, 15]), processor)
    loader = make_dataloader(torch_dataset, batch_size=5, shuffle=False)
    batch = next(iter(loader))
    assert batch["n_samples"] == 2 and batch["skipped_rows"] == 3  # unreadable, truncated, empty answer
    assert torch_dataset.bad_rows == 3 and len(torch_dataset.bad_row_examples) == 3


def test_encoded_samples_are_kept_up_to_the_cache_room_and_read_back_unchanged(demo_dataset, processor):
    rows = demo_dataset.select(range(6))
    fresh = CauldronTorchDataset(rows, processor)
    expected = [fresh[i] for i in range(6)]
    # the cache holds the pictures as bytes; room for the first three samples exactly
    kept = [processor.encode_example(rows[i], pixel_bytes=True) for i in range(3)]
    assert kept[0]["pixel_values"].dtype == np.uint8
    size, room = sample_bytes(kept[0]), sum(sample_bytes(s) for s in kept)
    cached = CauldronTorchDataset(rows, processor, cache_bytes=room)
    first = [cached[i] for i in range(6)]
    assert size > 0 and cached.cache_room < size <= room
    assert cached.cached_rows == 3
    # cut the dataset off from its rows: the kept samples come back as they were, the others cannot be read
    cached.dataset = None
    again = [cached[i] for i in range(6)]
    for want, got in zip(expected[:3] * 2, first[:3] + again[:3]):
        assert got["input_ids"] == want["input_ids"] and got["labels"] == want["labels"]
        assert np.array_equal(got["pixel_values"], want["pixel_values"])
    assert again[3:] == [None] * 3 and cached.bad_rows == 3


def test_an_augmented_dataset_keeps_nothing(demo_dataset, processor):
    jittered = CauldronTorchDataset(
        demo_dataset.select(range(2)), processor, augment=lambda image, rng: image, cache_bytes=2**30
    )
    jittered[0], jittered[0]
    assert jittered.cache_room == 0 and jittered.cached_rows == 0


def test_sampler_order_is_fixed_by_seed_and_epoch_and_resumes():
    sampler = ResumableSampler(50, seed=7)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(50)) and list(ResumableSampler(50, seed=7)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    sampler.set_epoch(0)
    sampler.skip(20)
    assert list(sampler) == epoch0[20:] and len(sampler) == 30
    ranks = [list(ResumableSampler(50, seed=7, rank=r, world_size=2)) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(epoch0) and not set(ranks[0]) & set(ranks[1])


@pytest.mark.parametrize("packing", [False, True])
def test_dataloader_is_deterministic_with_workers_and_resumes_exactly(demo_dataset, processor, packing):
    torch_dataset = CauldronTorchDataset(demo_dataset.select(range(24)), processor)

    def token_batches(num_workers: int, start: int = 0) -> list[list[int]]:
        loader = make_dataloader(torch_dataset, batch_size=4, seed=3, num_workers=num_workers,
                                 packing=packing, start_sample=start)  # fmt: skip
        return [batch["input_ids"].flatten().tolist() for batch in loader]

    single = token_batches(0)
    assert len(single) == 6
    assert token_batches(2) == single
    assert token_batches(0, start=8) == single[2:]  # resume after two batches of 4 samples


def test_packing_reduces_padding(demo_dataset, processor):
    torch_dataset = CauldronTorchDataset(demo_dataset.select(range(32)), processor)
    padded = next(iter(make_dataloader(torch_dataset, batch_size=32, shuffle=False)))
    packed = next(
        iter(make_dataloader(torch_dataset, batch_size=32, shuffle=False, packing=True, max_length=192))
    )
    assert packed["n_samples"] == padded["n_samples"] == 32
    assert packed["input_ids"].shape[0] < 32 and packed["input_ids"].shape[1] <= 192
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()  # same real tokens
    share = lambda batch: 1 - batch["attention_mask"].float().mean().item()  # noqa: E731
    assert share(packed) < share(padded)
    # pixel_values follow the samples in flattened row-major order (one image per demo row)
    padded_rows = [tuple(r[m.bool()].tolist()) for r, m in zip(padded["input_ids"], padded["attention_mask"])]
    packed_order = []
    for ids, segments in zip(packed["input_ids"], packed["segment_ids"]):
        for segment in range(1, int(segments.max()) + 1):
            packed_order.append(padded_rows.index(tuple(ids[segments == segment].tolist())))
    assert sorted(packed_order) == list(range(32))
    assert torch.equal(packed["pixel_values"], padded["pixel_values"][packed_order])


def test_the_memory_check_counts_at_least_what_the_cache_keeps(demo_dataset, processor):
    from picovlm.config import TrainConfig, VLMConfig
    from picovlm.train.setup import sample_cache_bytes

    rows = demo_dataset.select(range(20))
    cached = CauldronTorchDataset(rows, processor, cache_bytes=2**30)
    for i in range(len(rows)):
        cached[i]
    kept = 2**30 - cached.cache_room
    model_cfg = VLMConfig(vit_img_size=32, lm_max_length=96)  # the processor's picture and length
    estimate = sample_cache_bytes(model_cfg, TrainConfig(), len(rows))
    assert cached.cached_rows == 20 and kept <= estimate < 2 * kept
    assert sample_cache_bytes(model_cfg, TrainConfig(sample_cache_mb=0), len(rows)) == 0
    assert sample_cache_bytes(model_cfg, TrainConfig(image_augment=True), len(rows)) == 0
    assert sample_cache_bytes(model_cfg, TrainConfig(sample_cache_mb=1), 10**6) == 2**20  # the cap
