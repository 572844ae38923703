"""Two evaluations of the same rows, paired: how a way of decoding moves the answers (docs/recipes.md,
finding 47).

    python bench/recipes/decoding_compare.py DATA RUN/eval-test RUN/eval-test-kw [--split test]

Each folder is what `picovlm eval --out` writes; the model rows of their predictions.jsonl must answer the
same rows of DATA's split. Prints, for A then B: token F1 and the share of facts stated right, each with
the paired difference B - A and its standard error over the rows' objects (as `picovlm eval` counts its
leads over the lookups), and the made-up words: the share of the answers' words (runs of letters and
digits) that no training answer holds, and the share of answers with at least one.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from picovlm.eval import metrics as M
from picovlm.eval.evaluate import load_items, load_train_split
from picovlm.eval.facts import fact_parser_for

WORD = re.compile(r"[^\W_]+")


def model_answers(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return [row for row in rows if row["model"] == "model"]  # the lookups' rows carry "model/<lookup>"


def made_up(answers: list[str], known: set[str]) -> tuple[float, float]:
    """(share of the words that no training answer holds, share of the answers with such a word)."""
    words = [WORD.findall(answer) for answer in answers]
    unknown = [sum(word not in known for word in ws) for ws in words]
    return sum(unknown) / max(1, sum(map(len, words))), float(np.mean([n > 0 for n in unknown]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data")
    parser.add_argument("a", type=Path, help="eval folder A (e.g. the run's own way of answering)")
    parser.add_argument("b", type=Path, help="eval folder B (the same model, another way of decoding)")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    rows, items = load_items(args.data, args.split, None)
    train = load_train_split(args.data, "train")
    extract_fields = fact_parser_for(rows, train)
    known = {word for texts in train["texts"] for turn in texts for word in WORD.findall(turn["assistant"])}
    references = [item.reference for item in items]
    objects = [item.object_key for item in items]
    a, b = (model_answers(folder) for folder in (args.a, args.b))
    for name, answers in (("A", a), ("B", b)):
        if [row["reference"] for row in answers] != references:
            raise SystemExit(
                f"{name}'s predictions do not answer the rows of {args.data}'s {args.split} split in order"
            )
    a, b = [row["answer"] for row in a], [row["answer"] for row in b]

    scores = {"token F1": lambda answers: [M.token_f1(p, r) for p, r in zip(answers, references)]}
    if extract_fields is not None:
        scores["facts"] = lambda answers: M.fact_shares_per_row(answers, references, extract_fields)
    for name, score in scores.items():
        first, second = np.array(score(a)), np.array(score(b))
        error = M.paired_standard_error(list(second - first), objects)
        print(
            f"{name:10} {first.mean():.3f} -> {second.mean():.3f} ({(second - first).mean():+.3f} ± {error:.3f})"
        )
    (words_a, rows_a), (words_b, rows_b) = made_up(a, known), made_up(b, known)
    print(f"made-up    {words_a:.1%} of words ({rows_a:.0%} of answers) -> {words_b:.1%} ({rows_b:.0%})")
    print(f"changed    {sum(x != y for x, y in zip(a, b))} of {len(a)} answers")


if __name__ == "__main__":
    main()
