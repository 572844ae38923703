"""What int8 quantisation does to answers: fp32 and int8 graphs answer the same demo scenes, scored alike.

Scores come from the evaluation module (`picovlm.eval.metrics`): token F1 and exact match against the
reference answers, plus how often the int8 answer is identical to the fp32 one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

DEMO_EVAL_SEED = 1  # scenes drawn with another seed than the default training data (seed 0)


def demo_items(n: int, seed: int = DEMO_EVAL_SEED) -> list[tuple[Image.Image, str, str]]:
    """n (image, question, reference answer) demo scenes."""
    from picovlm.data.demo import make_demo_row

    items = []
    for index in range(n):
        row = make_demo_row(seed, index)
        image = Image.open(io.BytesIO(row["images"][0]["bytes"]))
        items.append((image, row["texts"][0]["user"], row["texts"][0]["assistant"]))
    return items


def score_answers(answers: list[str], references: list[str]) -> dict[str, float]:
    from picovlm.eval.metrics import exact_match, token_f1

    n = max(len(answers), 1)
    return {
        "token_f1": sum(token_f1(a, r) for a, r in zip(answers, references)) / n,
        "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references)) / n,
    }


def compare_on_demo(fp32_dir: Path, int8_dir: Path, n_items: int, max_new_tokens: int = 96) -> dict[str, Any]:
    """Greedy answers of both exports on n demo scenes: metrics before (fp32) and after (int8)."""
    from picovlm.runtime import Runtime

    items = demo_items(n_items)
    references = [reference for _, _, reference in items]
    answers = {}
    for label, directory in (("fp32", fp32_dir), ("int8", int8_dir)):
        runtime = Runtime.load(directory)
        answers[label] = [runtime.answer(im, q, max_new_tokens=max_new_tokens) for im, q, _ in items]
    same = sum(a == b for a, b in zip(answers["fp32"], answers["int8"])) / max(n_items, 1)
    return {
        "items": n_items,
        "fp32": score_answers(answers["fp32"], references),
        "int8": score_answers(answers["int8"], references),
        "int8_same_answer_as_fp32": same,
    }
