"""The model: KV cache against a full forward pass, generation, packing, and the loss."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from picovlm.config import preset
from picovlm.data.tokenizer import train_tokenizer
from picovlm.model.language import KVCache
from picovlm.model.vlm import VisionLanguageModel, positions_from_mask

CONFIGS = {
    "tiny": {},
    "mha-untied": dict(lm_n_kv_heads=4, lm_tie_weights=False),
    "one-kv-head-3-blocks": dict(lm_n_kv_heads=1, lm_n_blocks=3, lm_hidden_dim=48, lm_n_heads=6),
    "cls-token-shuffle-4": dict(
        vit_cls_flag=True, vit_img_size=64, mp_pixel_shuffle_factor=4, lm_max_length=96
    ),
}


@pytest.fixture(scope="module")
def tokenizer():
    texts = [
        "a small red circle at the top left",
        "two large blue squares in the center",
        "describe the image",
    ]
    return train_tokenizer(texts * 20, vocab_size=320)


def make_model(tokenizer, **changes):
    torch.manual_seed(0)
    return VisionLanguageModel(preset("tiny", **changes), tokenizer).eval()


def left_padded_batch(model, lengths, n_images=1, seed=0):
    """Random prompts of the given lengths, each with images, left-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    cfg, L = model.cfg, model.cfg.mp_image_token_length
    width = max(lengths) + L * n_images
    ids = torch.full((len(lengths), width), cfg.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        text = torch.randint(10, cfg.lm_vocab_size - 10, (n,), generator=g)
        seq = torch.cat([torch.full((L * n_images,), cfg.image_token_id), text])
        ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    pixels = torch.randn(len(lengths) * n_images, 3, cfg.vit_img_size, cfg.vit_img_size, generator=g)
    return ids, mask, pixels


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prefill_plus_cached_decode_equals_full_forward(tokenizer, name):
    model = make_model(tokenizer, **CONFIGS[name])
    ids, mask, pixels = left_padded_batch(model, [5, 9, 2])
    B, T = ids.shape
    prefill = T - 4  # the last 4 tokens are fed one at a time through the cache
    with torch.no_grad():
        embeds = model.embed(ids, pixels)
        positions = positions_from_mask(mask, ids.shape)
        full = model.decoder.lm_head(model.decoder(embeds, positions, key_padding=mask))
        cache = KVCache(model.cfg, B, T, "cpu", torch.float32)
        steps = [model.decoder(embeds[:, :prefill], positions[:, :prefill], mask[:, :prefill], cache=cache)]
        for t in range(prefill, T):
            steps.append(
                model.decoder(embeds[:, t : t + 1], positions[:, t : t + 1], mask[:, : t + 1], cache=cache)
            )
        cached = model.decoder.lm_head(torch.cat(steps, dim=1))
    real = mask.bool()
    torch.testing.assert_close(cached[real], full[real], atol=1e-5, rtol=1e-5)


def test_left_padding_does_not_change_a_rows_logits(tokenizer):
    model = make_model(tokenizer)
    ids, mask, pixels = left_padded_batch(model, [3, 8])
    with torch.no_grad():
        batch = model(ids, pixels, attention_mask=mask).logits
        alone = model(ids[:1, mask[0].bool()], pixels[:1]).logits
    torch.testing.assert_close(batch[0, mask[0].bool()], alone[0], atol=1e-5, rtol=1e-5)


def naive_greedy(model, ids, mask, pixels, max_new_tokens):
    """The reference: no cache, the whole sequence through the model at every step."""
    out = []
    for _ in range(max_new_tokens):
        logits = model(ids, pixels, attention_mask=mask).logits[:, -1]
        token = logits.argmax(-1)
        out.append(token)
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("name", ["tiny", "one-kv-head-3-blocks"])
def test_cached_greedy_generation_equals_naive_loop(tokenizer, name):
    model = make_model(tokenizer, **CONFIGS[name])
    model.cfg.eos_token_id = None  # run every step, so both loops produce the same number of tokens
    ids, mask, pixels = left_padded_batch(model, [4, 7, 1], seed=3)
    with torch.no_grad():
        expected = naive_greedy(model, ids, mask, pixels, 12)
    got = model.generate(ids, pixels, mask, max_new_tokens=12)
    assert torch.equal(got, expected)


def test_each_row_stops_at_its_end_token(tokenizer):
    model = make_model(tokenizer)
    ids, mask, pixels = left_padded_batch(model, [4, 6])
    steps = []
    tokens = model.generate(ids, pixels, mask, max_new_tokens=30, on_token=steps.append)
    eos, pad = model.cfg.eos_token_id, model.cfg.pad_token_id
    for row in tokens.tolist():
        if eos in row:
            assert all(t == pad for t in row[row.index(eos) + 1 :])
    # Force every row to end at once: a zeroed final norm makes every logit 0, so greedy picks token 0.
    with torch.no_grad():
        model.decoder.norm.weight.zero_()
    model.cfg.eos_token_id = 0
    steps.clear()
    tokens = model.generate(ids, pixels, mask, max_new_tokens=30, on_token=steps.append)
    assert tokens.shape == (2, 1) and len(steps) == 1


def test_sampling_is_seeded_and_respects_top_k(tokenizer):
    model = make_model(tokenizer)
    ids, mask, pixels = left_padded_batch(model, [4, 6])
    a = model.generate(ids, pixels, mask, max_new_tokens=8, temperature=1.0, top_k=5, seed=7)
    b = model.generate(ids, pixels, mask, max_new_tokens=8, temperature=1.0, top_k=5, seed=7)
    assert torch.equal(a, b)
    from picovlm.model.vlm import sample_next_token

    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    picks = {
        int(sample_next_token(logits, 1.0, top_k=2, generator=torch.Generator().manual_seed(s)))
        for s in range(50)
    }
    assert picks == {1, 2}
    picks = {
        int(sample_next_token(logits, 1.0, top_p=0.5, generator=torch.Generator().manual_seed(s)))
        for s in range(50)
    }
    assert picks == {1}


def test_loss_covers_only_supervised_tokens(tokenizer):
    model = make_model(tokenizer)
    image = Image.new("RGB", (50, 40), (200, 10, 10))
    row = {
        "images": [image],
        "texts": [{"user": "describe the image", "assistant": "a small red circle", "source": "t"}],
    }
    ex = model.processor.encode_example(row)
    ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
    pixels = torch.from_numpy(ex["pixel_values"])
    out = model(ids, pixels, labels=labels)
    logits = model(ids, pixels).logits
    keep = labels[0, 1:] != -100
    expected = F.cross_entropy(logits[0, :-1][keep], labels[0, 1:][keep])
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert out.n_tokens == int(keep.sum()) == len(tokenizer.encode("a small red circle")) + 1
    # Chunking the head changes nothing but memory.
    from picovlm.model.vlm import chunked_cross_entropy

    h = torch.randn(37, model.cfg.lm_hidden_dim, requires_grad=True)
    t = torch.randint(0, model.cfg.lm_vocab_size, (37,))
    w = model.decoder.lm_head.weight
    a = chunked_cross_entropy(h, w, t, chunk_size=8)
    (ga,) = torch.autograd.grad(a, h)
    b = F.cross_entropy(h @ w.T, t, reduction="sum")
    (gb,) = torch.autograd.grad(b, h)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-4)
    # label smoothing (train.label_smoothing) is torch's, chunked or not, and raises the loss of a target
    smoothed = chunked_cross_entropy(h, w, t, chunk_size=8, label_smoothing=0.1)
    expected = F.cross_entropy(h @ w.T, t, reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(smoothed, expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(smoothed, a)


def test_packed_samples_do_not_see_each_other(tokenizer):
    """Two samples packed in one row give the same loss as the two fed separately."""
    model = make_model(tokenizer)
    rows = [
        {"images": [Image.new("RGB", (32, 32), (255, 0, 0))], "texts": [{"user": "describe the image", "assistant": "a small red circle", "source": "t"}]},
        {"images": [Image.new("RGB", (32, 32), (0, 0, 255))], "texts": [{"user": "describe the image", "assistant": "two large blue squares in the center", "source": "t"}]},
    ]  # fmt: skip
    encoded = [model.processor.encode_example(r) for r in rows]
    sums = []
    for ex in encoded:
        out = model(
            torch.tensor([ex["input_ids"]]),
            torch.from_numpy(ex["pixel_values"]),
            labels=torch.tensor([ex["labels"]]),
            reduction="sum",
        )
        sums.append((out.loss, out.n_tokens))
    packed_ids = torch.tensor([encoded[0]["input_ids"] + encoded[1]["input_ids"]])
    packed_labels = torch.tensor([encoded[0]["labels"] + encoded[1]["labels"]])
    n0, n1 = len(encoded[0]["input_ids"]), len(encoded[1]["input_ids"])
    positions = torch.tensor([list(range(n0)) + list(range(n1))])
    segments = torch.tensor([[1] * n0 + [2] * n1])
    pixels = torch.from_numpy(torch.cat([torch.from_numpy(e["pixel_values"]) for e in encoded]).numpy())
    out = model(
        packed_ids,
        pixels,
        labels=packed_labels,
        position_ids=positions,
        segment_ids=segments,
        reduction="sum",
    )
    assert out.n_tokens == sums[0][1] + sums[1][1]
    torch.testing.assert_close(out.loss, sums[0][0] + sums[1][0], atol=1e-4, rtol=1e-5)


def test_every_parameter_is_initialised_for_training_from_scratch(tokenizer):
    model = make_model(tokenizer, vit_cls_flag=True)
    pos = model.vision_encoder.patch_embedding.position_embedding
    assert 0.005 < pos.std().item() < 0.03  # learned positions are not left at zero
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if p.dim() > 1:
            assert p.std().item() < 0.05, name
    # A model trained from scratch starts near the uniform distribution over the vocabulary.
    ids, mask, pixels = left_padded_batch(model, [6])
    logits = model(ids, pixels, attention_mask=mask).logits
    assert logits.std().item() < 1.0


def test_save_and_load_round_trip(tmp_path, tokenizer):
    model = make_model(tokenizer)
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation.json",
    }
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "m")
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    image = Image.new("RGB", (64, 64), (0, 200, 0))
    assert loaded.answer(image, "describe the image", max_new_tokens=6) == model.answer(
        image, "describe the image", max_new_tokens=6
    )


def test_a_batch_penalises_repetition_as_each_row_alone(tokenizer):
    """The penalty counts each row's own tokens, never its left padding: a row answers the same in a
    batch as alone (as the runtime, one prompt at a time, answers it)."""
    model = make_model(tokenizer, lm_tie_weights=False)  # tied, a random model only repeats its input
    model.cfg.eos_token_id = None
    ids, mask, pixels = left_padded_batch(model, [2, 9], seed=5)
    batch = model.generate(ids, pixels, mask, max_new_tokens=10, repetition_penalty=1.8)
    for row in range(2):
        real = mask[row].bool()
        alone = model.generate(
            ids[row : row + 1, real], pixels[row : row + 1], max_new_tokens=10, repetition_penalty=1.8
        )
        assert batch[row].tolist() == alone[0].tolist(), row
    assert not torch.equal(batch, model.generate(ids, pixels, mask, max_new_tokens=10))


def test_a_strong_copy_bias_writes_one_of_the_sources_word_for_word(tokenizer):
    """copy_bias adds to the logits of the tokens that would continue one of the row's copy sources (a
    retrieving model's neighbours' answers, nearest first): so large a bias copies the nearest source
    whole, row by row, in a batch as alone; a model with no sources refuses it."""
    from picovlm.errors import ConfigError

    model = make_model(tokenizer)
    model.cfg.eos_token_id = None
    ids, mask, pixels = left_padded_batch(model, [6, 12], seed=3)
    sources = [[[11, 12, 13, 14], [21, 22, 23]], [[31, 32, 33, 34, 35]]]
    copied = model.generate(ids, pixels, mask, max_new_tokens=8, copy_bias=1e4, copy_sources=sources)
    assert copied[0].tolist()[:4] == [11, 12, 13, 14]  # the nearest source weighs most
    assert copied[1].tolist()[:5] == [31, 32, 33, 34, 35]
    real = mask[1].bool()
    alone = model.generate(
        ids[1:2, real], pixels[1:2], max_new_tokens=8, copy_bias=1e4, copy_sources=sources[1:]
    )
    assert torch.equal(alone[0], copied[1])
    # a small bias leans, it does not force: the model's own first token where it is sure enough
    plain = model.generate(ids, pixels, mask, max_new_tokens=8)
    assert torch.equal(
        model.generate(ids, pixels, mask, max_new_tokens=8, copy_bias=1e-6, copy_sources=sources), plain
    )
    with pytest.raises(ConfigError, match="retrieval_k"):
        model.generate(ids, pixels, mask, max_new_tokens=8, copy_bias=2.0)


def test_generate_takes_a_config_and_the_old_keywords(tokenizer):
    from picovlm.errors import ConfigError
    from picovlm.generation import GenerationConfig

    model = make_model(tokenizer)
    model.cfg.eos_token_id = None
    ids, mask, pixels = left_padded_batch(model, [4, 6])
    config = GenerationConfig(max_new_tokens=5, repetition_penalty=1.3)
    by_config = model.generate(ids, pixels, mask, config)
    assert by_config.shape == (2, 5)
    assert torch.equal(by_config, model.generate(ids, pixels, mask, max_new_tokens=5, repetition_penalty=1.3))
    assert model.generate(ids, pixels, mask, config, max_new_tokens=2).shape == (2, 2)  # keywords win
    assert model.generate(ids, pixels, mask).shape[1] == GenerationConfig().max_new_tokens
    with pytest.raises(ConfigError, match="max_tokens"):
        model.generate(ids, pixels, mask, max_tokens=5)
