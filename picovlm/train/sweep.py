"""Sweeps: many training runs from one file, then the blog's Table 1 and Figures 1-2, written for you.

A sweep file (YAML):

    preset: super-small-11          # the base model (optional; default picovlm-small-retrieval)
    model: {lm_n_blocks: 1}         # base model fields (optional)
    train: {data_dir: data/demo, max_steps: 40}   # base train fields
    out_dir: runs/sweep             # where runs and the report go (optional; --out wins)
    runs:                           # a list of named variants ...
      - {name: it03, preset: super-small-03}
      - {name: it11-lr, train: {lr_mp: 1.0e-3}}
    grid:                           # ... and/or a grid: every combination becomes a run
      train.lr_mp: [1.0e-3, 3.0e-3]

Each run trains into <out>/<name>/, in its own `picovlm train` process (config in
<out>/configs/<name>.yaml, output in <out>/configs/<name>.log). Resumable: a run with a finished summary.json is skipped, a run
with a checkpoint resumes, so re-running the command after an interruption completes the sweep.

The report (<out>/report.md, .html, .csv) has one row per run: every field that differs between runs,
LLM / ViT / projector parameters, best val loss and its step, mean tokens/s, wall time and peak
memory; and Figure 1 (val loss vs step) and Figure 2 (tokens/s vs step) for all runs (PNG + SVG).
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picovlm.config import (
    base_model_fields,
    build_train_config,
    build_vlm_config,
    read_config_file,
    save_config,
)
from picovlm.errors import ConfigError, PicovlmError
from picovlm.train.interrupt import STOP_SIGNALS, TrainingInterrupted
from picovlm.train.setup import SUMMARY_FILE
from picovlm.train.tracking import plot_series, points, read_metrics
from picovlm.utils import ProgressFn, atomic_write_text, no_progress


@dataclass
class SweepRun:
    name: str
    preset: str | None
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def expand_sweep(spec: dict[str, Any]) -> list[SweepRun]:
    """The sweep file's runs: the listed ones, then one per grid combination (crossed with the list)."""
    base_runs = [
        SweepRun(
            r.get("name") or f"run{i:02d}",
            r.get("preset"),
            dict(r.get("model") or {}),
            dict(r.get("train") or {}),
        )
        for i, r in enumerate(spec.get("runs") or [])
    ] or [SweepRun("base", None)]
    grid = spec.get("grid") or {}
    if not grid:
        runs = base_runs
    else:
        keys = list(grid)
        runs = []
        for run in base_runs:
            for values in itertools.product(*(grid[k] for k in keys)):
                model, train_ = dict(run.model), dict(run.train)
                suffix = []
                for key, value in zip(keys, values):
                    section, _, name = key.rpartition(".")
                    if section not in ("model", "train"):
                        raise ConfigError(f"grid key {key!r}: write it as model.FIELD or train.FIELD.")
                    (model if section == "model" else train_)[name] = value
                    suffix.append(f"{name}={value}")
                prefix = "" if run.name == "base" and len(base_runs) == 1 else f"{run.name}-"
                runs.append(SweepRun(prefix + ",".join(suffix), run.preset, model, train_))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep run names must be unique, got {names}")
    return runs


def resolve_run(spec: dict[str, Any], run: SweepRun, out_dir: Path):
    """The run's (VLMConfig, TrainConfig): preset, then base fields, then the run's own fields."""
    model = base_model_fields(run.preset or spec.get("preset"))
    model.update(spec.get("model") or {})
    model.update(run.model)
    train_values = {**(spec.get("train") or {}), **run.train, "out_dir": str(out_dir / run.name)}
    return build_vlm_config(model, f"sweep run {run.name}"), build_train_config(
        train_values, f"sweep run {run.name}"
    )


def run_sweep(
    path: str | os.PathLike, out_dir: str | os.PathLike | None = None, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Run (or finish) every configuration of a sweep file, then write the report. Returns
    {"out_dir", "runs": [{"name", "status": trained|resumed|skipped}], "report": [paths]}."""
    progress = progress or no_progress
    spec = read_config_file(path)
    out = Path(out_dir or spec.get("out_dir") or Path("runs") / Path(path).stem)
    runs = expand_sweep(spec)
    statuses = []
    for i, run in enumerate(runs):
        model_cfg, train_cfg = resolve_run(spec, run, out)
        run_dir = Path(train_cfg.out_dir)
        if _finished(run_dir):
            statuses.append({"name": run.name, "status": "skipped"})
            continue
        resume = (run_dir / "checkpoint.pt").is_file()
        progress(i, len(runs), f"{run.name}: {'resuming' if resume else 'training'}")
        _train_in_subprocess(model_cfg, train_cfg, out / "configs" / f"{run.name}.yaml", resume)
        statuses.append({"name": run.name, "status": "resumed" if resume else "trained"})
    progress(len(runs), len(runs), "writing the report")
    report = write_sweep_report(out, spec, runs)
    return {"out_dir": str(out), "runs": statuses, "report": [str(p) for p in report]}


def _train_in_subprocess(model_cfg, train_cfg, config_path: Path, resume: bool) -> None:
    """`picovlm train --config` in a fresh process: each run's peak memory is its own (a process's peak
    RSS never goes down), and a crash in one run cannot take the sweep's state with it."""
    save_config(config_path, model_cfg, train_cfg)
    log_path = config_path.with_suffix(".log")
    cmd = [
        sys.executable,
        "-m",
        "picovlm",
        "train",
        "--config",
        str(config_path),
        *(["--resume"] if resume else []),
    ]
    with open(log_path, "w") as log:
        code = _run_forwarding_signals(cmd, log)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):  # the run saved its step (train/interrupt.py)
        raise TrainingInterrupted(
            code - 128,
            how=f"during sweep run {config_path.stem} (log {log_path}): run the same command again "
            "to continue the sweep where it stopped",
        )
    if code != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise PicovlmError(f"sweep run {config_path.stem} failed (exit {code}); log {log_path}:\n{tail}")


def _run_forwarding_signals(cmd: list[str], log) -> int:
    """Run a training process and pass SIGINT / SIGTERM sent to the sweep on to it, once each.

    The run lives in its own session, so a Ctrl-C in the terminal reaches it only through here: sent
    to both, it would arrive twice and stop the run at once instead of after its step, and a SIGTERM
    sent to the sweep alone would leave the run training with nobody waiting for it."""
    if threading.current_thread() is not threading.main_thread():  # no handlers: the run gets Ctrl-C itself
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    previous = {s: signal.signal(s, lambda signum, _frame: proc.send_signal(signum)) for s in STOP_SIGNALS}
    try:
        return proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _finished(run_dir: Path) -> bool:
    summary = run_dir / SUMMARY_FILE
    return summary.is_file() and json.loads(summary.read_text()).get("finished", False)


# --- The report ------------------------------------------------------------------------------------


def table_rows(
    out: Path, spec: dict[str, Any], runs: list[SweepRun]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Table 1: the columns (changed fields first) and one dict per run."""
    resolved = [_resolved_fields(out, spec, run) for run in runs]
    changed = _changed_fields(resolved)
    rows = []
    for run, flat in zip(runs, resolved):
        row: dict[str, Any] = {"run": run.name}
        row.update({k.split(".", 1)[1]: flat[k] for k in changed})
        row.update(_run_figures(out / run.name))
        rows.append(row)
    columns = list(rows[0]) if rows else ["run"]
    for optional in ("peak CUDA (MB)", "answer F1", "field accuracy", "distinct answers", "answers check"):
        if all(r.get(optional) is None for r in rows):
            columns.remove(optional)
    return columns, rows


def _resolved_fields(out: Path, spec: dict[str, Any], run: SweepRun) -> dict[str, Any]:
    """Every model.* and train.* field of a run as it trained."""
    model_cfg, train_cfg = resolve_run(spec, run, out)
    flat = {f"model.{k}": v for k, v in model_cfg.to_dict().items()}
    flat.update({f"train.{k}": v for k, v in train_cfg.to_dict().items() if k != "out_dir"})
    # The vocabulary actually used (a trained tokenizer resizes it) comes from the run's saved config.
    config = out / run.name / "model" / "config.json"
    if config.is_file():
        flat["model.lm_vocab_size"] = json.loads(config.read_text())["lm_vocab_size"]
    return flat


def _changed_fields(resolved: list[dict[str, Any]]) -> list[str]:
    """The fields whose values differ between runs (none for a single run), special-token ids aside."""
    if len(resolved) < 2:
        return []
    changed = [k for k in resolved[0] if len({json.dumps(r.get(k)) for r in resolved}) > 1]
    return [k for k in changed if not k.endswith(("_token_id",))]


def _run_figures(run_dir: Path) -> dict[str, Any]:
    """A run's columns of Table 1 from its summary.json and metrics.jsonl (None where not there yet)."""
    summary_path = run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    records = read_metrics(run_dir)
    speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    params = summary.get("params") or {}
    # the last in-training answer check: a low val loss with collapsed answers shows in the same row
    answers = next((r for r in reversed(records) if "gen_n_items" in r), {})
    return {
        "LLM params": params.get("lm"),
        "ViT params": params.get("vit"),
        "projector params": params.get("projector"),
        "best val loss": summary.get("best_val_loss"),
        "best step": summary.get("best_step"),
        "steps": summary.get("steps"),
        "mean tokens/s": sum(speeds) / len(speeds) if speeds else None,
        "wall time (s)": summary.get("wall_time_s"),
        "peak RSS (MB)": summary.get("peak_rss_mb"),
        "peak CUDA (MB)": summary.get("peak_cuda_mb"),
        "answer F1": answers.get("gen_token_f1"),
        "field accuracy": answers.get("gen_field_accuracy"),
        "distinct answers": answers.get("gen_distinct_answer_share"),
        # a finished run's verdict is about how its model answers (re-checked when it chose to vote)
        "answers check": summary.get("gen_verdict_status") or answers.get("gen_verdict_status"),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def write_sweep_report(out: Path, spec: dict[str, Any], runs: list[SweepRun]) -> list[Path]:
    """report.csv, report.md and report.html (Table 1), and Figures 1 and 2 as PNG and SVG."""
    columns, rows = table_rows(out, spec, runs)
    figures = []
    for key, title, unit in (
        ("val_loss", "Figure 1: validation loss", "val loss"),
        ("tokens_per_s", "Figure 2: training tokens per second", "tokens / s"),
    ):
        series = {r.name: points(read_metrics(out / r.name), key) for r in runs}
        figures += plot_series(series, out / "figures" / key, title, unit)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "report.csv", buffer.getvalue())
    atomic_write_text(out / "report.md", _markdown_report(columns, rows))
    atomic_write_text(out / "report.html", _html_report(columns, rows))
    return [out / "report.md", out / "report.html", out / "report.csv", *figures]


def _markdown_report(columns: list[str], rows: list[dict[str, Any]]) -> str:
    md = ["# Sweep report", "", "Table 1: changed fields, parameters and results per run.", ""]
    md.append("| " + " | ".join(columns) + " |")
    md.append("|" + "---|" * len(columns))
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    md += ["", "Figure 1: validation loss vs step.", "", "![val loss](figures/val_loss.svg)", ""]
    md += ["Figure 2: training tokens/s vs step.", "", "![tokens/s](figures/tokens_per_s.svg)", ""]
    return "\n".join(md)


def _html_report(columns: list[str], rows: list[dict[str, Any]]) -> str:
    cells = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>picovlm sweep report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}img{{max-width:48%}}</style></head><body>
<h1>Sweep report</h1><p>Table 1: changed fields, parameters and results per run.</p>
<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>
<h2>Figure 1: validation loss vs step</h2><img src="figures/val_loss.svg" alt="val loss vs step">
<h2>Figure 2: tokens/s vs step</h2><img src="figures/tokens_per_s.svg" alt="tokens per second vs step">
</body></html>"""
