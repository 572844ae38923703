"""From a cauldron row to model inputs: image pixels, the chat template, token ids and labels.

The chat template (ChatML, as SmolLM2-Instruct), for one image and one turn:

    <|im_start|>user\\n<|image|> x L  {question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n

where L = mp_image_token_length placeholders per image (49 for 224 px, patch 16, pixel shuffle 2); the
model swaps each run of placeholders for that image's projected patch features. All images of a row
go at the start of its first user turn. Later turns repeat the user/assistant pattern.

When the tokenizer has Idefics3's wrapper tokens (every tokenizer made for a new model does), each
image's run is wrapped as transformers' Idefics3Processor writes it, so an exported model reads the
very same token ids there:

    <fake_token_around_image><global-img><|image|> x L<fake_token_around_image>

Tokenizers of models trained before the wrapper lack those tokens and keep the bare run.

Labels are -100 (ignored by the loss) everywhere except the assistant's answer tokens and the
<|im_end|> that closes each answer: the model learns to answer and to stop, not to echo the question.

Pieces are tokenised separately and concatenated, so a label boundary never depends on how BPE
merges across a template seam. This module uses numpy, Pillow and tokenizers only (no torch): the
deployment runtime shares it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from picovlm.data.tokenizer import TextTokenizer
from picovlm.errors import ConfigError, DataError

IGNORE_INDEX = -100

# SigLIP normalises pixels with mean = std = 0.5 per channel, i.e. to [-1, 1]. (nanoVLM used ImageNet's
# statistics, which SigLIP was never trained with.)
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency over white, 16/32-bit greys scaled to 8 bits.

    16-bit images are scaled against 65535, not their brightest pixel, so a dark scan stays dark.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image).astype(np.float64)
        peak = 65535.0 if pixels.max() <= 65535 else float(pixels.max())
        scale = 255.0 / peak if pixels.max() > 255 else 1.0
        return Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """Pillow image -> (3, size, size) float32 in [-1, 1]: RGB, bicubic resize, SigLIP normalisation."""
    return normalise_pixels(image_bytes(image, size)[None])[0]


def image_bytes(image: Image.Image, size: int) -> np.ndarray:
    """Pillow image -> (size, size, 3) uint8: RGB, bicubic resize. A quarter of the memory of the
    model's floats (`normalise_pixels`), which the training dataset keeps between epochs."""
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def normalise_pixels(images: np.ndarray) -> np.ndarray:
    """(n, size, size, 3) uint8 -> (n, 3, size, size) float32 in [-1, 1]: SigLIP normalisation."""
    pixels = images.astype(np.float32) / 255.0
    pixels = (pixels - IMAGE_MEAN) / IMAGE_STD
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


class Processor:
    """Turns (images, question[, answer]) into token ids, labels and pixels for one model config."""

    def __init__(self, tokenizer: TextTokenizer, image_size: int, image_token_length: int, max_length: int):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.image_token_length = image_token_length
        self.max_length = max_length
        self.pad_token_id = tokenizer.pad_token_id
        self.eos_token_id = tokenizer.im_end_id
        self.image_token_id = tokenizer.image_token_id
        # Template pieces, tokenised once.
        self._user = [tokenizer.im_start_id, *tokenizer.encode("user\n")]
        self._assistant = [tokenizer.im_start_id, *tokenizer.encode("assistant\n")]
        self._newline = tokenizer.encode("\n")
        run = [tokenizer.image_token_id] * image_token_length
        if tokenizer.wraps_images:
            run = [tokenizer.fake_image_id, tokenizer.global_image_id, *run, tokenizer.fake_image_id]
        self._image_tokens = run  # one image's tokens in the prompt

    @classmethod
    def from_config(cls, tokenizer: TextTokenizer, cfg) -> Processor:
        return cls(tokenizer, cfg.vit_img_size, cfg.mp_image_token_length, cfg.lm_max_length)

    @classmethod
    def bind(cls, tokenizer: TextTokenizer, cfg) -> Processor:
        """The processor of a model config, with the tokenizer's image, pad and end token ids written into
        `cfg` (the model reads them there, and config.json keeps them with the weights)."""
        if len(tokenizer) > cfg.lm_vocab_size:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but lm_vocab_size={cfg.lm_vocab_size}: "
                f"set lm_vocab_size to at least {len(tokenizer)}."
            )
        cfg.image_token_id = tokenizer.image_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.eos_token_id = tokenizer.im_end_id
        return cls.from_config(tokenizer, cfg)

    def image_pixels(self, images: list[Image.Image]) -> np.ndarray:
        """(n, 3, S, S) float32: what the vision tower reads."""
        return normalise_pixels(self.image_bytes(images))

    def image_bytes(self, images: list[Image.Image]) -> np.ndarray:
        """(n, S, S, 3) uint8: the same pictures before normalisation (`normalise_pixels`)."""
        if not images:
            return np.zeros((0, self.image_size, self.image_size, 3), dtype=np.uint8)
        return np.stack([image_bytes(im, self.image_size) for im in images])

    def _user_turn(self, question: str, n_images: int) -> list[int]:
        images = self._image_tokens * n_images
        return [
            *self._user,
            *images,
            *self.tokenizer.encode(question),
            self.tokenizer.im_end_id,
            *self._newline,
        ]

    def encode_prompt(self, question: str, n_images: int = 1) -> list[int]:
        """Token ids of a one-turn prompt that ends where the assistant's answer begins."""
        return [*self._user_turn(question, n_images), *self._assistant]

    def prompt_batch(
        self, questions: list[str], image_lists: list[list[Image.Image]]
    ) -> dict[str, np.ndarray]:
        """One-turn prompts for (question, images) pairs, left-padded so every row's next token goes in
        the last column: input_ids and attention_mask (B, T) int64, pixel_values (n, 3, S, S) of all
        images in row order."""
        prompts = [self.encode_prompt(q, len(ims)) for q, ims in zip(questions, image_lists)]
        width = max(len(p) for p in prompts)
        input_ids = np.full((len(prompts), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(prompts), width), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = prompt
            attention_mask[row, width - len(prompt) :] = 1
        pixels = [self.image_pixels(list(ims)) for ims in image_lists]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": np.concatenate(pixels),
        }

    def decode_answer(self, token_ids: list[int]) -> str:
        """Generated token ids -> the answer: cut at the first end token, special tokens dropped, trimmed."""
        if self.eos_token_id in token_ids:
            token_ids = token_ids[: token_ids.index(self.eos_token_id)]
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).strip()

    def encode_answer(self, answer: str) -> list[int]:
        """An answer's token ids as the model is trained to generate them, its end token included."""
        return [*self.tokenizer.encode(answer), self.tokenizer.im_end_id]

    def encode_turns(self, turns: list[tuple[str, str]], n_images: int) -> tuple[list[int], list[int]]:
        """Token ids and labels for a conversation of (question, answer) turns."""
        input_ids: list[int] = []
        labels: list[int] = []
        for i, (question, answer) in enumerate(turns):
            prompt = [*self._user_turn(question, n_images if i == 0 else 0), *self._assistant]
            answer_ids = self.encode_answer(answer)
            input_ids += prompt + answer_ids + self._newline
            labels += [IGNORE_INDEX] * len(prompt) + answer_ids + [IGNORE_INDEX] * len(self._newline)
        if len(input_ids) > self.max_length:
            # Keep the images and the first prompt whole; cut the tail of the conversation.
            first_answer = labels.index(next(t for t in labels if t != IGNORE_INDEX))
            if first_answer >= self.max_length:
                raise DataError(
                    f"the prompt alone is {first_answer} tokens, over lm_max_length={self.max_length}: "
                    f"raise lm_max_length or shorten the question."
                )
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        return input_ids, labels

    def encode_example(self, row: dict[str, Any], pixel_bytes: bool = False) -> dict[str, Any]:
        """A cauldron row {"images": [...], "texts": [{"user", "assistant", ...}]} -> model inputs.
        pixel_bytes: "pixel_values" as `image_bytes` gives them (uint8), to normalise later."""
        images = row.get("images") or []
        texts = row.get("texts") or []
        turns = []
        for j, turn in enumerate(texts):
            question, answer = turn.get("user"), turn.get("assistant")
            if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
                raise DataError(
                    f"texts[{j}] needs non-empty string fields 'user' and 'assistant', got {turn!r}"
                )
            turns.append((question, answer))
        if not turns:
            raise DataError(
                "the row has no texts: expected texts = [{'user': ..., 'assistant': ..., 'source': ...}]"
            )
        for k, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise DataError(f"images[{k}] is {type(image).__name__}, not a decoded image")
        input_ids, labels = self.encode_turns(turns, len(images))
        pixels = self.image_bytes(images) if pixel_bytes else self.image_pixels(images)
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixels}


class AnswerStream:
    """An answer's text piece by piece as its tokens arrive: `push(token)` returns the new text ("" while
    none is ready). The tokens so far are decoded whole each time; a byte-level BPE token can end in the
    middle of a UTF-8 character, which decodes to U+FFFD, so such a tail waits for the next token."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.shown = ""

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd") or not text.startswith(self.shown) or len(text) <= len(self.shown):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece
