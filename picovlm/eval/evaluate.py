"""Evaluate a model on a dataset split: loss, generated answers, metrics, collapse and image-reliance checks.

    evaluate(model_or_dir, data_dir, split="test")  ->  {"name", "metrics", "items", "baselines", ...}

What it measures, in order:
  1. loss per answer token on the split with the true images, with the images shuffled across rows, and
     with blank (mid-grey) images. The gaps (shuffled - true, blank - true) say how much the model uses
     its images: a model that ignores them scores the same loss whichever image it is shown;
  2. the loss on (a same-sized sample of) the training split, for the train-test gap;
  3. generated answers (batched, greedy by default) scored against the references with every metric of
     `picovlm.eval.metrics`, plus the share of answers that change when each image is swapped for
     another row's;
  4. optionally a nearest-neighbour baseline: each test image gets the answer of the most similar
     training image (32x32 pixels; and, given a model, its mean-pooled vision features), scored alike;
  5. the verdict in plain words (`collapse_verdict`).

A folder written by `picovlm export` (fp32 or int8) is evaluated through the torch-free runtime
(`picovlm.eval.exported`): its answers and losses are those of the deployed graphs; scoring, verdict
and report are this module's, as for a torch model.

`quick_eval(model, rows)` runs 1, 3 and 5 on a handful of rows in memory: the trainer's periodic check.
Only the first turn of each row is evaluated (question, reference answer).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from picovlm.errors import DataError, PicovlmError
from picovlm.eval import metrics as M
from picovlm.eval.facts import fact_parser_for
from picovlm.generation import GenerationConfig, generation_config
from picovlm.retrieval import PictureFeatures
from picovlm.utils import ProgressFn, no_progress


@dataclass
class EvalItem:
    images: list[Image.Image]
    question: str
    reference: str
    image_key: str  # content hash of the row's images: rows sharing an image share a key
    group: str = ""  # the row's `group` (its object: rows of one object move together), "" without one

    @property
    def object_key(self) -> str:
        """What the row shows: its `group`, else its picture. Rows with one key are one piece of
        evidence to every standard error (a way of answering gets an object right or wrong at once)."""
        return self.group or self.image_key


def image_key(images: Sequence[Image.Image]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def items_from_rows(rows) -> list[EvalItem]:
    """Cauldron rows (dicts with decoded images) -> EvalItems; rows without images or text are skipped."""
    items = []
    for row in rows:
        images = [im for im in (row.get("images") or []) if im is not None]
        texts = row.get("texts") or []
        if not images or not texts or not texts[0].get("assistant"):
            continue
        question, answer = texts[0].get("user") or "", texts[0]["assistant"]
        items.append(EvalItem(images, question, answer, image_key(images), row.get("group") or ""))
    return items


# --- Which image each row is shown -------------------------------------------------------------------


def shuffled_sources(items: Sequence[EvalItem], seed: int = 0) -> list[int]:
    """For each row, another row whose images it will be shown (same image count, never itself).

    Within each group of rows with the same number of images: a random cycle, so no row keeps its own.
    """
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(len(item.images), []).append(i)
    source = list(range(len(items)))
    rng = random.Random(seed)
    for members in groups.values():
        order = members[:]
        rng.shuffle(order)
        for position, row in enumerate(order):
            source[row] = order[(position + 1) % len(order)]
    return source


def _pixels(model, images: list[Image.Image], blank: bool) -> np.ndarray:
    pixels = model.processor.image_pixels(images)
    return np.zeros_like(pixels) if blank else pixels  # 0 after normalisation = mid-grey


# --- Loss --------------------------------------------------------------------------------------------


def loss_batches(
    model,
    items: Sequence[EvalItem],
    batch_size: int = 16,
    image_source: Sequence[int] | None = None,
    blank: bool = False,
):
    """Padded batches ({"input_ids", "labels", "pixel_values", "attention_mask"}) of `items`' question and
    reference answer, row i shown the images of row image_source[i] (or blank, mid-grey images)."""
    from picovlm.data.collate import pad_collate

    processor = model.processor
    for start in range(0, len(items), batch_size):
        samples = []
        for i in range(start, min(start + batch_size, len(items))):
            shown = items[image_source[i] if image_source is not None else i].images
            # with retrieval, the neighbours are those of the picture shown: they are part of the image
            (question,) = model.retrieval_questions([items[i].question], [shown])
            input_ids, labels = processor.encode_turns([(question, items[i].reference)], len(shown))
            samples.append(
                {"input_ids": input_ids, "labels": labels, "pixel_values": _pixels(model, list(shown), blank)}
            )
        yield pad_collate(samples, processor.pad_token_id)


def _on_model_device(model, batch: dict) -> dict:
    """The model's inputs and labels from a `loss_batches` batch, moved to where its weights are."""
    device = next(model.parameters()).device
    return {key: batch[key].to(device) for key in ("input_ids", "pixel_values", "attention_mask", "labels")}


@torch.no_grad()
def next_token_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, L-1, V) as float32, targets (B, L-1)) of one padded batch: the logits at each
    position against the token that follows it, -100 where it is not an answer token. For scripts
    that need more than `answer_loss`'s mean (per-token losses, other temperatures, answer ranking)."""
    inputs = _on_model_device(model, batch)
    labels = inputs.pop("labels")
    return model(**inputs).logits[:, :-1].float().cpu(), labels[:, 1:].cpu()


# The grid the calibrated image gap picks its temperature from (T < 1 surer, T > 1 less sure).
CALIBRATION_TEMPERATURES = (0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0)


@torch.no_grad()
def answer_nll_per_row(
    model,
    items: Sequence[EvalItem],
    temperatures: Sequence[float] = (1.0,),
    batch_size: int = 16,
    image_source: Sequence[int] | None = None,
    blank: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(summed cross-entropy (nats) of each row's answer tokens with the logits divided by each
    temperature, (rows, temperatures); each row's answer token count), row i shown the images of row
    image_source[i]: one pass over the rows for all the temperatures. Per row, so that a loss gap can
    carry its standard error over the rows' objects."""
    from picovlm.eval.exported import ExportedModel
    from picovlm.model.vlm import chunked_cross_entropy

    if isinstance(model, ExportedModel):  # the deployed graphs, through the runtime
        return model.answer_nll_per_row(items, temperatures, image_source, blank)

    nll, tokens = np.zeros((len(items), len(temperatures))), np.zeros(len(items))
    model.eval()
    head = model.decoder.lm_head.weight
    first = 0
    for batch in loss_batches(model, items, batch_size, image_source, blank):
        inputs = _on_model_device(model, batch)
        targets = inputs.pop("labels")[:, 1:]
        answers = targets != -100
        hidden = model.hidden_states(**inputs)[:, :-1]
        for b, answer in enumerate(answers):
            # only the answer positions' hidden states: all positions' logits would not fit a large vocabulary
            row_hidden, row_targets = hidden[b][answer], targets[b][answer]
            for k, temperature in enumerate(temperatures):
                # (h / T) W^T = logits / T; scaling the answer tokens' states, not the head, copies N x D, not V x D
                nll[first + b, k] = float(chunked_cross_entropy(row_hidden / temperature, head, row_targets))
            tokens[first + b] = int(answer.sum())
        first += len(answers)
    return nll, tokens


def answer_losses(
    model,
    items: Sequence[EvalItem],
    temperatures: Sequence[float] = (1.0,),
    batch_size: int = 16,
    image_source: Sequence[int] | None = None,
    blank: bool = False,
) -> np.ndarray:
    """Mean cross-entropy per answer token (nats) over all the rows' answer tokens, at each temperature
    (`answer_nll_per_row`)."""
    return mean_per_token(*answer_nll_per_row(model, items, temperatures, batch_size, image_source, blank))


def mean_per_token(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """`answer_nll_per_row`'s summed losses -> the mean per answer token at each temperature."""
    return nll.sum(axis=0) / max(tokens.sum(), 1)


def shuffled_gaps(losses: np.ndarray, losses_shuffled: np.ndarray) -> tuple[float, float, float]:
    """(gap at T=1, gap at the calibrated temperature, that temperature) from `answer_losses` over
    CALIBRATION_TEMPERATURES with the true and the shuffled images. The calibrated temperature is the
    one that gives the true images the lowest loss: an over-confident model's gap at T=1 is larger than
    what its picture earns (docs/recipes.md, finding 29)."""
    one, calibrated = CALIBRATION_TEMPERATURES.index(1.0), int(np.argmin(losses))
    return (
        float(losses_shuffled[one] - losses[one]),
        float(losses_shuffled[calibrated] - losses[calibrated]),
        CALIBRATION_TEMPERATURES[calibrated],
    )


def answer_loss(
    model,
    items: Sequence[EvalItem],
    batch_size: int = 16,
    image_source: Sequence[int] | None = None,
    blank: bool = False,
) -> float:
    """Mean cross-entropy per answer token (nats), row i shown the images of row image_source[i]."""
    return float(answer_losses(model, items, (1.0,), batch_size, image_source, blank)[0])


# --- Generation --------------------------------------------------------------------------------------


def generate_answers(
    model,
    items: Sequence[EvalItem],
    batch_size: int = 16,
    image_source: Sequence[int] | None = None,
    progress: ProgressFn = no_progress,
    **generation: Any,
) -> list[str]:
    """Batched answers (left padding, early stop per row inside model.generate)."""
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        batch = range(start, min(start + batch_size, len(items)))
        images = [items[image_source[i] if image_source is not None else i].images for i in batch]
        answers += model.answer(images, [items[i].question for i in batch], **generation)
        progress(len(answers), len(items), "generating")
    return answers


# --- The nearest-neighbour baseline --------------------------------------------------------------------


def pixel_features(items: Sequence[EvalItem], size: int = 32) -> np.ndarray:
    """Each row's first image as a 32x32 RGB vector, centred and unit-length (so dot product = cosine):
    the vectors a retrieving model looks up with (picovlm.retrieval), so the lookup is its floor."""
    from picovlm.retrieval import thumbnail_vectors

    return thumbnail_vectors([item.images[0] for item in items], size)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)


@torch.no_grad()
def vision_features(
    model, items: Sequence[EvalItem], batch_size: int = 32, center: bool = True
) -> np.ndarray:
    """Each row's first image through the model's own vision tower, mean-pooled over patches.

    center=True removes the mean over these rows (the direction every image shares) and makes each
    vector unit-length; with center=False the raw pooled features come back, for centring over a larger set.
    An exported folder has no separate ViT graph: its features are the vision graph's (ViT + projector).
    """
    from picovlm.eval.exported import ExportedModel

    if isinstance(model, ExportedModel):
        vectors = model.vision_features(items)
        return _unit(vectors - vectors.mean(axis=0, keepdims=True)) if center else vectors
    device = next(model.parameters()).device
    model.eval()
    chunks = []
    for start in range(0, len(items), batch_size):
        pixels = model.processor.image_pixels([item.images[0] for item in items[start : start + batch_size]])
        features = model.vision_encoder(torch.from_numpy(pixels).to(device)).mean(dim=1)  # (n, D_vit)
        chunks.append(features.float().cpu().numpy())
    vectors = np.concatenate(chunks)
    return _unit(vectors - vectors.mean(axis=0, keepdims=True)) if center else vectors


def nearest_answers(
    test_items: Sequence[EvalItem],
    train_items: Sequence[EvalItem],
    test_vectors: np.ndarray,
    train_vectors: np.ndarray,
) -> list[str]:
    """Each test row gets the answer of its most similar training row, among rows asking the same
    question when there are any (so a lookup never answers a different question)."""
    by_question: dict[str, list[int]] = {}
    for j, item in enumerate(train_items):
        by_question.setdefault(M.normalize_answer(item.question), []).append(j)
    everyone = np.arange(len(train_items))
    answers = []
    for i, item in enumerate(test_items):
        candidates = np.asarray(by_question.get(M.normalize_answer(item.question), everyone))
        best = candidates[int(np.argmax(train_vectors[candidates] @ test_vectors[i]))]
        answers.append(train_items[best].reference)
    return answers


@dataclass
class LookupTable:
    """A training split as a lookup table: its rows (question and answer, images dropped), each row's
    object (its `group`, else its picture), the features the retrieval index compares (thumbnails,
    and colours and strokes unless left out) and, with a model, their raw pooled vision features."""

    items: list[EvalItem]
    groups: list[str]
    features: PictureFeatures
    vision: np.ndarray | None

    @property
    def pixels(self) -> np.ndarray:
        return self.features.thumbnails


def lookup_index(train, model=None, chunk: int = 256, all_features: bool = True) -> LookupTable:
    """The LookupTable of a training split, read in chunks, so never all training images are in memory
    at once (all_features=False: the thumbnails alone)."""
    train_items, groups, features, vision = [], [], [], []
    for start in range(0, len(train), chunk):
        rows = []
        for row in train.select(range(start, min(start + chunk, len(train)))):
            for item in items_from_rows([row]):
                rows.append(item)
                groups.append(str(row.get("group") or item.image_key))
        if rows:
            images = [item.images[0] for item in rows]
            features.append(PictureFeatures.of(images, colours=all_features, gradients=all_features))
            if model is not None:
                vision.append(vision_features(model, rows, center=False))
            train_items += [EvalItem([], item.question, item.reference, item.image_key) for item in rows]
    if not train_items:
        raise DataError("the training split has no rows with an image and a question/answer turn")
    return LookupTable(train_items, groups, PictureFeatures.concatenate(features),
                       np.concatenate(vision) if vision else None)  # fmt: skip


def training_answers(train) -> M.TrainingAnswers:
    """Each training row's first answer, read from the text column alone (no image is decoded) and
    once for every comparison with them: the verbatim-copy share, its verdict, the facts' majority."""
    return M.TrainingAnswers([texts[0].get("assistant") or "" for texts in train["texts"] if texts])


def pixel_baseline(
    rows, train, extract_fields: M.ExtractFields | None = None, max_train_rows: int | None = None
) -> dict[str, Any]:
    """The nearest-pixels lookup scored on `rows` (cauldron rows): {"baseline_token_f1",
    "baseline_field_accuracy" (with extract_fields), "baseline_name"}, the keys the verdict reads.

    It does not depend on the model, so training computes it once and logs it with every answer check.
    max_train_rows: look up among at most this many training rows, spread over the split (a cheap start
    on a large mix; `picovlm eval` uses all of them)."""
    if max_train_rows is not None and len(train) > max_train_rows:
        stride = len(train) / max_train_rows
        train = train.select([int(k * stride) for k in range(max_train_rows)])
    items = items_from_rows(rows)
    table = lookup_index(train, all_features=False)
    train_answers = [item.reference for item in table.items]
    looked_up = nearest_answers(items, table.items, pixel_features(items), table.pixels)
    metrics, _ = score_answers(items, looked_up, train_answers, extract_fields)
    baseline = {"baseline_token_f1": metrics["token_f1"], "baseline_name": "nearest-pixels"}
    if "field_accuracy" in metrics:
        baseline["baseline_field_accuracy"] = metrics["field_accuracy"]
    return baseline


# --- Scoring -------------------------------------------------------------------------------------------


def score_answers(
    items: Sequence[EvalItem],
    answers: Sequence[str],
    train_answers: Sequence[str] | M.TrainingAnswers | None = None,
    extract_fields: M.ExtractFields | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per-item rows) for a list of answers to `items`."""
    references = [item.reference for item in items]
    metrics = M.generation_metrics(
        answers,
        references,
        questions=[item.question for item in items],
        image_keys=[item.image_key for item in items],
        train_answers=train_answers,
        extract_fields=extract_fields,
    )
    rows = [
        {
            "index": i,
            "image_key": item.image_key,
            "question": item.question,
            "reference": item.reference,
            "answer": answer,
            **M.item_scores(answer, item.reference),
        }
        for i, (item, answer) in enumerate(zip(items, answers))
    ]
    return metrics, rows


def row_figures(
    scored: Sequence[dict[str, Any]], extract_fields: M.ExtractFields | None
) -> dict[str, list[float]]:
    """Each row's part of the answers' metrics, from `score_answers`' rows: {"token_f1"} and, with a
    fact parser, {"field_accuracy"} (`M.fact_shares_per_row`); each list's mean is the metric, so a
    row-by-row difference of two such lists is a paired difference of the metric."""
    figures = {"token_f1": [row["token_f1"] for row in scored]}
    if extract_fields is not None:
        answers, references = [row["answer"] for row in scored], [row["reference"] for row in scored]
        figures["field_accuracy"] = M.fact_shares_per_row(answers, references, extract_fields)
    return figures


def image_reliance(
    model,
    items: Sequence[EvalItem],
    answers: Sequence[str] | None = None,
    batch_size: int = 16,
    swap_items: int | None = 64,
    seed: int = 0,
    **generation: Any,
) -> dict[str, float]:
    """Loss with true / shuffled / blank images, their gaps, and how many answers change with the image.

    The shuffled gap comes twice: as the model answers (T=1) and with the logits divided by the
    temperature of CALIBRATION_TEMPERATURES that gives these rows' true images the lowest loss
    (`calibrated_temperature`, fitted on the rows it scores), each with its standard error over the
    rows' objects (`objects`: their `group`, else their picture; M.clustered_standard_error), so a
    small test split says how far its gap can be trusted.

    `answers` are the answers already generated with the true images (regenerated if None); the swap
    check regenerates the first `swap_items` rows with another row's image.
    """
    source = shuffled_sources(items, seed)
    grid = CALIBRATION_TEMPERATURES
    nll, tokens = answer_nll_per_row(model, items, grid, batch_size)
    nll_shuffled, _ = answer_nll_per_row(model, items, grid, batch_size, image_source=source)
    losses, losses_shuffled = mean_per_token(nll, tokens), mean_per_token(nll_shuffled, tokens)
    one = grid.index(1.0)  # the model as it answers
    loss, loss_shuffled = float(losses[one]), float(losses_shuffled[one])
    loss_blank = answer_loss(model, items, batch_size, blank=True)
    gap, gap_calibrated, temperature = shuffled_gaps(losses, losses_shuffled)
    objects = [item.object_key for item in items]

    def gap_error(k: int) -> float:  # over the rows' objects, each row weighed by its answer tokens
        return M.clustered_standard_error(list(nll_shuffled[:, k] - nll[:, k]), objects, list(tokens))

    result = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "loss_shuffled_images": loss_shuffled,
        "loss_blank_images": loss_blank,
        "image_gap_shuffled": gap,
        "image_gap_shuffled_error": gap_error(one),
        "image_gap_blank": loss_blank - loss,
        "calibrated_temperature": temperature,
        "image_gap_shuffled_calibrated": gap_calibrated,
        "image_gap_shuffled_calibrated_error": gap_error(grid.index(temperature)),
        "objects": len(set(objects)),
    }
    n_swap = len(items) if swap_items is None else min(swap_items, len(items))
    if n_swap >= 2:
        subset = list(items[:n_swap])
        sub_source = shuffled_sources(subset, seed)
        if answers is None:
            answers = generate_answers(model, subset, batch_size, **generation)
        swapped = generate_answers(model, subset, batch_size, image_source=sub_source, **generation)
        norm = M.normalize_answer
        result["answers_changed_share"] = sum(norm(a) != norm(b) for a, b in zip(answers, swapped)) / n_swap
        result["reference_answers_changed_share"] = (
            sum(norm(subset[i].reference) != norm(subset[sub_source[i]].reference) for i in range(n_swap))
            / n_swap
        )
    return result


def add_verdict(metrics: dict[str, Any]) -> dict[str, Any]:
    metrics["verdict_status"], metrics["verdict"] = M.collapse_verdict(metrics)
    return metrics


ANSWER_TOKEN_MARGIN = 8  # room past the longest reference: a longer answer is a finding, not a cut


def answer_token_budget(model, items: Sequence[EvalItem]) -> int:
    """Tokens to generate so no answer as long as the longest reference is cut short."""
    encode = model.processor.tokenizer.encode
    return max(len(encode(item.reference)) for item in items) + ANSWER_TOKEN_MARGIN


def quick_eval(
    model,
    rows,
    train_answers: Sequence[str] | M.TrainingAnswers | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    extract_fields: M.ExtractFields | None = None,
    image_checks: bool = True,
    baseline: dict[str, Any] | None = None,
    **generation: Any,
) -> dict[str, Any]:
    """A small in-training check: flat metrics (all numbers but "verdict", "verdict_status", "top_answer",
    "baseline_name").

    `rows` are cauldron rows with decoded images (a few dozen held-out rows is enough to see a collapse).
    max_new_tokens None: the longest reference answer's token count plus a margin, so a right answer is
    never cut short (a fixed 48 cut the 50-word pair answers). baseline: `pixel_baseline(rows, ...)`,
    computed once by the caller; the verdict then says when the model is below the lookup. Leaves the
    model in the mode (train/eval) it found it in.
    """
    was_training = model.training
    items = items_from_rows(rows)
    if not items:
        raise DataError("quick_eval got no usable rows (each needs an image and a question/answer turn)")
    if max_new_tokens is None:
        max_new_tokens = answer_token_budget(model, items)
    try:
        answers = generate_answers(model, items, batch_size, max_new_tokens=max_new_tokens, **generation)
        metrics, _ = score_answers(items, answers, train_answers, extract_fields)
        top = metrics.pop("top_answers")
        metrics["top_answer"] = top[0][0] if top else ""
        if image_checks:
            metrics.update(
                image_reliance(model, items, answers, batch_size, max_new_tokens=max_new_tokens, **generation)
            )
    finally:
        model.train(was_training)
    return add_verdict({**metrics, **(baseline or {})})


# --- The whole evaluation ---------------------------------------------------------------------------


def load_items(data_dir, split: str, max_items: int | None, progress: ProgressFn = no_progress):
    """(the split's first max_items rows, their EvalItems); a split without usable rows is an error."""
    from picovlm.data.cauldron import load_cauldron

    dataset = load_cauldron(data_dir, split=split, max_rows=max_items)
    progress(0, len(dataset), f"reading {split}")
    items = items_from_rows(dataset)
    if not items:
        raise DataError(f"{data_dir} split {split!r} has no rows with an image and a question/answer turn")
    return dataset, items


def load_train_split(data_dir, train_split: str | None):
    """The training split; None when there is none or it is empty (the train-side metrics are skipped)."""
    from picovlm.data.cauldron import load_cauldron

    if not train_split:
        return None
    try:
        train = load_cauldron(data_dir, split=train_split)
    except DataError:
        return None
    return train if len(train) else None


def load_model(path: str | Path, device: str = "cpu", threads: int | None = None):
    """A folder from `picovlm export` (manifest.json) as an ExportedModel, else a torch model
    (save_pretrained folder or Hub id)."""
    from picovlm.eval.exported import ExportedModel, is_exported_dir

    if is_exported_dir(path):
        return ExportedModel.load(path, threads=threads or 1)
    directory = Path(path)
    if directory.is_dir() and not (directory / "config.json").is_file():
        raise PicovlmError(
            f"{directory} is not a model folder: it has neither config.json (a folder written by `picovlm "
            f"train` or save_pretrained) nor manifest.json (a folder written by `picovlm export`)."
        )
    from picovlm.model.vlm import VisionLanguageModel

    return VisionLanguageModel.from_pretrained(path, device=device)


def evaluate(
    model_dir_or_model,
    data_dir: str | Path,
    split: str = "test",
    train_split: str | None = "train",
    max_items: int | None = None,
    batch_size: int = 16,
    generation: GenerationConfig | None = None,
    baseline: str | None = None,
    extract_fields: M.ExtractFields | str | None = "auto",
    swap_items: int | None = 64,
    name: str | None = None,
    thumbnails: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    progress: ProgressFn = no_progress,
    **generation_options: Any,
) -> dict[str, Any]:
    """Evaluate one model (a folder written by save_pretrained or by `picovlm export`, or a model object)
    on data_dir/split. An exported folder is answered and scored through the torch-free runtime
    (`picovlm.eval.exported`; `threads`: its onnxruntime threads, default 1); all else is shared.

    Returns {"name", "model", "data", "split", "metrics", "items", "baselines", "thumbnails"}, the input
    of `picovlm.eval.report.write_report`. baseline="nearest" adds the nearest-neighbour lookups, each
    {"metrics", "items", "margin" (the model's lead over it: margin_over_lookup)}.
    `train_split=None` skips the train loss, copy rate and baseline. `swap_items` caps the rows
    regenerated with swapped images (None: all). Answers are generated with `generation` (default: an
    exported folder's own config, else GenerationConfig()) and keyword options over it (max_new_tokens=16).
    """
    from picovlm.eval.report import thumbnail_data_uri

    if baseline not in (None, "nearest"):
        raise PicovlmError(f"unknown baseline {baseline!r}: the only baseline is 'nearest'")
    if isinstance(model_dir_or_model, (str, Path)):
        model_path = str(model_dir_or_model)
        model = load_model(model_dir_or_model, device=device, threads=threads)
        name = name or Path(model_dir_or_model).name
    else:
        model, model_path = model_dir_or_model, None
        name = name or "model"
    backend = getattr(model, "backend", "torch")
    if backend != "torch" and backend not in name:  # side by side with torch models, say which is which
        name = f"{name} ({backend})"
    if model.processor is None:
        raise PicovlmError(f"{model_path or 'the model'} has no tokenizer: save it with its tokenizer.json")
    config = generation_config(generation or getattr(model, "generation", None), **generation_options)
    generation = {"generation": config}  # what generate_answers and image_reliance pass to model.answer

    dataset, items = load_items(data_dir, split, max_items, progress)
    train = load_train_split(data_dir, train_split)
    if extract_fields == "auto":  # the facts' values are learned from both splits
        extract_fields = fact_parser_for(dataset, train)
    # the model's answers and the lookups are compared with the same training answers
    train_answers = training_answers(train) if train is not None else None

    answers = generate_answers(model, items, batch_size, progress=progress, **generation)
    metrics, rows = score_answers(items, answers, train_answers, extract_fields)
    if train is not None:
        # test rows whose picture (or answer) is also a training row's: their scores measure memory
        from picovlm.data.leakage import overlap_with_training

        metrics.update(overlap_with_training(train, dataset, split, train_split).metrics())
    progress(len(items), len(items), "image-reliance checks")
    metrics.update(image_reliance(model, items, answers, batch_size, swap_items, **generation))
    if train is not None:
        # As many training rows as test rows, spread over the split: enough for the gap, cheap to compute.
        step = max(1, len(train) // len(items))
        sample = items_from_rows(train.select(range(0, len(train), step)[: len(items)]))
        metrics["train_loss"] = answer_loss(model, sample, batch_size)
        metrics["train_test_loss_gap"] = M.train_test_loss_gap(metrics["train_loss"], metrics["loss"])

    baselines: dict[str, Any] = {}
    if baseline == "nearest" and train is not None:
        progress(len(items), len(items), "nearest-neighbour baseline")
        baselines = nearest_baselines(model, items, train, train_answers, extract_fields)
        ours = row_figures(rows, extract_fields)
        for lookup in baselines.values():  # how far ahead of each lookup the model is, and how surely
            lookup["margin"] = margin_over_lookup(items, ours, row_figures(lookup["items"], extract_fields))
        metrics.update(best_baseline(baselines))
        metrics.update(baselines[metrics["baseline_name"]]["margin"])
    elif baseline == "nearest":
        raise DataError(f"--baseline nearest needs a training split: {data_dir} has no split {train_split!r}")

    result = {
        "name": name,
        "model": model_path,
        "backend": backend,
        "data": str(data_dir),
        "split": split,
        "generation": config.to_dict(),
        "metrics": add_verdict(metrics),
        "items": rows,
        "baselines": baselines,
        "thumbnails": {},
    }
    if thumbnails:
        for item in items:
            if item.image_key not in result["thumbnails"]:
                result["thumbnails"][item.image_key] = thumbnail_data_uri(item.images[0])
    return result


def lookup_weights(model, table: LookupTable) -> tuple[float, float]:
    """(colour weight, stroke weight) of the `nearest-index` lookup: the model's own index's, so the
    lookup is the one its answers start from; for a model that retrieves nothing, or whose index
    compares thumbnails alone (saved before colours counted), the weights training would choose on this
    split (picovlm.retrieval.choose_weights)."""
    from picovlm.retrieval import choose_weights

    index = getattr(model, "retrieval", None)
    if index is not None and (index.colour_weight or index.gradient_weight):
        return index.colour_weight, index.gradient_weight
    choice = choose_weights(table.features, [item.reference for item in table.items], table.groups)
    return choice.colour_weight, choice.gradient_weight


def nearest_baselines(
    model, items: Sequence[EvalItem], train, train_answers, extract_fields: M.ExtractFields | None
) -> dict[str, Any]:
    """The nearest-neighbour lookup in three spaces, each scored like the model: {"nearest-pixels" (the
    32x32 thumbnail), "nearest-index" (thumbnails, colours and strokes weighted as the model's index
    finds neighbours: lookup_weights), "nearest-vision" (the model's pooled ViT features)} ->
    {"metrics" (with their verdict), "items"}."""
    table = lookup_index(train, model)
    weights = lookup_weights(model, table)
    test_features = PictureFeatures.of([item.images[0] for item in items])
    test_vision = vision_features(model, items, center=False)
    vision_mean = table.vision.mean(axis=0)  # the direction every image shares
    spaces = {
        "nearest-pixels": (test_features.thumbnails, table.pixels),
        "nearest-index": (test_features.vectors(*weights), table.features.vectors(*weights)),
        "nearest-vision": (_unit(test_vision - vision_mean), _unit(table.vision - vision_mean)),
    }
    baselines = {}
    for baseline_name, (test_vectors, train_vectors) in spaces.items():
        looked_up = nearest_answers(items, table.items, test_vectors, train_vectors)
        b_metrics, b_rows = score_answers(items, looked_up, train_answers, extract_fields)
        baselines[baseline_name] = {"metrics": add_verdict(b_metrics), "items": b_rows}
    return baselines


def best_baseline(baselines: dict[str, Any]) -> dict[str, Any]:
    """The stronger lookup's scores under the keys the verdict reads ("baseline_token_f1",
    "baseline_name", "baseline_field_accuracy" where the rows have facts)."""
    best = max(baselines, key=lambda b: baselines[b]["metrics"]["token_f1"])
    scores = {"baseline_token_f1": baselines[best]["metrics"]["token_f1"], "baseline_name": best}
    if "field_accuracy" in baselines[best]["metrics"]:
        scores["baseline_field_accuracy"] = baselines[best]["metrics"]["field_accuracy"]
    return scores


def margin_over_lookup(
    items: Sequence[EvalItem], ours: dict[str, list[float]], theirs: dict[str, list[float]]
) -> dict[str, float]:
    """The model's lead over a lookup answering the same rows (each side's `row_figures`), with the
    standard error of that paired difference over the rows' objects: {"baseline_margin_token_f1",
    "baseline_margin_token_f1_error"} and, where the rows have facts, {"baseline_margin_field_accuracy",
    "baseline_margin_field_accuracy_error"}. On a test split of a few dozen objects a lead below its
    error is one the split cannot tell from a run's luck (docs/eval.md)."""
    objects = [item.object_key for item in items]
    margins = {}
    for metric, per_row in ours.items():
        difference = [a - b for a, b in zip(per_row, theirs[metric])]
        margins[f"baseline_margin_{metric}"] = sum(difference) / len(difference)
        margins[f"baseline_margin_{metric}_error"] = M.paired_standard_error(difference, objects)
    return margins


def evaluate_many(
    models: Sequence[str | Path],
    data_dir: str | Path,
    progress_for: Callable[[str], ProgressFn] | None = None,
    **options,
) -> list[dict[str, Any]]:
    """evaluate() for several model folders on one split (e.g. all runs of a sweep), for one report.

    Folder names that repeat (run1/final, run2/final) are disambiguated with their parent folder.
    """
    names = [Path(m).name for m in models]
    results = []
    for model, short in zip(models, names):
        label = f"{Path(model).parent.name}/{short}" if names.count(short) > 1 else short
        progress = progress_for(label) if progress_for else no_progress
        results.append(evaluate(model, data_dir, name=label, progress=progress, **options))
    return results
