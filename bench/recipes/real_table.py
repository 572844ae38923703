"""The real-data suite's table (docs/recipes.md "Real data"): one row per run of real_suite.sh.

python bench/recipes/real_table.py                       # print the table of real_results.jsonl
python bench/recipes/real_table.py --append RUN_DIR ...  # add a run (its eval/metrics.json, summary.json)
python bench/recipes/real_table.py --append RUN_DIR --eval eval-copy8 --overrides "--copy-bias 8" ...
    # the same run evaluated again into RUN_DIR/eval-copy8 (another generation config): row "RUN_DIR+copy8"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).with_name("real_results.jsonl")
KEYS = ("token_f1", "field_accuracy", "distinct_answer_share", "reference_distinct_answer_share",
        "copied_from_train_share", "image_gap_shuffled", "image_gap_shuffled_calibrated",
        "calibrated_temperature", "verdict_status",
        # evaluated since finding 42: the gaps' standard errors over the test objects, and how many
        "image_gap_shuffled_error", "image_gap_shuffled_calibrated_error", "objects")  # fmt: skip
MARGIN_KEYS = ("baseline_margin_token_f1", "baseline_margin_token_f1_error",
               "baseline_margin_field_accuracy", "baseline_margin_field_accuracy_error")  # fmt: skip


PLAIN_EVALS = ("eval", "eval-test")  # --out RUN/eval, or what `picovlm eval` writes without --out


def row_of(run_dir: Path, overrides: str, seed: int, eval_dir: str | None = None) -> dict:
    """A run's row from its eval folder: `eval_dir`, else whichever of PLAIN_EVALS it has. A folder
    of another name (the run evaluated again with other flags) names the row RUN+NAME."""
    eval_dir = eval_dir or next((d for d in PLAIN_EVALS if (run_dir / d).is_dir()), PLAIN_EVALS[0])
    models = json.loads((run_dir / eval_dir / "metrics.json").read_text())["models"]
    summary = json.loads((run_dir / "summary.json").read_text())
    final, best = models[0], models[1] if len(models) > 1 else None
    return {
        "run": run_dir.name + ("" if eval_dir in PLAIN_EVALS else "+" + eval_dir.removeprefix("eval-")),
        "data": Path(final["data"]).name, "seed": seed, "overrides": overrides,
        "steps": summary.get("steps"), "best_step": summary.get("best_step"),
        "best_metric": summary.get("best_metric"),
        "final": {k: final["metrics"].get(k) for k in KEYS},
        "best": {k: best["metrics"].get(k) for k in KEYS} if best else None,
        "lookups": {name: {**{k: b["metrics"].get(k) for k in ("token_f1", "field_accuracy")},
                           **{k: b["margin"].get(k) for k in MARGIN_KEYS if k in b.get("margin", {})}}
                    for name, b in final["baselines"].items()},
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| set | run | steps | token F1 | facts | best lookup F1 / facts | distinct (refs) | "
             "verbatim training answers | shuffled gap (calibrated) | best/ F1 / facts | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        f, b = r["final"], r["best"] or {}
        lookups = r["lookups"].values()  # none where a decoding probe was evaluated without them
        look_cell = (
            f"{max(v['token_f1'] for v in lookups):.3f} / {max(v['field_accuracy'] or 0 for v in lookups):.3f}"
            if lookups
            else "—"
        )
        best_cell = f"{b['token_f1']:.3f} / {b['field_accuracy']:.3f}" if b else "—"  # best/ not evaluated
        gap = f"{f['image_gap_shuffled']:+.2f}" + _error(f, "image_gap_shuffled")
        if f.get("image_gap_shuffled_calibrated") is not None:  # evaluated since finding 30
            calibrated = f"{f['image_gap_shuffled_calibrated']:+.2f}" + _error(
                f, "image_gap_shuffled_calibrated"
            )
            gap += f" ({calibrated} at T={f['calibrated_temperature']:g})"
        lines.append(
            f"| {r['data']} | {r['run']} | {r['steps']:,} | {f['token_f1']:.3f} | {f['field_accuracy']:.3f} | "
            f"{look_cell} | {f['distinct_answer_share']:.0%} "
            f"({f['reference_distinct_answer_share']:.0%}) | {f['copied_from_train_share']:.0%} | "
            f"{gap} | {best_cell} | "
            f"{f['verdict_status']} |"
        )
    return "\n".join(lines)


def _error(figures: dict, key: str) -> str:
    """The figure's standard error as " ± 0.03" where the row's eval measured it (finding 42), else ""."""
    error = figures.get(f"{key}_error")
    return "" if error is None else f" ± {error:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--append", type=Path, help="a run folder to add to real_results.jsonl")
    parser.add_argument("--overrides", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", help="the run's eval folder to read (default: eval, else eval-test)")
    args = parser.parse_args()
    if args.append:
        with RESULTS.open("a") as out:
            out.write(json.dumps(row_of(args.append, args.overrides, args.seed, args.eval)) + "\n")
        return
    print(table([json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]))


if __name__ == "__main__":
    main()
