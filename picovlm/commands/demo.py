"""`picovlm demo`: data -> train -> eval -> export -> runtime answers, with a summary naming every file."""

from __future__ import annotations

import argparse
import json

from picovlm.commands.progress import ProgressBar
from picovlm.generation import GenerationConfig


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole journey on built-in scenes: data, train, eval, int8 export, torch-free answers",
        description="Build the built-in demo dataset (scenes of shapes with long factual answers), train the "
        "default preset for --minutes on the CPU (or the GPU if there is one), evaluate on held-out scenes next "
        "to a nearest-training-image lookup (HTML report, collapse verdict), export to int8 ONNX, and answer a "
        "few held-out images with the torch-free runtime. Writes <out>/data, run/ (config.yaml, metrics.jsonl, "
        "plots/, model/), eval/ (metrics.json, predictions.jsonl, report.md, report.html), exported/ and "
        "samples/ (PNG files + answers.json). Example: picovlm demo --minutes 2",
    )
    p.add_argument(
        "--out", default="runs/demo", help="folder for everything the demo writes (default runs/demo)"
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=5.0,
        help="training budget in minutes of wall clock (default 5; the whole demo then takes ~6 min on 2 cores)",
    )
    p.add_argument(
        "--n", type=int, default=3000, help="demo scenes to generate, split 80/10/10 (default 3000)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for the data, the model and the data order (default 0)"
    )
    p.add_argument(
        "--preset", default=None, help="model preset (default: picovlm's default, see docs/config.md)"
    )
    p.add_argument("--eval-items", type=int, default=100, help="held-out test scenes evaluated (default 100)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=GenerationConfig.max_new_tokens,
        help=f"longest generated answer in tokens (default {GenerationConfig.max_new_tokens})",
    )
    p.add_argument(
        "--samples", type=int, default=4, help="held-out images answered by the runtime (default 4)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default 0: one per core; use 1 when other jobs share the CPU)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="train this many steps instead of --minutes: the same model on a busy machine (~2,000 = 5 idle minutes)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete --out first if it already holds files")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object at the end")
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from picovlm.demo import run_demo

    with ProgressBar(leave=False) as progress:  # a bar per stage, cleared when the next one starts
        result = run_demo(
            args.out, minutes=args.minutes, seed=args.seed, n=args.n, progress=progress, preset=args.preset,
            eval_items=args.eval_items, max_new_tokens=args.max_new_tokens, samples=args.samples,
            overwrite=args.overwrite, threads=args.threads, max_steps=args.max_steps,
        )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    for item in result.answers:
        print(f"\nimage      {item['image']}\nreference  {item['reference']}\nanswer     {item['answer']}")
    f, p, s = result.figures, result.paths, result.stage_seconds
    print("\nfiles")
    for label, key in [("dataset", "data"), ("run folder", "run"), ("model", "model"), ("training metrics", "metrics"),
                       ("plots", "plots"), ("eval report", "report_html"), ("eval metrics", "eval_metrics"),
                       ("exported (int8)", "exported"), ("runtime answers", "samples")]:  # fmt: skip
        print(f"  {label:<17} {p[key]}")
    print("\nfigures (held-out test scenes)")
    print(f"  model            {f['preset']} on {f['device']}, {f['train_steps']} steps")
    print(f"  token F1         {f['token_f1']:.3f}" + (
        f" (nearest-image lookup: {f['baseline_token_f1']:.3f})" if f["baseline_token_f1"] is not None else ""))  # fmt: skip
    if f["field_accuracy"] is not None:
        lookup = f.get("baseline_field_accuracy")
        print(
            f"  field accuracy   {f['field_accuracy']:.3f}"
            + (f" (lookup: {lookup:.3f})" if lookup is not None else "")
        )
    print(f"  distinct answers {f['distinct_answers']} of {f['n_images']} images")
    print(f"  verdict          {f['verdict']}")
    print(
        "  wall time        "
        + ", ".join(f"{k} {v:.0f} s" for k, v in s.items())
        + f" (total {sum(s.values()):.0f} s)"
    )
    return 0
