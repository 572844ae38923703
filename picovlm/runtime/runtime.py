"""Answer (image, question) pairs from an exported folder with onnxruntime, numpy, tokenizers and Pillow.

No torch here, on purpose: `import torch` alone costs ~230 MB of memory, more than a whole super-small
model needs to run. The chat template and image preprocessing come from `picovlm.data.processor`, the
same code the trainer uses, so a prompt is byte-for-byte the prompt the model was trained on.

Generation, for one (image, question):

    image -> vision.onnx -> (1, L, D)         question -> chat template -> ids (T,) -> embed_tokens[ids]
    image embeddings replace the <|image|> rows -> inputs_embeds (1, T, D)
    decoder.onnx(prefill: all T positions, empty cache) -> logits, cache
    loop: pick a token; stop at <|im_end|>; decoder.onnx(that token, cache) -> logits, cache + 1
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from picovlm.config import DEFAULT_QUESTION
from picovlm.data.processor import IGNORE_INDEX, AnswerStream, Processor
from picovlm.data.tokenizer import load_tokenizer
from picovlm.errors import PicovlmError
from picovlm.generation import (
    CopyVotes,
    GenerationConfig,
    copy_options_check,
    generation_config,
    neighbour_weights,
)
from picovlm.retrieval import RetrievalIndex

MANIFEST_FILE = (
    "manifest.json"  # the same name as picovlm.export.onnx.MANIFEST_FILE (that module imports torch)
)
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~6300 x 6300: anything larger is refused before it is decoded


class ImageError(PicovlmError):
    """Bytes that are not a readable image, or an image too large to decode safely."""


def open_image(
    data: bytes | str | os.PathLike | Image.Image, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """A decoded Pillow image from bytes, a path or an image; refuses decompression bombs before decoding.

    Pillow reads only the header on open, so the pixel count is known before any pixel is decompressed.
    """
    if isinstance(data, Image.Image):
        image = data
    else:
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        try:
            image = Image.open(source)
        except Exception as err:
            raise ImageError(
                f"cannot read the image: {err}; send a PNG, JPEG, GIF, WebP or BMP file."
            ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}: "
                         f"resize it first.")  # fmt: skip
    try:
        image.load()
    except Exception as err:
        raise ImageError(f"the image is damaged or truncated: {err}.") from None
    return image


def apply_repetition_penalty(logits: np.ndarray, seen: list[int], penalty: float) -> np.ndarray:
    """The torch model's rule: seen tokens' positive logits divided by `penalty`, negative ones multiplied
    (each seen token once, however often it was seen)."""
    logits = logits.copy()
    ids = np.unique(np.asarray(seen, np.int64))
    scores = logits[ids]
    logits[ids] = np.where(scores > 0, scores / penalty, scores * penalty)
    return logits


def sample_next_token(logits: np.ndarray, options: GenerationConfig, rng: np.random.Generator) -> int:
    """(V,) logits -> a token id; the same rules as the torch model's `sample_next_token`."""
    if options.temperature <= 0:
        return int(np.argmax(logits))
    logits = logits.astype(np.float64) / options.temperature
    if options.top_k is not None and 0 < options.top_k < logits.size:
        kth = np.partition(logits, -options.top_k)[-options.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if options.top_p is not None and 0 < options.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        before = np.cumsum(probs[order]) - probs[order]  # mass of the tokens ranked above each one
        keep = order[before <= options.top_p]  # the smallest set that reaches top_p
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


class Runtime:
    """A loaded exported folder: `answer` for a whole answer, `stream` for text as it is generated."""

    def __init__(self, directory: Path, manifest: dict[str, Any], threads: int = 1):
        import onnxruntime as ort

        self.directory = directory
        self.manifest = manifest
        files = manifest["files"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # one core by default: the deployment target
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self.vision = ort.InferenceSession(str(directory / files["vision"]), options, providers=providers)
        self.decoder = ort.InferenceSession(str(directory / files["decoder"]), options, providers=providers)
        # Memory-mapped: only the rows of tokens actually looked up are read into memory.
        self.embed_tokens = np.load(directory / files["embed_tokens"], mmap_mode="r")
        self.tokenizer = load_tokenizer(directory / files["tokenizer"])
        self.processor = Processor(
            self.tokenizer,
            manifest["image_size"],
            manifest["image_token_length"],
            manifest["config"]["lm_max_length"],
        )
        special = manifest["special_tokens"]
        self.image_token_id, self.pad_token_id, self.eos_token_id = (
            special["image"],
            special["pad"],
            special["eos"],
        )
        self.input_names = manifest["decoder_io"]["inputs"]
        self.n_layers, self.n_kv_heads, self.head_dim = (
            manifest["n_layers"],
            manifest["n_kv_heads"],
            manifest["head_dim"],
        )
        self.max_positions = manifest["max_positions"]
        # a retrieving model: its training pictures' answers go into the prompt, as in picovlm/retrieval.py
        self.retrieval = RetrievalIndex.load(directory) if manifest["config"].get("retrieval_k") else None
        # How answers are generated when a call does not say: the export's choice (picovlm export's
        # generation flags, kept in the manifest), else GenerationConfig's defaults.
        self.generation = GenerationConfig.from_dict(manifest.get("generation") or {})

    @classmethod
    def load(cls, directory: str | os.PathLike, threads: int = 1) -> Runtime:
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise PicovlmError(
                f"{directory} has no {MANIFEST_FILE}: it is not an exported folder; run "
                f"`picovlm export --model MODEL_DIR --out {directory}` first."
            )
        manifest = json.loads(path.read_text())
        if manifest.get("format") != "picovlm-onnx" or manifest.get("format_version") != 1:
            raise PicovlmError(f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
                               f"picovlm-onnx v1; re-export the model with this version of picovlm.")  # fmt: skip
        missing = [name for name in manifest["files"].values() if not (directory / name).is_file()]
        if missing:
            raise PicovlmError(f"{directory} lacks {missing}: the export is incomplete; export it again.")
        return cls(directory, manifest, threads)

    @property
    def quantization(self) -> str:
        q = self.manifest.get("quantization")
        return q["weights"] if q else "fp32"

    # --- Prompt -------------------------------------------------------------------------------------

    def image_embeddings(self, images: list[Image.Image]) -> np.ndarray:
        """(n, L, D) image embeddings: the vision tower and the projector."""
        return self.vision_outputs(images)[0]

    def vision_outputs(
        self, images: list[Image.Image], blank_images: bool = False, pooled: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One run of the vision graph: (n, L, D) image embeddings and, when `pooled`, the (n, D_vit)
        vision features mean-pooled over patches that fact heads saved before finding 28 read (else None).
        blank_images: pixels 0 (mid-grey after normalisation)."""
        if pooled and "vision_pooled" not in self.manifest.get("vision_io", {}).get("outputs", []):
            raise PicovlmError(f"{self.directory}: its vision graph has no pooled features (exported by an "
                               "older picovlm): export the model again.")  # fmt: skip
        pixels = self.processor.image_pixels(images)
        if blank_images:
            pixels = np.zeros_like(pixels)
        names = ["image_embeds", "vision_pooled"] if pooled else ["image_embeds"]
        outputs = self.vision.run(names, {"pixel_values": pixels})
        return outputs[0], outputs[1] if pooled else None

    def prompt_embeddings(
        self,
        images: list[Image.Image],
        question: str,
        blank_images: bool = False,
        neighbours: list[str] | None = None,
        image_embeds: np.ndarray | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """Prompt ids and their embeddings (1, T, D), image embeddings in place of the <|image|> tokens
        (`image_embeds` when the caller already ran the vision graph)."""
        ids = self.processor.encode_prompt(self.model_question(question, images, neighbours), len(images))
        return ids, self._embed(ids, images, blank_images, image_embeds)

    def model_question(
        self, question: str, images: list[Image.Image], neighbours: list[str] | None = None
    ) -> str:
        """The question as the model reads it: with retrieval, followed by the answers of its k nearest
        training pictures (the first k of `neighbours`, nearest first, when given: as the torch model
        slices the list copy_bias votes over)."""
        if self.retrieval is None or not images:
            return question
        if neighbours is None:
            (neighbours,) = self.retrieval.neighbour_answers(images[:1])
        return self.retrieval.prompt(question, neighbours)

    def _embed(
        self,
        ids: list[int],
        images: list[Image.Image],
        blank_images: bool = False,
        image_embeds: np.ndarray | None = None,
    ) -> np.ndarray:
        """(1, T, D) embeddings of `ids`; blank_images: pixels 0 (mid-grey after normalisation)."""
        embeds = np.asarray(self.embed_tokens[np.asarray(ids)], dtype=np.float32)[None]  # (1, T, D)
        if images:
            if image_embeds is None:
                image_embeds, _ = self.vision_outputs(images, blank_images)  # (n, L, D)
            slots = np.asarray(ids) == self.image_token_id
            embeds[0, slots] = image_embeds.reshape(-1, image_embeds.shape[-1])
        return embeds

    def answer_nll(self, images, question: str, answer: str, blank_images: bool = False) -> tuple[float, int]:
        """(summed negative log-likelihood in nats, token count) of `answer` and its end token after the
        prompt, teacher-forced: the tokens the trainer's loss counts. Evaluation's loss for an exported
        folder. blank_images: the pictures replaced by mid-grey (retrieval still sees the real ones)."""
        nll, n_tokens = self.answer_nll_at(images, question, answer, (1.0,), blank_images)
        return float(nll[0]), n_tokens

    def answer_nll_at(
        self, images, question: str, answer: str, temperatures: Sequence[float], blank_images: bool = False
    ) -> tuple[np.ndarray, int]:
        """`answer_nll` with the logits divided by each temperature: (summed nll per temperature, token
        count), from one pass through the decoder (evaluation's calibrated image gap)."""
        images = [open_image(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        ids, labels = self.processor.encode_turns(
            [(self.model_question(question, images), answer)], len(images)
        )
        supervised = [t for t, label in enumerate(labels) if label != IGNORE_INDEX]
        first, last = supervised[0], supervised[-1]  # one turn: the answer tokens are contiguous
        empty = np.zeros((1, self.n_kv_heads, 0, self.head_dim), np.float32)
        logits, cache = self._step(
            self._embed(ids[:first], images, blank_images),
            np.arange(first, dtype=np.int64)[None],
            [empty] * (2 * self.n_layers),
        )
        scales = 1.0 / np.asarray(temperatures, np.float64)[:, None]
        nll = np.zeros(len(temperatures))
        for t in range(first, last + 1):
            scaled = logits.astype(np.float64)[None] * scales  # (temperatures, V)
            top = scaled.max(axis=1)
            nll += top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)) - scaled[:, labels[t]]
            if t < last:
                token_embed = np.asarray(self.embed_tokens[[ids[t]]], dtype=np.float32)[None]  # (1, 1, D)
                logits, cache = self._step(token_embed, np.array([[t]], np.int64), cache)
        return nll, last - first + 1

    # --- Generation ---------------------------------------------------------------------------------

    def _step(
        self, embeds: np.ndarray, positions: np.ndarray, cache: list[np.ndarray]
    ) -> tuple[np.ndarray, list]:
        total = (cache[0].shape[2] if cache else 0) + embeds.shape[1]
        feed = {
            "inputs_embeds": embeds,
            "position_ids": positions,
            "attention_mask": np.ones((1, total), np.int64),
        }
        feed.update(zip(self.input_names[3:], cache))
        logits, *present = self.decoder.run(None, feed)
        return logits[0], present

    def generate_ids(
        self, images, question: str, generation: GenerationConfig | None = None
    ) -> Iterator[int]:
        """Yield new token ids one by one (the end token is not yielded). `generation`: default the
        runtime's (self.generation)."""
        options = generation or self.generation
        images = [open_image(im) for im in (images if isinstance(images, (list, tuple)) else [images])]
        neighbours = None  # with copy_bias, the neighbours it votes over; the prompt holds the first k
        weights = None  # their votes: 1/r by rank, or weighted by the fact heads (copy_fact_weight)
        image_embeds = None  # with heads that read the vision tower, from the one run that also feeds them
        if options.copy_bias:
            copy_options_check(options, self.retrieval)
            if images:
                wanted = max(options.copy_neighbours, self.retrieval.k)
                (rows,) = self.retrieval.neighbour_rows(images[:1], wanted)
                (neighbours,) = self.retrieval.answers_of([rows])
                if options.copy_fact_weight:
                    rows = rows[: options.copy_neighbours]
                    pooled = None
                    if not self.retrieval.facts_read_pictures:  # heads saved before finding 28
                        image_embeds, pooled = self.vision_outputs(images, pooled=True)
                        pooled = pooled[:1]
                    (support,) = self.retrieval.fact_support(images[:1], [rows], pooled)
                    weights = neighbour_weights(len(rows), support, options.copy_fact_weight)
        ids, embeds = self.prompt_embeddings(
            images, question, neighbours=neighbours, image_embeds=image_embeds
        )
        T = len(ids)
        max_new = min(options.max_new_tokens, self.max_positions - T)
        rng = np.random.default_rng(options.seed)
        empty = np.zeros((1, self.n_kv_heads, 0, self.head_dim), np.float32)
        logits, cache = self._step(embeds, np.arange(T, dtype=np.int64)[None], [empty] * (2 * self.n_layers))
        seen = list(ids)  # for the repetition penalty: the prompt and the answer so far, as in torch
        # copy_bias's sources: the neighbours' answers as the model would write them, as in torch
        votes = CopyVotes(
            [self.processor.encode_answer(a) for a in (neighbours or [])[: options.copy_neighbours]],
            weights=weights,
        )
        for step in range(max_new):
            if options.penalises_repetition:
                logits = apply_repetition_penalty(logits, seen, options.repetition_penalty)
            if options.copy_bias:
                logits = logits.copy()
                for token, vote in votes(seen[T:]).items():
                    logits[token] += options.copy_bias * vote
            token = sample_next_token(logits, options, rng)
            if options.stop_at_eos and token == self.eos_token_id:
                return
            seen.append(token)
            yield token
            if step == max_new - 1:
                return
            token_embed = np.asarray(self.embed_tokens[[token]], dtype=np.float32)[None]  # (1, 1, D)
            logits, cache = self._step(token_embed, np.array([[T + step]], np.int64), cache)

    def stream(
        self, image, question: str, generation: GenerationConfig | None = None, **options
    ) -> Iterator[str]:
        """Yield the answer's text as it grows (pieces never split a multi-byte character).

        `generation` (default: the runtime's) with keyword `options` over it, e.g. max_new_tokens=64.
        With probed_facts the answer comes in one piece at the end: its facts are restated once it is whole."""
        options = generation_config(generation or self.generation, **options)
        if options.probed_facts:
            yield self.answer(image, question, options)
            return
        pieces = AnswerStream(self.tokenizer)
        for token in self.generate_ids(image, question, options):
            piece = pieces.push(token)
            if piece:
                yield piece

    def answer(
        self,
        image,
        question: str = DEFAULT_QUESTION,
        generation: GenerationConfig | None = None,
        **options,
    ) -> str:
        """The whole answer as text, as the torch model's `answer` gives it; arguments as for `stream`."""
        options = generation_config(generation or self.generation, **options)
        if options.probed_facts:
            copy_options_check(options, self.retrieval)
        images = [open_image(im) for im in (image if isinstance(image, (list, tuple)) else [image])]
        answer = self.processor.decode_answer(list(self.generate_ids(images, question, options)))
        if options.probed_facts and images:
            (answer,) = self.retrieval.restate_facts([answer], images[:1], options.probed_facts)
        return answer
