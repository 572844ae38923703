"""Tokenizers and the chat template: special tokens, round trips, and labels token by token."""

import json

import numpy as np
import pytest
from PIL import Image

from picovlm.data.processor import IGNORE_INDEX, Processor, preprocess_image, to_rgb
from picovlm.data.tokenizer import (
    FAKE_IMAGE,
    GLOBAL_IMAGE,
    IM_END,
    IM_START,
    IMAGE,
    PAD,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)
from picovlm.errors import DataError, PicovlmError

TEXTS = [
    "There is one large green triangle at the bottom right.",
    "Describe the image.",
    "Ünïcode and 42 digits",
] * 10


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


def test_trained_tokenizer_round_trips_any_text_and_has_special_tokens(tokenizer, tmp_path):
    for text in TEXTS + ["never seen: ¿qué? 😀 \t tabs"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer) <= 400
    ids = [tokenizer.tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert tokenizer.encode(IMAGE) == [tokenizer.image_token_id]  # the placeholder never splits
    tokenizer.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert (
        again.encode(TEXTS[0]) == tokenizer.encode(TEXTS[0]) and again.pad_token_id == tokenizer.pad_token_id
    )


def test_loading_a_foreign_tokenizer_adds_missing_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    foreign = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert len(tok) == 3 + len(SPECIAL_TOKENS)
    assert tok.image_token_id >= 3 and tok.pad_token_id >= 3


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(PicovlmError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_labels_mask_everything_but_the_answer_and_its_end_token(tokenizer):
    proc = Processor(tokenizer, image_size=32, image_token_length=4, max_length=128)
    row = {
        "images": [Image.new("RGB", (10, 10))],
        "texts": [
            {"user": "Describe the image.", "assistant": "one large green triangle", "source": "x"},
            {"user": "And?", "assistant": "42 digits", "source": "x"},
        ],
    }
    ex = proc.encode_example(row)
    ids, labels = ex["input_ids"], ex["labels"]
    tok = tokenizer.tokenizer
    pieces = [tok.id_to_token(i) for i in ids]
    # Reconstruct the template and check each position's label.
    expected_text = (
        f"{IM_START}user\n{FAKE_IMAGE}{GLOBAL_IMAGE}{IMAGE * 4}{FAKE_IMAGE}Describe the image.{IM_END}\n{IM_START}assistant\none large green triangle{IM_END}\n"
        f"{IM_START}user\nAnd?{IM_END}\n{IM_START}assistant\n42 digits{IM_END}\n"
    )
    assert tokenizer.decode(ids, skip_special_tokens=False) == expected_text
    supervised = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert (
        tokenizer.decode(supervised, skip_special_tokens=False)
        == f"one large green triangle{IM_END}42 digits{IM_END}"
    )
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels))
    assert pieces.count(IMAGE) == 4 and PAD not in pieces
    assert ex["pixel_values"].shape == (1, 3, 32, 32)


def test_a_tokenizer_without_the_image_wrapper_keeps_the_bare_layout_of_older_models(tokenizer, tmp_path):
    """Models trained before the Idefics3 wrapper have tokenizers without it: they load unchanged (no
    token added, so the vocabulary still fits the model) and their prompts keep the bare image run."""

    assert tokenizer.wraps_images  # every tokenizer picovlm trains now has the wrapper
    data = json.loads(tokenizer.tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in (FAKE_IMAGE, GLOBAL_IMAGE)]
    for token in (FAKE_IMAGE, GLOBAL_IMAGE):
        del data["model"]["vocab"][token]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    old = load_tokenizer(tmp_path)
    assert not old.wraps_images and len(old) == len(tokenizer) - 2
    prompt = Processor(old, image_size=32, image_token_length=4, max_length=128).encode_prompt(
        "Hi", n_images=2
    )
    assert old.decode(prompt, skip_special_tokens=False) == (
        f"{IM_START}user\n{IMAGE * 8}Hi{IM_END}\n{IM_START}assistant\n"
    )
    new = Processor(tokenizer, image_size=32, image_token_length=4, max_length=128).encode_prompt("Hi", 2)
    wrapped = f"{FAKE_IMAGE}{GLOBAL_IMAGE}{IMAGE * 4}{FAKE_IMAGE}"
    assert tokenizer.decode(new, skip_special_tokens=False) == (
        f"{IM_START}user\n{wrapped * 2}Hi{IM_END}\n{IM_START}assistant\n"
    )
    assert old.add_image_wrap_tokens().wraps_images and len(old) == len(tokenizer)  # a new model's tokenizer


def test_prompt_matches_the_training_template_up_to_the_answer(tokenizer):
    proc = Processor(tokenizer, image_size=32, image_token_length=4, max_length=128)
    prompt = proc.encode_prompt("Describe the image.", n_images=2)
    ids, labels = proc.encode_turns([("Describe the image.", "x")], n_images=2)
    assert ids[: len(prompt)] == prompt and labels[len(prompt)] != IGNORE_INDEX


def test_long_answers_are_cut_and_prompts_that_do_not_fit_are_errors(tokenizer):
    proc = Processor(tokenizer, image_size=32, image_token_length=4, max_length=30)
    ids, labels = proc.encode_turns([("Describe the image.", "one large green triangle " * 20)], n_images=1)
    assert len(ids) == len(labels) == 30
    with pytest.raises(DataError, match="lm_max_length"):
        proc.encode_turns([("Describe the image. " * 20, "x")], n_images=1)
    with pytest.raises(DataError, match="assistant"):
        proc.encode_example({"images": [], "texts": [{"user": "q", "assistant": "", "source": ""}]})


def test_images_are_normalised_as_siglip_expects():
    white = preprocess_image(Image.new("RGB", (7, 9), (255, 255, 255)), 16)
    black = preprocess_image(Image.new("RGB", (7, 9), (0, 0, 0)), 16)
    assert white.shape == (3, 16, 16) and white.dtype == np.float32
    assert np.allclose(white, 1.0) and np.allclose(black, -1.0)
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((4, 4), 60000, dtype=np.uint16))
    assert to_rgb(sixteen).mode == "RGB"
    assert to_rgb(Image.new("CMYK", (4, 4))).mode == "RGB"
