"""`picovlm train` and `picovlm sweep`: parse arguments, draw a progress bar, print a summary."""

from __future__ import annotations

import argparse
import json
import sys

from picovlm.commands.params import add_config_arguments
from picovlm.commands.progress import ProgressBar


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model on a cauldron-schema dataset (CPU, one GPU, or torchrun DDP)",
        description="Train a VLM from a preset (default picovlm-small-retrieval, the recipe of docs/recipes.md) and/or a "
        "config file plus FIELD=VALUE overrides. The run folder "
        "(train.out_dir) gets config.yaml, tokenizer.json, metrics.jsonl, plots/, checkpoint.pt, best/ and "
        "model/. Ctrl-C or SIGTERM finishes the step, saves it to checkpoint.pt, prints the command that resumes "
        "the run (picovlm train --config RUN/config.yaml --resume) and exits 130 / 143. "
        "Several processes: `torchrun --nproc_per_node N -m picovlm train ...`. "
        "Example: picovlm train --preset super-small-11 data_dir=data/demo max_steps=200",
    )
    add_config_arguments(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in train.out_dir from its checkpoint.pt"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_train)

    s = subparsers.add_parser(
        "sweep",
        help="train every configuration of a sweep file, then write Table 1 + Figures 1-2 (md, html, csv)",
        description="Run each configuration of a sweep YAML (base config + list/grid of overrides; see "
        "docs/training.md). Finished runs are skipped and interrupted ones resumed, so re-running finishes a "
        "sweep. Writes <out>/report.md, report.html, report.csv and figures/.",
    )
    s.add_argument("file", help="sweep YAML file, e.g. examples/sweep_super_small.yaml")
    s.add_argument("--out", help="output folder (default: the file's out_dir, else runs/<file stem>)")
    s.set_defaults(func=run_sweep_command)


def run_train(args: argparse.Namespace) -> int:
    import os

    from picovlm.config import load_config
    from picovlm.train.interrupt import TrainingInterrupted
    from picovlm.train.loop import train

    model_cfg, train_cfg = load_config(args.preset, args.config, args.overrides)
    main_rank = os.environ.get("RANK", "0") == "0"
    bar = ProgressBar(unit="step") if main_rank else None
    try:
        result = train(model_cfg, train_cfg, progress=bar, resume=args.resume)
    except TrainingInterrupted as stopped:
        if bar is not None:
            bar.close()
        if main_rank:
            print(interrupted_message(stopped, train_cfg.out_dir), file=sys.stderr)
        return stopped.exit_code
    finally:
        if bar is not None:
            bar.close()
    if not main_rank:
        return 0
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    for note in result.notes:
        print(f"note: {note}")
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "-"
    if result.best_step is not None:
        best += f" | best/ = step {result.best_step} ({result.best_metric} {result.best_score:.4f})"
    print(f"run folder     {result.run_dir}")
    print(
        f"data           {train_cfg.data_dir}: {result.train_rows} rows of split {train_cfg.train_split!r}, "
        f"{result.val_rows} of {train_cfg.val_split!r}"
    )
    print(f"steps          {result.steps}/{result.total_steps} (stopped by {result.stop_reason})")
    print(f"train loss     {result.last_loss:.4f}" if result.last_loss is not None else "train loss     -")
    print(f"best val loss  {best}")
    if result.gen_verdict:
        print(f"answers check  {result.gen_verdict}")
    if result.generation and result.generation["candidates"]:
        from picovlm.eval.choose import choice_table

        choice = result.generation
        print(
            f"answering      {choice['chosen']}, chosen on {choice['rows']} validation rows (generation.json):"
        )
        for line in choice_table(choice).splitlines():
            print(f"               {line}")
    if result.tokens_per_s:
        print(
            f"tokens/s       {result.tokens_per_s:,.0f} per step time, {result.tokens_per_s_wall:,.0f} per wall time"
        )
    print(f"wall time      {result.wall_time_s:.1f} s, peak RSS {result.peak_rss_mb:,.0f} MB")
    if result.skipped_rows:
        print(f"skipped rows   {result.skipped_rows} (could not be decoded or encoded)")
    if (command := eval_command(result.run_dir, train_cfg)) is not None:
        print(f"next           {command}")
    return 0


def eval_command(run_dir, train_cfg) -> str | None:
    """The command that judges the finished model on rows it never chose anything on (the test split,
    else the validation split) beside the nearest-image lookup; its report lands in RUN/eval-SPLIT.
    None where the data's splits cannot be listed here (a Hub id, a folder gone since)."""
    import shlex
    from pathlib import Path

    from picovlm.data.cauldron import split_names
    from picovlm.errors import PicovlmError

    try:
        splits = split_names(train_cfg.data_dir)
    except (PicovlmError, OSError):
        return None
    split = "test" if "test" in splits else train_cfg.val_split
    model, data = shlex.quote(str(Path(run_dir) / "model")), shlex.quote(str(train_cfg.data_dir))
    return f"picovlm eval --model {model} --data {data} --split {split} --baseline nearest"


def resume_command(run_dir) -> str:
    """The command that continues the run in run_dir: its own config.yaml holds every setting the run
    started with (overrides and the trained tokenizer's vocabulary included), so it does not depend on
    the original command line or on a config file that may have changed since."""
    import os
    import shlex
    from pathlib import Path

    config = shlex.quote(str(Path(run_dir) / "config.yaml"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # started under torchrun: resume with as many processes per node
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world))
        return f"torchrun --nproc_per_node {per_node} -m picovlm train --config {config} --resume"
    return f"picovlm train --config {config} --resume"


def interrupted_message(stopped, out_dir) -> str:
    """What `picovlm train` prints when a signal stopped it: what was saved and how to go on."""
    from pathlib import Path

    from picovlm.train.checkpoint import CHECKPOINT_FILE, has_checkpoint

    run_dir = Path(stopped.run_dir or out_dir)
    if stopped.step is not None:
        saved = f"{stopped}: saved {run_dir / CHECKPOINT_FILE}"
    else:
        saved = str(stopped)
    if has_checkpoint(run_dir):
        return f"{saved}\nresume with: {resume_command(run_dir)}"
    return f"{saved}; nothing to resume yet: run the same command again to start over"


def run_sweep_command(args: argparse.Namespace) -> int:
    from picovlm.train.sweep import run_sweep

    with ProgressBar("sweep", unit="run") as progress:
        outcome = run_sweep(args.file, args.out, progress=progress)
    for run in outcome["runs"]:
        print(f"{run['status']:<8} {run['name']}")
    print(f"report: {outcome['out_dir']}/report.md (.html, .csv, figures/)")
    return 0
