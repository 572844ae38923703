"""Would a vote whose strength follows the neighbours' similarity answer better? (docs/recipes.md, finding 38)

A retrieving model answers with one way for every row: greedy, or its neighbours' vote at one
copy_bias (picovlm.eval.choose). A picture whose nearest training picture is very like it might gain
more from copying than one whose neighbours are far. This script answers a model's validation rows
with each of the choice's four ways, scores every row as the choice does (token F1 + its share of
the facts: `row_scores`), and measures, before anything is built:

    correlation   between each vote's gain over greedy on a row and that row's top-1 similarity (the
                  cosine of the model's own index) or its margin (top-1 minus top-2)
    threshold     the best mean score of "way A below a similarity, way B above it", the threshold
                  picked on the same rows (in-sample, so an upper bound on what such a rule could add)

    python bench/recipes/vote_by_similarity.py RUN/model DATA [--split validation]
"""

from __future__ import annotations

import argparse

import numpy as np

from picovlm.data.cauldron import load_cauldron
from picovlm.eval.choose import CANDIDATES, row_scores
from picovlm.eval.evaluate import generate_answers, items_from_rows, score_answers
from picovlm.eval.facts import fact_parser_for
from picovlm.model.vlm import VLM


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a retrieving model folder (RUN/model)")
    parser.add_argument("data", help="its dataset folder")
    parser.add_argument("--split", default="validation", help="the rows to answer (never the test split)")
    args = parser.parse_args()

    model = VLM.from_pretrained(args.model)
    rows = load_cauldron(args.data, split=args.split)
    items = items_from_rows(rows)
    extract_fields = fact_parser_for(rows, load_cauldron(args.data, split="train"))
    base = model.generation.replace(copy_bias=0.0, copy_fact_weight=0.0, probed_facts=())
    scores = {}
    for name, options in CANDIDATES:
        answers = generate_answers(model, items, 16, generation=base.replace(**options))
        _, scored = score_answers(items, answers, None, extract_fields)
        scores[name] = np.array(row_scores(scored, extract_fields))

    similarities = model.retrieval.vectors_of([item.images[0] for item in items]) @ model.retrieval.table.T
    ranked = -np.sort(-similarities, axis=1)
    top1, margin = ranked[:, 0], ranked[:, 0] - ranked[:, 1]
    print(f"{args.model} on {len(items)} rows of {args.split!r}; mean score (token F1 + facts):")
    print("  " + " · ".join(f"{name} {s.mean():.4f}" for name, s in scores.items()))
    for name in list(scores)[1:]:
        gain = scores[name] - scores["greedy"]
        print(f"  {name} - greedy: correlation with the top-1 similarity {np.corrcoef(gain, top1)[0, 1]:+.3f}, "
              f"with the margin {np.corrcoef(gain, margin)[0, 1]:+.3f}")  # fmt: skip
    names = list(scores)
    for low, high in [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]:
        best, at = max(
            (np.where(top1 >= t, scores[high], scores[low]).mean(), t)
            for t in np.quantile(top1, np.linspace(0, 1, 21))
        )
        print(f"  {low} below / {high} above the best threshold (similarity {at:.3f}): {best:.4f}")


if __name__ == "__main__":
    main()
