"""Run tracking: `metrics.jsonl`, plots, and optional external trackers.

metrics.jsonl has one JSON object per optimizer step:
    {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "tokens_per_s_wall",
     "samples_per_s", "padding_share", "step_time_s", "data_time_s", "peak_rss_mb", "peak_cuda_mb", ...}
and, on evaluation steps, also "val_loss" and "train_val_gap" (val loss minus the mean training loss
since the previous evaluation), plus "gen_*" metrics from the in-training generation check. With
train.fact_loss_weight > 0 every step also logs "fact_loss" (the fact heads' cross-entropy; "loss" stays
the answers' own).

On resume the file is cut back to the checkpoint's step, so every step appears exactly once.

External trackers (`report_to`: wandb, trackio, tensorboard) get the same numbers. They are imported
only when asked for; wandb and trackio run offline unless the user configured a mode themselves
(WANDB_MODE / TRACKIO_* environment), so no run touches the network unless asked.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from picovlm.errors import ConfigError

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a torn last line, from a kill mid-write, is ignored)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class Tracker:
    """Appends records to metrics.jsonl and forwards them to an external tracker if one is configured."""

    def __init__(
        self, run_dir: Path, report_to: str = "none", config: dict | None = None, resume_step: int = 0
    ):
        self.path = Path(run_dir) / METRICS_FILE
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        from picovlm.utils import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 (held open for the whole run)
        self.external = (
            _external_tracker(report_to, Path(run_dir), config or {}) if report_to != "none" else None
        )

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        if self.external is not None:
            numbers = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
            self.external.log(numbers, step=clean["step"])

    def close(self) -> None:
        self.file.close()
        if self.external is not None:
            self.external.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


# --- External trackers -------------------------------------------------------------------------------


class _Wandb:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(project="picovlm", dir=str(run_dir), config=config, name=run_dir.name)

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, run_dir: Path, config: dict):
        import trackio

        self.trackio = trackio
        trackio.init(project="picovlm", name=run_dir.name, config=config)  # trackio stores locally by default

    def log(self, values: dict, step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


_TRACKERS = {
    "wandb": (_Wandb, "wandb"),
    "trackio": (_Trackio, "trackio"),
    "tensorboard": (_TensorBoard, "tensorboard"),
}


def _external_tracker(name: str, run_dir: Path, config: dict):
    if name not in _TRACKERS:
        raise ConfigError(f"report_to={name!r}: use one of none, wandb, trackio, tensorboard.")
    cls, package = _TRACKERS[name]
    try:
        return cls(run_dir, config)
    except ImportError:
        raise ConfigError(
            f"report_to={name} needs the {package} package: pip install {package} "
            f"(or pip install 'picovlm[tracking]'), or use report_to=none."
        ) from None


# --- Plots -------------------------------------------------------------------------------------------


def plot_series(
    series: dict[str, list[tuple[int, float]]], path_stem: Path, title: str, ylabel: str, log_y: bool = False
) -> list[Path]:
    """One line per name, y against step; written as path_stem.png and path_stem.svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=name, marker="o" if len(points) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = path_stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=120)
        paths.append(path)
    plt.close(fig)
    return paths


def points(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """plots/loss.{png,svg} (train and val loss vs step) and plots/tokens_per_s.{png,svg}; with the answer
    check (train.gen_eval_interval), plots/answers.{png,svg} (token F1, facts and distinct answers beside
    the lookup's) and plots/image_gap.{png,svg} (the shuffled-image gap as the model answers and at its
    calibrated temperature): where the answers stop improving, collapse or stop looking at the picture."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return []
    out = run_dir / "plots"
    paths = plot_series(
        {"train loss": points(records, "loss"), "val loss": points(records, "val_loss")},
        out / "loss",
        "loss",
        "cross-entropy per answer token",
    )
    paths += plot_series(
        {
            "per step time": points(records, "tokens_per_s"),
            "per wall time": points(records, "tokens_per_s_wall"),
        },
        out / "tokens_per_s",
        "throughput (text + image tokens)",
        "tokens / s",
    )
    checks = [  # (file, title, unit, {line: metric}): drawn where the answer check logged any of them
        ("answers", "answer check on validation rows", "share",
         {"token F1": "gen_token_f1", "facts": "gen_field_accuracy", "distinct answers": "gen_distinct_answer_share",
          "lookup token F1": "gen_baseline_token_f1", "lookup facts": "gen_baseline_field_accuracy"}),
        ("image_gap", "loss with shuffled images minus true", "nats / token",
         {"as it answers (T=1)": "gen_image_gap_shuffled",
          "at its calibrated temperature": "gen_image_gap_shuffled_calibrated"}),
    ]  # fmt: skip
    for stem, title, unit, lines in checks:
        series = {name: found for name, key in lines.items() if (found := points(records, key))}
        if series:
            paths += plot_series(series, out / stem, title, unit)
    return paths
