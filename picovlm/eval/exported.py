"""An exported folder (`picovlm export`, fp32 or int8) as evaluation sees a model.

`picovlm eval` scores what is deployed, not only the torch weights it came from: an exported folder
is answered by the torch-free runtime (`picovlm.runtime.Runtime`, the code `picovlm serve` runs),
and everything after the answers (metrics, collapse verdict, report) is the same code as for a torch
model. What eval needs from a model, and how the runtime gives it:

    answers        Runtime.answer, one image at a time (the server's way; no batching)
    answer loss    Runtime.answer_nll_at: the prompt prefilled, then the reference fed token by token
                   through the decoder graph, which returns the last position's logits (scored at
                   each temperature of the calibrated image gap in the same pass)
    image features the vision graph's output (ViT + projector, fused at export), mean-pooled, for the
                   nearest-vision baseline (a torch model uses its ViT alone)

Retrieval works as in the server: the index travels in the exported folder and the runtime puts the
neighbours' answers into each prompt. No torch here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from picovlm.config import DEFAULT_QUESTION
from picovlm.errors import PicovlmError
from picovlm.generation import GenerationConfig

MANIFEST_FILE = "manifest.json"  # picovlm.runtime's name for it


def is_exported_dir(path: str | os.PathLike) -> bool:
    """A folder written by `picovlm export` (it has manifest.json)."""
    return (Path(path) / MANIFEST_FILE).is_file()


class ExportedModel:
    """The runtime behind the interface `picovlm.eval.evaluate` uses: `processor`, `answer`,
    `answer_nll_per_row`, `vision_features`, `retrieval`."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.processor = runtime.processor
        self.tokenizer = runtime.tokenizer

    @classmethod
    def load(cls, directory: str | os.PathLike, threads: int = 1) -> ExportedModel:
        from picovlm.runtime import Runtime

        return cls(Runtime.load(directory, threads=threads))

    @property
    def backend(self) -> str:
        """ "onnx fp32" or "onnx int8": how the answers were produced."""
        return f"onnx {self.runtime.quantization}"

    @property
    def retrieval(self):
        """The index the runtime retrieves with (None for a model without one), as a torch model's."""
        return self.runtime.retrieval

    @property
    def generation(self) -> GenerationConfig:
        """The exported folder's own generation config (its manifest's, else the defaults)."""
        return self.runtime.generation

    def answer(
        self,
        images,
        questions: str | Sequence[str] = DEFAULT_QUESTION,
        generation: GenerationConfig | None = None,
        **options: Any,
    ):
        """The torch model's `answer` contract: one image (a string back) or a list (a list back); an
        entry of the list may itself be a list of images for one question."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if isinstance(questions, str):
            questions = [questions] * len(images)
        answers = [self.runtime.answer(im, q, generation, **options) for im, q in zip(images, questions)]
        return answers[0] if single else answers

    def answer_nll_per_row(
        self,
        items,
        temperatures: Sequence[float] = (1.0,),
        image_source: Sequence[int] | None = None,
        blank: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(summed cross-entropy of each row's answer tokens at each temperature (rows, temperatures),
        each row's answer token count), row i shown the images of row image_source[i]:
        `picovlm.eval.evaluate.answer_nll_per_row` for a torch model."""
        nll, tokens = np.zeros((len(items), len(temperatures))), np.zeros(len(items))
        for i, item in enumerate(items):
            shown = items[image_source[i] if image_source is not None else i].images
            nll[i], tokens[i] = self.runtime.answer_nll_at(
                list(shown), item.question, item.reference, temperatures, blank_images=blank
            )
        return nll, tokens

    def vision_features(self, items) -> np.ndarray:
        """Each row's first image through the vision graph, mean-pooled over its image tokens (raw)."""
        if not items:
            raise PicovlmError("no rows to compute image features for")
        return np.stack([self.runtime.image_embeddings([item.images[0]])[0].mean(axis=0) for item in items])
