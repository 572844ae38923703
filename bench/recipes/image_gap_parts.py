"""Where does a model's shuffled-image gap come from, and how much of it is only confidence?

docs/recipes.md finding 29. `picovlm eval` reports one figure: the loss per answer token with each row
shown another row's picture, minus the loss with its own (`image_gap_shuffled`, the same shuffle here).
This script splits that gap by the part of the answer (its first sentence, where a set's answers name
the object and its facts, and the rest) and recomputes it with the logits divided by a temperature T:
T > 1 makes the model less sure, T < 1 surer. The T that minimises the loss with the true pictures is
the model's calibrated confidence (fitted on the rows it scores, so a little optimistic); a gap that
falls towards 0 there came from over-confidence, not from reading the picture.

    python bench/recipes/image_gap_parts.py RUN/model DATA_DIR [--split test]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from picovlm.data.cauldron import load_cauldron
from picovlm.eval.evaluate import (
    CALIBRATION_TEMPERATURES,
    items_from_rows,
    loss_batches,
    next_token_logits,
    shuffled_sources,
)
from picovlm.model.vlm import VisionLanguageModel


@torch.no_grad()
def token_losses(model, items, image_source, temperatures) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row: (its answer's token ids, their losses in nats (len(temperatures), tokens))."""
    rows = []
    for batch in loss_batches(model, items, batch_size=8, image_source=image_source):
        logits, targets = next_token_logits(model, batch)
        for r in range(targets.shape[0]):
            answer = targets[r] != -100
            row_logits, row_targets = logits[r][answer], targets[r][answer]
            losses = [
                -torch.log_softmax(row_logits / t, dim=-1).gather(-1, row_targets[:, None])[:, 0].numpy()
                for t in temperatures
            ]
            rows.append((row_targets.numpy(), np.stack(losses)))
    return rows


def first_sentence_length(tokenizer, ids: np.ndarray) -> int:
    """Answer tokens up to and including the first one that holds a full stop."""
    pieces = [tokenizer.decode([int(i)]) for i in ids]
    return next((k + 1 for k, piece in enumerate(pieces) if "." in piece), len(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    model = VisionLanguageModel.from_pretrained(args.model)
    model.eval()
    items = items_from_rows(load_cauldron(args.data, split=args.split))
    true = token_losses(model, items, None, CALIBRATION_TEMPERATURES)
    shuffled = token_losses(model, items, shuffled_sources(items, seed=0), CALIBRATION_TEMPERATURES)
    cuts = [first_sentence_length(model.processor.tokenizer, ids) for ids, _ in true]

    def part(select) -> tuple[np.ndarray, np.ndarray, int]:
        a = np.concatenate([select(x, c) for (_, x), c in zip(true, cuts)], axis=1)
        b = np.concatenate([select(x, c) for (_, x), c in zip(shuffled, cuts)], axis=1)
        return a.mean(axis=1), b.mean(axis=1), a.shape[1]

    parts = {
        "whole answer": part(lambda x, c: x),
        "first sentence": part(lambda x, c: x[:, :c]),
        "the rest": part(lambda x, c: x[:, c:]),
    }
    total_tokens = parts["whole answer"][2]
    best = int(np.argmin(parts["whole answer"][0]))
    print(f"{args.model} on {args.split}: {len(items)} rows, {total_tokens} answer tokens")
    print("temperature | loss | loss, shuffled pictures | gap")
    for k, t in enumerate(CALIBRATION_TEMPERATURES):
        loss, loss_shuffled, _ = parts["whole answer"]
        mark = "  <- lowest loss" if k == best else ""
        print(f"{t:11.1f} | {loss[k]:.3f} | {loss_shuffled[k]:.3f} | {loss_shuffled[k] - loss[k]:+.3f}{mark}")
    one = CALIBRATION_TEMPERATURES.index(1.0)
    print(f"part | tokens | gap at T=1 (share of the whole gap) | gap at T={CALIBRATION_TEMPERATURES[best]}")
    for name, (loss, loss_shuffled, n) in parts.items():
        share = (loss_shuffled[one] - loss[one]) * n / total_tokens
        print(
            f"{name} | {n} | {loss_shuffled[one] - loss[one]:+.3f} ({share:+.3f}) | "
            f"{loss_shuffled[best] - loss[best]:+.3f}"
        )


if __name__ == "__main__":
    main()
