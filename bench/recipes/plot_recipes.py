"""Curves for docs/recipes.md: train and val loss of each recipe run against wall-clock seconds.

    python bench/recipes/plot_recipes.py --runs p32 base224 px112 --out docs/recipes/demo_curves.png

Reads runs/recipes/<name>/metrics.jsonl (written by the trainer). The x axis is cumulative step time
plus data time, so recipes with cheaper steps show how much further they get in the same budget.
Runs that logged the in-training answer check (gen_eval_interval) get a third panel: field accuracy
and distinct answers on 32 validation rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_curve(metrics_path: Path) -> dict[str, list[float]]:
    curve: dict[str, list[float]] = {"t": [], "loss": [], "val_t": [], "val_loss": [], "gen_t": [],
                                     "gen_field_accuracy": [], "gen_distinct_answer_share": []}  # fmt: skip
    elapsed = 0.0
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        elapsed += row.get("step_time_s", 0.0) + row.get("data_time_s", 0.0)
        curve["t"].append(elapsed)
        curve["loss"].append(row["loss"])
        if row.get("val_loss") is not None:
            curve["val_t"].append(elapsed)
            curve["val_loss"].append(row["val_loss"])
        if row.get("gen_distinct_answer_share") is not None:  # the in-training answer check
            curve["gen_t"].append(elapsed)
            curve["gen_field_accuracy"].append(row.get("gen_field_accuracy", float("nan")))
            curve["gen_distinct_answer_share"].append(row["gen_distinct_answer_share"])
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--root", default="runs/recipes")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="recipes on the demo set")
    parser.add_argument("--ylim", type=float, nargs=2, default=(0.0, 4.0))
    parser.add_argument("--smooth", type=int, default=20, help="moving average of the train loss (steps)")
    args = parser.parse_args()

    curves = {name: read_curve(Path(args.root) / name / "metrics.jsonl") for name in args.runs
              if (Path(args.root) / name / "metrics.jsonl").exists()}  # fmt: skip
    answers = any(curve["gen_t"] for curve in curves.values())  # a third panel when runs logged answers
    fig, axes = plt.subplots(1, 3 if answers else 2, figsize=(16 if answers else 11, 4))
    ax_train, ax_val = axes[0], axes[1]
    ax_val.sharey(ax_train)
    for name, curve in curves.items():
        k = max(1, min(args.smooth, len(curve["loss"])))
        smoothed = [sum(curve["loss"][max(0, i - k + 1) : i + 1]) / len(curve["loss"][max(0, i - k + 1) : i + 1])
                    for i in range(len(curve["loss"]))]  # fmt: skip
        (line,) = ax_train.plot(curve["t"], smoothed, lw=1, label=name)
        ax_val.plot(curve["val_t"], curve["val_loss"], "o-", color=line.get_color(), label=name)
        if answers:
            axes[2].plot(curve["gen_t"], curve["gen_field_accuracy"], "o-", color=line.get_color())
            axes[2].plot(curve["gen_t"], curve["gen_distinct_answer_share"], "s--", color=line.get_color())
    if answers:
        axes[2].set_title("answer check: field accuracy (o-), distinct answers (s--)")
        axes[2].set_xlabel("training seconds (step + data time)")
        axes[2].set_ylim(0, 1.02)
        axes[2].grid(alpha=0.3)
    for ax, what in ((ax_train, "train loss"), (ax_val, "val loss")):
        ax.set_xlabel("training seconds (step + data time)")
        ax.set_title(what)
        ax.grid(alpha=0.3)
    ax_train.set_ylabel("nats / answer token")
    ax_train.set_ylim(*args.ylim)
    ax_val.legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
