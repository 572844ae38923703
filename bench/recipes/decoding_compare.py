"""Two evaluations of the same rows, paired: how a way of decoding moves the answers (docs/recipes.md,
finding 47).

    python bench/recipes/decoding_compare.py DATA RUN/eval-test RUN/eval-test-kw [--split test]

Each folder is what `picovlm eval --out` writes; the model rows of their predictions.jsonl must answer the
same rows of DATA's split. Prints, for A then B: token F1 and the share of facts stated right, each with
the paired difference B - A and its standard error over the rows' objects (`margin_over_lookup`, as
`picovlm eval` counts its leads over the lookups), and the made-up words: the share of the answers' words (runs of letters and
digits) that no training answer holds, and the share of answers with at least one.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from picovlm.eval.evaluate import load_items, load_train_split, margin_over_lookup, row_figures
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
    a, b = (model_answers(folder) for folder in (args.a, args.b))
    for name, answers in (("A", a), ("B", b)):
        if [row["reference"] for row in answers] != [item.reference for item in items]:
            raise SystemExit(
                f"{name}'s predictions do not answer the rows of {args.data}'s {args.split} split in order"
            )

    # The rows are eval's scored rows, so B's lead over A is counted as eval counts a lead over a lookup.
    figures_a, figures_b = row_figures(a, extract_fields), row_figures(b, extract_fields)
    margins = margin_over_lookup(items, figures_b, figures_a)
    for metric, name in (("token_f1", "token F1"), ("field_accuracy", "facts")):
        if metric in figures_a:
            lead, error = margins[f"baseline_margin_{metric}"], margins[f"baseline_margin_{metric}_error"]
            print(
                f"{name:10} {np.mean(figures_a[metric]):.3f} -> {np.mean(figures_b[metric]):.3f} "
                f"({lead:+.3f} ± {error:.3f})"
            )
    a, b = [row["answer"] for row in a], [row["answer"] for row in b]
    (words_a, rows_a), (words_b, rows_b) = made_up(a, known), made_up(b, known)
    print(f"made-up    {words_a:.1%} of words ({rows_a:.0%} of answers) -> {words_b:.1%} ({rows_b:.0%})")
    print(f"changed    {sum(x != y for x, y in zip(a, b))} of {len(a)} answers")


if __name__ == "__main__":
    main()
