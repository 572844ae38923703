"""Tokenizers: train a small byte-level BPE on a dataset's texts, or load any Hugging Face tokenizer.

Why train one: with SmolLM2's 49,152-token vocabulary, the tied embedding is ~98% of the blog's
one-block "LLM" (49,152 x 216 = 10.6M of 10.85M parameters) and the LM head dominates step time. A
narrow domain needs a few thousand tokens.

Every picovlm tokenizer has these special tokens (added when a loaded tokenizer lacks them):
    <|im_start|>, <|im_end|>  chat turns (ChatML, as SmolLM2-Instruct uses)
    <|image|>                 one placeholder per image token; the model puts image embeddings there
    <|pad|>                   padding; never attended to, never supervised
    <|endoftext|>             document separator (kept for compatibility; the answer ends with <|im_end|>)

Tokenizers made for a new model (trained here, or a given one the trainer adopts) also get the two
tokens that wrap each image in Idefics3's (SmolVLM's) prompt layout, so the model can be exported to
transformers and answer the same there (picovlm/export/transformers.py):
    <fake_token_around_image>, <global-img>
They are never added on load: a model trained before them keeps its vocabulary and its prompt layout.

This module imports `tokenizers` only, never torch: the deployment runtime uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from picovlm.errors import PicovlmError

IM_START, IM_END, IMAGE, PAD, EOT = "<|im_start|>", "<|im_end|>", "<|image|>", "<|pad|>", "<|endoftext|>"
SPECIAL_TOKENS = [EOT, IM_START, IM_END, IMAGE, PAD]
# Idefics3's wrapper: <fake_token_around_image><global-img><|image|> x L<fake_token_around_image> per image.
# transformers' Idefics3Processor always writes it; a tokenizer that has both tokens gets this layout.
FAKE_IMAGE, GLOBAL_IMAGE = "<fake_token_around_image>", "<global-img>"
IMAGE_WRAP_TOKENS = [FAKE_IMAGE, GLOBAL_IMAGE]
TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """A `tokenizers.Tokenizer` with picovlm's special tokens and their ids at hand."""

    def __init__(self, tokenizer: Tokenizer):
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        self.tokenizer = tokenizer
        self.im_start_id = tokenizer.token_to_id(IM_START)
        self.im_end_id = tokenizer.token_to_id(IM_END)
        self.image_token_id = tokenizer.token_to_id(IMAGE)
        self.pad_token_id = tokenizer.token_to_id(PAD)
        self.eot_id = tokenizer.token_to_id(EOT)
        self._set_wrap_ids()

    def _set_wrap_ids(self) -> None:
        self.fake_image_id = self.tokenizer.token_to_id(FAKE_IMAGE)
        self.global_image_id = self.tokenizer.token_to_id(GLOBAL_IMAGE)
        present = [t for t in SPECIAL_TOKENS + IMAGE_WRAP_TOKENS if self.tokenizer.token_to_id(t) is not None]
        self.special_ids = {self.tokenizer.token_to_id(t) for t in present}

    @property
    def wraps_images(self) -> bool:
        """True when prompts wrap each image's placeholders as Idefics3 does (see IMAGE_WRAP_TOKENS)."""
        return self.fake_image_id is not None and self.global_image_id is not None

    def add_image_wrap_tokens(self) -> TextTokenizer:
        """Give a tokenizer for a new model the image-wrapper tokens (a no-op when it has them)."""
        missing = [t for t in IMAGE_WRAP_TOKENS if self.tokenizer.token_to_id(t) is None]
        if missing:
            self.tokenizer.add_special_tokens(missing)
            self._set_wrap_ids()
        return self

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | os.PathLike) -> Path:
        from picovlm.utils import atomic_write_text

        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, self.tokenizer.to_str())
        return path


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> TextTokenizer:
    """A byte-level BPE trained on `texts`: any string encodes (no unknown token), decodes back exactly."""
    special_tokens = SPECIAL_TOKENS + IMAGE_WRAP_TOKENS
    if vocab_size < 256 + len(special_tokens):
        raise PicovlmError(f"vocab_size={vocab_size} is too small for byte-level BPE: use at least 300.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)


def load_tokenizer(name_or_path: str | os.PathLike) -> TextTokenizer:
    """From a folder or file holding tokenizer.json, or a Hugging Face Hub id (e.g. SmolLM2's)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise PicovlmError(
                f"{path.parent} has no {TOKENIZER_FILE}: point at a folder saved by picovlm or transformers."
            )
    if path.is_file():
        try:
            return TextTokenizer(Tokenizer.from_file(str(path)))
        except Exception as err:
            raise PicovlmError(f"{path}: not a valid tokenizers JSON file ({err}).") from None
    try:
        return TextTokenizer(Tokenizer.from_pretrained(str(name_or_path)))
    except Exception as err:
        raise PicovlmError(
            f"cannot load tokenizer {name_or_path!r}: not a local folder or file, and the Hub said: {err}. "
            f"Check the id, or run once with network access so it is cached (HF_HUB_OFFLINE=1 blocks downloads)."
        ) from None
