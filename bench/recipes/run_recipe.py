"""One recipe experiment: time the step, train for a fixed wall-clock budget, evaluate, append a result row.

    python bench/recipes/run_recipe.py --name p32 --data runs/recipes/data/demo --minutes 3 \
        --preset super-small-11 model.vit_patch_size=32 model.mp_pixel_shuffle_factor=1

Why a timing probe first: the recorded runs set `max_steps` to what fits the budget, measured by a
4-step probe, so every run has a fully decayed schedule whatever the machine's speed (the clock still
stops it if the machine gets busier). `picovlm train` now fits its schedule to `max_minutes` itself;
the probe is kept so the runs in docs/recipes.md reproduce as they were made. Each run's figures (training, held-out evaluation with the
nearest-neighbour baseline, machine load) go to bench/recipes/results.jsonl, one JSON per line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from picovlm.config import load_config
from picovlm.eval.evaluate import evaluate
from picovlm.train.loop import train

RESULTS = Path(__file__).with_name("results.jsonl")


def load_average() -> float:
    return os.getloadavg()[0]


def seconds_per_step(model_cfg, train_cfg, probe_dir: Path) -> float:
    """Mean wall seconds of optimizer steps 2-4 (step 1 pays one-off costs)."""
    shutil.rmtree(probe_dir, ignore_errors=True)
    probe = dict(train_cfg.__dict__, out_dir=str(probe_dir), max_steps=4, max_minutes=None,
                 eval_interval=1000, checkpoint_interval=1000, val_max_items=train_cfg.batch_size)  # fmt: skip
    train(model_cfg, type(train_cfg)(**probe))
    rows = [json.loads(line) for line in (probe_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] + r.get("data_time_s", 0.0) for r in rows[1:]]
    shutil.rmtree(probe_dir, ignore_errors=True)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget (wall clock)")
    parser.add_argument("--preset", default="super-small-11")
    parser.add_argument(
        "--steps",
        type=int,
        help="fixed step count instead of the timing probe; --minutes then only caps the run",
    )
    parser.add_argument(
        "--as-default",
        action="store_true",
        help="train exactly as TrainConfig's defaults "
        "say (epochs, eval and checkpoint intervals), only stopped by --minutes",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-items", type=int, default=128, help="test rows evaluated")
    parser.add_argument("--out-root", default="runs/recipes")
    parser.add_argument("overrides", nargs="*", help="section.field=value, as for `picovlm train`")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run_dir = Path(args.out_root) / args.name
    shutil.rmtree(run_dir, ignore_errors=True)
    base = [f"train.data_dir={args.data}", f"train.out_dir={run_dir}"]
    base += [] if args.as_default else ["train.val_max_items=128"]
    model_cfg, train_cfg = load_config(args.preset, overrides=base + args.overrides)

    load_before = load_average()
    if args.as_default:
        step_s, steps = 0.0, None
    elif args.steps:
        step_s, steps = 0.0, args.steps
    else:
        step_s = seconds_per_step(model_cfg, train_cfg, Path(args.out_root) / f"{args.name}-probe")
        # Evaluations cost time too: plan 92 % of the budget for steps, evaluate ~5 times.
        steps = max(10, int(0.92 * args.minutes * 60 / step_s))
    train_cfg.max_minutes = args.minutes
    if steps is not None:
        train_cfg.max_steps = steps
        train_cfg.eval_interval = max(5, steps // 5)
        train_cfg.checkpoint_interval = steps
    print(f"[{args.name}] {step_s:.2f} s/step (load {load_before:.1f}) -> planning {steps} steps", flush=True)

    started = time.time()
    result = train(model_cfg, train_cfg)
    train_s = time.time() - started
    load_after = load_average()

    started = time.time()
    report = evaluate(str(run_dir / "model"), args.data, split="test", max_items=args.eval_items,
                      baseline="nearest", max_new_tokens=96, swap_items=64, thumbnails=False)  # fmt: skip
    eval_s = time.time() - started
    m = report["metrics"]
    keys = ["loss", "image_gap_shuffled", "image_gap_blank", "token_f1", "rouge_l", "field_accuracy",
            "field_majority_accuracy", "distinct_answer_share", "reference_distinct_answer_share",
            "answers_changed_share", "top_answer_share", "train_loss", "verdict_status", "verdict"]  # fmt: skip
    row = {
        "name": args.name,
        "data": args.data,
        "preset": args.preset,
        "overrides": args.overrides,
        "minutes": args.minutes,
        "threads": args.threads,
        "probe_s_per_step": round(step_s, 3),
        "steps_planned": steps or result.total_steps,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "best_val_loss": result.best_val_loss,
        "final_val_loss": result.val_loss,
        "tokens_per_s": result.tokens_per_s,
        "params": result.params,
        "load_before": round(load_before, 2),
        "load_after": round(load_after, 2),
        "eval_items": args.eval_items,
        **{f"test_{k}": m.get(k) for k in keys},
    }
    for b_name, b in report["baselines"].items():
        row[f"{b_name}_token_f1"] = b["metrics"].get("token_f1")
        row[f"{b_name}_field_accuracy"] = b["metrics"].get("field_accuracy")
    row["top_answers"] = m.get("top_answers", [])[:3]
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    show = {k: row[k] for k in ("steps", "final_val_loss", "test_image_gap_shuffled", "test_token_f1",
                                "test_field_accuracy", "test_distinct_answer_share",
                                "nearest-pixels_token_f1", "nearest-pixels_field_accuracy")}  # fmt: skip
    print(f"[{args.name}] {json.dumps(show)}", flush=True)
    print(f"[{args.name}] verdict: {m.get('verdict')}", flush=True)


if __name__ == "__main__":
    main()
