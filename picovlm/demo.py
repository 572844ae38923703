"""`picovlm demo`: the whole journey in one call, on the built-in demo scenes.

    data/      the demo set (scenes of shapes with long factual answers), split train/validation/test
    run/       training: config.yaml, metrics.jsonl, plots/, model/ (the final weights)
    eval/      held-out test scenes: metrics.json, predictions.jsonl, report.md, report.html
               (the model next to a nearest-training-image lookup, with the collapse verdict)
    exported/  the model as ONNX graphs with int8 weights, for one CPU core
    samples/   a few held-out images as PNG files, answered by the torch-free runtime

The model and its training recipe are picovlm's defaults (`picovlm.config.DEFAULT_PRESET` and
`TrainConfig`'s defaults); only the time budget, the seed and the folders are set here. Every stage
reports through `progress(done, total, message)`; a message with total None starts a new stage.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picovlm.config import DEFAULT_QUESTION
from picovlm.errors import PicovlmError
from picovlm.generation import GenerationConfig
from picovlm.utils import ProgressFn, atomic_write_text, no_progress


@dataclass
class DemoResult:
    out_dir: Path
    paths: dict[str, Path]  # data, run, model, metrics, plots, report_html, report_md, exported, samples
    figures: dict[str, Any]  # token_f1, field_accuracy, distinct_answers, n_images, verdict, ...
    stage_seconds: dict[str, float]  # data, train, eval, export, runtime
    answers: list[dict[str, str]]  # {"image", "reference", "answer"} from the torch-free runtime
    train: dict[str, Any] = field(default_factory=dict)  # RunResult.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "paths": {k: str(v) for k, v in self.paths.items()},
            "figures": self.figures,
            "stage_seconds": self.stage_seconds,
            "answers": self.answers,
            "train": self.train,
        }


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_demo(
    out_dir: str | Path = "runs/demo",
    minutes: float = 5.0,
    seed: int = 0,
    n: int = 3000,
    progress: ProgressFn = no_progress,
    preset: str | None = None,
    eval_items: int = 100,
    max_new_tokens: int = GenerationConfig.max_new_tokens,
    samples: int = 4,
    overwrite: bool = False,
    threads: int = 0,
    max_steps: int | None = None,
) -> DemoResult:
    """Build the demo data, train for `minutes`, evaluate, export to int8 ONNX, answer `samples`
    held-out images through the runtime; everything goes under out_dir. Returns paths and figures.
    threads: torch's CPU threads for training and evaluation (0: one per core). max_steps: train that
    many steps instead of for `minutes` (the same model on any machine, however busy)."""
    from picovlm.config import DEFAULT_PRESET, TrainConfig
    from picovlm.config import preset as preset_config
    from picovlm.data.scenes import write_demo
    from picovlm.eval.evaluate import evaluate
    from picovlm.eval.report import write_report
    from picovlm.export.onnx import export_model
    from picovlm.train.loop import train

    if minutes <= 0 or n < 30:
        raise PicovlmError(f"--minutes must be positive and --n at least 30 (got {minutes} and {n}).")
    out = _empty_folder(Path(out_dir), overwrite)
    preset_name = preset or DEFAULT_PRESET
    model_cfg = preset_config(preset_name)
    paths = demo_paths(out)
    seconds: dict[str, float] = {}
    device = _device()

    # 1. Data: scenes drawn at the model's own image size, split 80/10/10 with no shared image or group.
    with _stage(seconds, "data"):
        progress(0, None, f"[1/5] data: {n} demo scenes -> {paths['data']}")
        write_demo(paths["data"], n=n, seed=seed, image_size=model_cfg.vit_img_size)

    # 2. Train: the default recipe, stopped by the clock.
    with _stage(seconds, "train"):
        budget = f"{max_steps} steps" if max_steps else f"up to {minutes:g} min"
        progress(0, None, f"[2/5] train: {preset_name} for {budget} on {device} -> {paths['run']}")
        train_cfg = TrainConfig(
            data_dir=str(paths["data"]),
            out_dir=str(paths["run"]),
            max_minutes=None if max_steps else minutes,
            max_steps=max_steps,
            seed=seed,
            threads=threads,
        )
        run = train(model_cfg, train_cfg, progress=progress)

    # 3. Evaluate on held-out test scenes, next to the nearest-training-image lookup.
    with _stage(seconds, "eval"):
        progress(0, None, f"[3/5] eval: up to {eval_items} held-out test scenes -> {paths['eval']}")
        result = evaluate(
            paths["model"], paths["data"], split="test", max_items=eval_items, max_new_tokens=max_new_tokens,
            baseline="nearest", swap_items=min(eval_items, 32), name=f"{preset_name} demo", device=device,
            progress=progress,
        )  # fmt: skip
        write_report([result], paths["eval"], title="picovlm demo: held-out test scenes")

    # 4. Export for one CPU core: ONNX graphs, int8 weights.
    with _stage(seconds, "export"):
        progress(0, None, f"[4/5] export: int8 ONNX -> {paths['exported']}")
        manifest = export_model(paths["model"], paths["exported"], quantize="int8", progress=progress)

    # 5. Answer a few held-out images with the torch-free runtime, from PNG files a person can open.
    with _stage(seconds, "runtime"):
        progress(
            0, None, f"[5/5] runtime: {samples} held-out images answered without torch -> {paths['samples']}"
        )
        answers = runtime_answers(paths, samples, max_new_tokens)

    figures = {"preset": preset_name, "device": device, **_figures(run, result["metrics"], manifest)}
    return DemoResult(out, paths, figures, seconds, answers, run.to_dict())


def demo_paths(out: Path) -> dict[str, Path]:
    """Where each stage writes, under out."""
    return {
        "data": out / "data", "run": out / "run", "model": out / "run" / "model",
        "plots": out / "run" / "plots", "metrics": out / "run" / "metrics.jsonl",
        "eval": out / "eval", "report_html": out / "eval" / "report.html", "report_md": out / "eval" / "report.md",
        "eval_metrics": out / "eval" / "metrics.json", "exported": out / "exported", "samples": out / "samples",
    }  # fmt: skip


def _empty_folder(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise PicovlmError(
                f"{out} already exists and is not empty: choose another --out, or pass --overwrite."
            )
        shutil.rmtree(out)
    return out


@contextmanager
def _stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Time one stage into seconds[name]."""
    started = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - started


def runtime_answers(paths: dict[str, Path], samples: int, max_new_tokens: int) -> list[dict[str, str]]:
    """The first `samples` test images saved as PNG files and answered by the exported int8 model
    through the torch-free runtime; also written to samples/answers.json."""
    from picovlm.data.cauldron import load_cauldron
    from picovlm.runtime import Runtime

    runtime = Runtime.load(paths["exported"], threads=1)
    test_rows = load_cauldron(paths["data"], split="test")
    paths["samples"].mkdir(parents=True, exist_ok=True)
    answers = []
    for i in range(min(samples, len(test_rows))):
        row = test_rows[i]
        image_path = paths["samples"] / f"test-{i:02d}.png"
        row["images"][0].save(image_path)
        answer = runtime.answer(str(image_path), DEFAULT_QUESTION, max_new_tokens=max_new_tokens)
        answers.append(
            {"image": str(image_path), "reference": row["texts"][0]["assistant"], "answer": answer}
        )
    atomic_write_text(
        paths["samples"] / "answers.json", json.dumps(answers, indent=2, ensure_ascii=False) + "\n"
    )
    return answers


def _figures(run, m: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The figures the demo prints: training, the held-out scores next to the lookup's, the export."""
    return {
        "train_steps": run.steps,
        "best_val_loss": run.best_val_loss,
        "token_f1": m["token_f1"],
        "field_accuracy": m.get("field_accuracy"),
        "baseline_field_accuracy": m.get("baseline_field_accuracy"),
        "n_images": m["n_images"],
        "distinct_answers": round(m["distinct_answer_share"] * m["n_images"]),
        "baseline_token_f1": m.get("baseline_token_f1"),
        "baseline_name": m.get("baseline_name"),
        "verdict_status": m["verdict_status"],
        "verdict": m["verdict"],
        "exported_mb": sum(manifest["file_sizes"].values()) / 1e6,
    }
