"""Every way a retrieving model answers, on every validation row: one run, or two runs paired.
(docs/recipes.md, finding 40)

A run chooses how its model answers on the first 256 validation rows (picovlm.eval.choose). This
script answers all of a split with each of the choice's four ways and keeps the answers, with the
model's eight nearest training answers per row, in RUN/answer-ways-SPLIT.json (reused when present).
Rows are scored as the choice scores them (token F1 + the row's share of the facts: `row_scores`), and
every "±" is the paired standard error over the rows' objects, as the choice counts it.

    python bench/recipes/answer_ways.py consensus RUN DATA [--split validation]
    python bench/recipes/answer_ways.py compare RUN_A RUN_B DATA [--split validation]

consensus   each way's score beside three consensus answers (minimum Bayes risk under token F1):
            per row, the way's answer that shares the most words with the others ("consensus of the
            ways"), with the others and the nearest training answers at half weight ("ways +
            neighbours"), and the same with the four nearest training answers as candidates too
            ("+ as candidates"); and the nearest training answer itself
compare     two runs of one set (e.g. a training lever and the default, same seed, same day): each
            way's score in both and the difference, and the same for the way each run chose
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from picovlm.eval import metrics as M
from picovlm.eval.choose import generation_candidates, row_scores
from picovlm.eval.evaluate import generate_answers, load_items, load_train_split, score_answers
from picovlm.eval.facts import fact_parser_for
from picovlm.utils import atomic_write_text

NEIGHBOURS = 8


def answer_ways(run: Path, items, split: str) -> dict[str, list]:
    """{way: answers} for the choice's ways and {"neighbours": each row's nearest training answers}."""
    cache = run / f"answer-ways-{split}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from picovlm.model.vlm import VLM

    model = VLM.from_pretrained(run / "model")
    ways: dict[str, list] = {
        name: generate_answers(model, items, 16, generation=config)
        for name, config in generation_candidates(model)
    }
    ways["neighbours"] = model.retrieval.neighbour_answers([item.images[0] for item in items], NEIGHBOURS)
    atomic_write_text(cache, json.dumps(ways))
    return ways


def consensus(candidates: list[str], evidence: list[tuple[str, float]]) -> str:
    """The candidate with the highest weighted token F1 against the evidence (a candidate is usually
    among the evidence too: its F1 with itself is 1)."""
    return max(candidates, key=lambda c: sum(weight * M.token_f1(c, e) for e, weight in evidence))


class Scores:
    """Rows scored as the choice scores them, and the paired error over the rows' objects."""

    def __init__(self, items, extract_fields):
        self.items, self.extract_fields = items, extract_fields
        self.objects = [item.object_key for item in items]

    def of(self, answers: list[str]) -> np.ndarray:
        _, scored = score_answers(self.items, answers, None, self.extract_fields)
        return np.array(row_scores(scored, self.extract_fields))

    def error(self, a: np.ndarray, b: np.ndarray) -> float:
        return M.paired_standard_error(list(a - b), self.objects)


def consensus_report(ways: dict[str, list], scores: Scores) -> None:
    names = [name for name in ways if name != "neighbours"]
    rows = range(len(scores.items))
    mine = [[ways[name][i] for name in names] for i in rows]
    own = [[(answer, 1.0) for answer in answers] for answers in mine]  # the ways as evidence, full weight
    near = [[(answer, 0.5) for answer in ways["neighbours"][i]] for i in rows]
    variants = {name: ways[name] for name in names}
    variants["consensus of the ways"] = [consensus(mine[i], own[i]) for i in rows]
    variants["ways + neighbours"] = [consensus(mine[i], own[i] + near[i]) for i in rows]
    variants["+ as candidates"] = [
        consensus(mine[i] + ways["neighbours"][i][:4], own[i] + near[i]) for i in rows
    ]
    variants["nearest answer"] = [found[0] for found in ways["neighbours"]]
    scored = {name: scores.of(answers) for name, answers in variants.items()}
    best = scored[max(scored, key=lambda name: scored[name].mean())]
    keys = [item.image_key for item in scores.items]
    for name, s in scored.items():
        behind = (
            f" ({best.mean() - s.mean():.3f} ± {scores.error(best, s):.3f} behind)" if s is not best else ""
        )
        distinct = M.distinct_answer_share(variants[name], keys)
        print(f"  {name:<22} {s.mean():.3f}{behind} · distinct {distinct:.1%}")


def compare_report(runs: list[Path], ways: list[dict[str, list]], scores: Scores) -> None:
    names = [name for name in ways[0] if name != "neighbours" and name in ways[1]]
    a, b = ({name: scores.of(w[name]) for name in names} for w in ways)  # each way scored once per run
    print(f"{runs[0].name} - {runs[1].name}:")
    for name in names:
        print(f"  {name:<13} {a[name].mean():.3f} - {b[name].mean():.3f} = "
              f"{a[name].mean() - b[name].mean():+.3f} ± {scores.error(a[name], b[name]):.3f}")  # fmt: skip
    chosen = [json.loads((run / "summary.json").read_text())["generation"]["chosen"] for run in runs]
    x, y = a[chosen[0]], b[chosen[1]]
    print(f"  as chosen ({chosen[0]} / {chosen[1]}): {x.mean():.3f} - {y.mean():.3f} = "
          f"{x.mean() - y.mean():+.3f} ± {scores.error(x, y):.3f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["consensus", "compare"])
    parser.add_argument("paths", nargs="+", help="consensus: RUN DATA; compare: RUN_A RUN_B DATA")
    parser.add_argument("--split", default="validation", help="the rows to answer (never the test split)")
    args = parser.parse_args()
    expected = "RUN DATA" if args.command == "consensus" else "RUN_A RUN_B DATA"
    if len(args.paths) != len(expected.split()):
        parser.error(f"{args.command} takes {expected}")
    if args.split == "test":  # levers are compared on validation; the test split scores the one kept
        parser.error(
            "--split test: compare ways and runs on validation rows; score the test split with picovlm eval"
        )
    *runs, data = [Path(p) for p in args.paths]

    rows, items = load_items(data, args.split, None)
    scores = Scores(items, fact_parser_for(rows, load_train_split(data, "train")))
    print(f"{len(items)} rows of {data}/{args.split}; score = token F1 + facts, "
          f"± over {len(set(scores.objects))} objects")  # fmt: skip
    ways = [answer_ways(run, items, args.split) for run in runs]
    if args.command == "consensus":
        consensus_report(ways[0], scores)
    else:
        compare_report(runs, ways, scores)


if __name__ == "__main__":
    main()
