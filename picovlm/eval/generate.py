"""Answers for image files: batched for many images, streamed piece by piece for one.

    answer_files(model, ["a.png", "b.png"], "Describe the image.")  -> ["...", "..."]
    stream_answer(model, "a.png", on_text=lambda piece: ...)        -> "..." (on_text sees it grow)

Streaming decodes the tokens generated so far after every step and hands on only the new text
(picovlm.data.processor.AnswerStream, as the runtime streams).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from picovlm.config import DEFAULT_QUESTION
from picovlm.errors import PicovlmError
from picovlm.generation import GenerationConfig, generation_config


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (RGB), or raise a PicovlmError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PicovlmError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (UnidentifiedImageError, OSError) as err:
        raise PicovlmError(
            f"{path}: not an image Pillow can read ({err}); use PNG, JPEG, WebP or GIF"
        ) from None


def answer_files(
    model,
    image_paths: Sequence[str | os.PathLike],
    question: str = DEFAULT_QUESTION,
    batch_size: int = 16,
    generation: GenerationConfig | None = None,
    **options: Any,
) -> list[str]:
    """One answer per image file, generated in batches (left padding, early stop per row)."""
    answers: list[str] = []
    for start in range(0, len(image_paths), batch_size):
        images = [load_image(p) for p in image_paths[start : start + batch_size]]
        answers += model.answer(images, [question] * len(images), generation, **options)
    return answers


def stream_answer(
    model,
    image_path: str | os.PathLike,
    question: str = DEFAULT_QUESTION,
    on_text: Callable[[str], None] | None = None,
    generation: GenerationConfig | None = None,
    **options: Any,
) -> str:
    """Answer one image, calling on_text(piece) as each piece of the answer is decoded; return the answer.

    `generation` (default: the model's own) and `options` as for `model.answer`."""
    from picovlm.data.processor import AnswerStream

    gen = generation_config(generation or model.generation, **options)
    batch = model.prepare_prompts(
        [load_image(image_path)], [question], gen.copy_source_count, gen.copy_fact_weight
    )
    eos = model.cfg.eos_token_id
    pieces = AnswerStream(model.tokenizer)
    done = False

    def on_token(step_tokens) -> None:
        nonlocal done
        token = int(step_tokens[0])
        done = done or token == eos
        piece = "" if done else pieces.push(token)
        if piece and on_text is not None:
            on_text(piece)

    was_training = model.training
    model.eval()
    try:
        out = model.generate(**batch, generation=gen, on_token=on_token)
    finally:
        model.train(was_training)
    answer = model.decode_answer(out[0].tolist())
    if on_text is not None and answer.startswith(pieces.shown) and len(answer) > len(pieces.shown):
        on_text(answer[len(pieces.shown) :])  # whatever was held back at the end
    return answer
