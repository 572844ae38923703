"""Issue 5's acceptance check on the demo set: does `picovlm eval` tell a working model from a collapsed one?

The collapsed model is made on purpose: the same recipe trained on a copy of the demo set in which
every training answer is replaced by the most common one, so it can only ever say that sentence.
Both models are evaluated on the same held-out test scenes, next to the nearest-image lookup, into one
report; the script prints each model's verdict and key figures.

    python bench/collapse_check.py --data runs/demo/data --model runs/demo/run/model --out runs/collapse-check

`--model` is a trained model (e.g. the one `picovlm demo` leaves); without it, one is trained here
for `--minutes` too. Exit status 1 when the verdicts do not tell the two apart.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

from picovlm.config import DEFAULT_PRESET, TrainConfig, preset
from picovlm.data.cauldron import load_cauldron_splits, save_cauldron
from picovlm.eval.evaluate import evaluate
from picovlm.eval.report import write_report
from picovlm.train.loop import train


def collapsed_copy(data_dir: Path, out_dir: Path) -> str:
    """data_dir with every training answer replaced by the most common one; returns that answer."""
    from datasets import DatasetDict

    splits = load_cauldron_splits(data_dir)
    answers = collections.Counter(t["assistant"] for texts in splits["train"]["texts"] for t in texts)
    fixed = answers.most_common(1)[0][0]

    def one_answer(row):
        return {"texts": [{**t, "assistant": fixed} for t in row["texts"]]}

    splits["train"] = splits["train"].map(one_answer)
    save_cauldron(DatasetDict(splits), out_dir, overwrite=True)
    return fixed


def train_model(data_dir: Path, out_dir: Path, minutes: float, threads: int) -> Path:
    cfg = TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), max_minutes=minutes, threads=threads)
    train(preset(DEFAULT_PRESET), cfg)
    return out_dir / "model"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a demo set (picovlm data demo --out DIR)")
    parser.add_argument("--model", help="a model trained on it (default: train one for --minutes)")
    parser.add_argument("--out", default="runs/collapse-check")
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per model trained here")
    parser.add_argument("--items", type=int, default=100, help="held-out test scenes evaluated")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    started = time.perf_counter()

    fixed = collapsed_copy(data, out / "data-one-answer")
    print(f"collapsed training set: every answer is {fixed!r}")
    collapsed_model = train_model(out / "data-one-answer", out / "collapsed", args.minutes, args.threads)
    trained_model = (
        Path(args.model) if args.model else train_model(data, out / "trained", args.minutes, args.threads)
    )

    results = [
        evaluate(
            model, data, split="test", max_items=args.items, baseline="nearest", swap_items=32, name=name
        )
        for name, model in (("trained", trained_model), ("collapsed on purpose", collapsed_model))
    ]
    write_report(results, out / "eval", title="trained vs collapsed on purpose: held-out demo scenes")
    statuses = {}
    for result in results:
        m = result["metrics"]
        statuses[result["name"]] = m["verdict_status"]
        print(
            f"{result['name']:<22} token F1 {m['token_f1']:.3f}  field acc {m.get('field_accuracy', 0):.3f}  "
            f"distinct {m['distinct_answer_share']:.0%}  verdict: {m['verdict']}"
        )
    print(f"report: {out / 'eval' / 'report.html'}  ({time.perf_counter() - started:.0f} s)")
    (out / "verdicts.json").write_text(json.dumps(statuses, indent=2) + "\n")
    told_apart = statuses["trained"] == "healthy" and statuses["collapsed on purpose"] == "collapsed"
    return 0 if told_apart else 1


if __name__ == "__main__":
    raise SystemExit(main())
