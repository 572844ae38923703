"""The training loop: one function, `train(model_cfg, train_cfg)`, read top to bottom.

    set-up (setup.py): processes and device -> data -> tokenizer (trained on the training texts, or
        loaded) -> model -> memory check -> AdamW (optim.py) -> loaders -> Budget (budget.py: the step
        count and learning-rate schedule, fitted to the clock under max_minutes)
        -> [resume: TrainState (state.py), weights, optimizer and RNG from checkpoint.py]
    steps: StepBatches -> train_step (step.py: accumulate micro-batches -> clip -> AdamW)
        -> [ema_decay: WeightAverage.update, average.py] -> Budget.after_step -> log -> EvalHook
        (evaluation.py: val loss, answer check, best/ by train.best_metric, early stop) -> checkpoint
        (SIGINT / SIGTERM: the step finishes, checkpoint, TrainingInterrupted; interrupt.py)
    -> [ema_decay: the average becomes the weights] -> how it answers (eval/choose.py)
    -> model/ (final), plots, summary.json

Devices: a CPU (fp32), one CUDA GPU (bf16 autocast over fp32 master weights), or several processes
under torchrun (DDP: gloo on CPU, nccl on CUDA). Under DDP every rank reads its own interleaved share
of the same global batch, and only rank 0 writes files. The loss of a step is the mean over every
supervised token of the global batch, however it is split (step.py), and the data position is a
function of the step, so a checkpoint's step is all that resume needs to continue the data stream.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from picovlm.config import TrainConfig, VLMConfig, save_config
from picovlm.data.pipeline import stop_workers
from picovlm.train import checkpoint as ckpt
from picovlm.train.average import WeightAverage
from picovlm.train.budget import Budget
from picovlm.train.evaluation import EvalHook, choose_answering, settle_best_metric
from picovlm.train.facts import FactHeads, settle_fact_loss
from picovlm.train.interrupt import StopOnSignal, TrainingInterrupted
from picovlm.train.optim import build_optimizer
from picovlm.train.setup import (
    SUMMARY_FILE,
    Dist,
    autocast_dtype,
    build_model,
    check_memory,
    fit_image_size,
    load_data,
    make_loaders,
    peak_memory_mb,
    prepare_run_dir,
    prepare_tokenizer,
    seed_everything,
    setup_distributed,
    training_texts,  # noqa: F401 (model/params.py imports it from here)
    wrap_model,
)
from picovlm.train.state import TrainState
from picovlm.train.step import StepBatches, StepFigures, train_step
from picovlm.train.tracking import Tracker, plot_run
from picovlm.utils import ProgressFn, atomic_write_text, no_progress


@dataclass
class RunResult:
    run_dir: Path
    steps: int  # optimizer steps done
    total_steps: int  # planned
    stop_reason: str  # "max_steps", "epochs", "max_minutes", "early_stopping"
    last_loss: float | None
    val_loss: float | None  # at the last evaluation
    best_val_loss: float | None  # the lowest val loss seen
    best_step: int | None  # the step saved to best/: the best value of best_metric
    tokens_per_s: float | None  # mean over steps, per second of training step
    tokens_per_s_wall: float | None  # all tokens over all wall-clock time of the run
    wall_time_s: float
    peak_rss_mb: float
    peak_cuda_mb: float | None
    skipped_rows: int
    params: dict[str, int] = field(default_factory=dict)
    # the rows the run trained and validated on (validation after val_max_items; 0 without a split):
    # what says a folder of several splits was read split by split
    train_rows: int = 0
    val_rows: int = 0
    notes: list[str] = field(default_factory=list)
    # the last answer check's verdict (gen_eval_interval); when the model votes after the choice below,
    # the check of the chosen way (EvalHook.check_chosen_answers)
    gen_verdict: str | None = None
    gen_verdict_status: str | None = None  # its status word, what `picovlm sweep`'s table shows
    best_metric: str = "val_loss"
    best_score: float | None = None  # best_metric's value at best_step
    # how model/ answers, chosen on validation after training (GenerationChoice.to_dict()); None: greedy,
    # nothing to choose (picovlm/eval/choose.py)
    generation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def train(
    model_cfg: VLMConfig,
    train_cfg: TrainConfig,
    progress: ProgressFn | None = None,
    resume: bool = False,
) -> RunResult:
    """Train a model as configured; write the run folder train_cfg.out_dir; return the run's figures.

    progress(step, total_steps, message) is called after every optimizer step (the CLI draws a bar);
    an exception raised from it stops training like a crash would (the last checkpoint survives).
    SIGINT or SIGTERM (from the main thread) lets the step in progress finish, writes checkpoint.pt
    and raises TrainingInterrupted (picovlm/train/interrupt.py); `resume=True` continues from there.
    """
    with StopOnSignal() as stop:
        return _train(model_cfg, train_cfg, progress, resume, stop)


def _train(
    model_cfg: VLMConfig,
    train_cfg: TrainConfig,
    progress: ProgressFn | None,
    resume: bool,
    stop: StopOnSignal,
) -> RunResult:
    from picovlm.model.params import param_report

    progress = progress or no_progress
    dist_ = setup_distributed(train_cfg.device)
    device = dist_.device
    if device.type == "cpu" and train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    run_dir = Path(train_cfg.out_dir)
    prepare_run_dir(run_dir, resume, dist_)
    seed_everything(train_cfg.seed)
    notes: list[str] = []

    # --- Data, tokenizer, model, optimizer, schedule ---
    progress(0, None, "loading data")
    train_ds, val_ds = load_data(train_cfg, notes)
    model_cfg, tokenizer = prepare_tokenizer(model_cfg, train_cfg, train_ds, run_dir, dist_, resume, notes)
    train_cfg, field_parser = settle_best_metric(train_cfg, train_ds, val_ds)
    train_cfg, fact_vocabulary = settle_fact_loss(train_cfg, train_ds, notes)  # None: no fact loss
    if train_cfg.native_image_size and not resume:  # a resumed run keeps the shapes it started with
        model_cfg = fit_image_size(model_cfg, train_ds, notes)
    model, train_rows, val_rows = build_model(
        model_cfg, tokenizer, train_ds, val_ds, progress, fact_vocabulary, notes
    )
    report = param_report(model.cfg)
    fact_heads = FactHeads(fact_vocabulary, model.cfg.vit_hidden_dim) if fact_vocabulary is not None else None
    optimizer = build_optimizer(model, train_cfg, extra=fact_heads)  # also freezes towers whose lr is 0
    cached_rows = (len(train_rows), len(val_rows) if val_rows is not None else 0)
    check_memory(model, train_cfg, report.total, device, cached_rows, dist_.local_world_size)
    model.to(device)
    if fact_heads is not None:
        fact_heads.to(device)
    # after build_optimizer (a frozen tower is not averaged) and on the device the weights train on
    average = WeightAverage(model, train_cfg.ema_decay) if train_cfg.ema_decay else None
    loader, val_loader, steps_per_epoch = make_loaders(
        model, train_rows, val_rows, train_cfg, dist_, facts=fact_heads.vocabulary if fact_heads else None
    )
    budget = Budget(train_cfg, steps_per_epoch)
    state = TrainState()
    if resume:
        state, schedule = ckpt.restore_training_state(
            run_dir, model, optimizer, train_cfg.best_metric, extra=fact_heads, average=average
        )
        if note := budget.load_state_dict(schedule):
            notes.append(note)
        notes.append(f"resumed from step {state.step}")

    tracker = _start_tracking(run_dir, model.cfg, train_cfg, state.step) if dist_.main else None
    amp_dtype = autocast_dtype(train_cfg.precision, device)
    train_model = wrap_model(model, train_cfg, dist_, fact_heads)
    evaluate = EvalHook(
        model, train_cfg, train_ds, val_ds, val_loader, field_parser, run_dir, dist_, amp_dtype, average
    )
    batches = StepBatches(loader, train_cfg, steps_per_epoch, state.step)

    # --- Steps ---
    model.train()
    budget.start(state.step, state.wall_time_s)
    progress(state.step, budget.total_steps, "training")
    last_loss, stopped_early, out_of_time = None, False, False
    last_step_end = time.perf_counter()
    stop.deferring = True  # from here a signal ends the run after its step, with a checkpoint
    try:
        while state.step < budget.total_steps:
            data_start = time.perf_counter()
            step_batches = batches.next()
            data_time = time.perf_counter() - data_start
            lr_factor = budget.lr_factor(state.step)
            figures = train_step(
                train_model, optimizer, step_batches, lr_factor, train_cfg.max_grad_norm, dist_, amp_dtype,
                label_smoothing=train_cfg.label_smoothing,
            )  # fmt: skip
            if average is not None:
                average.update()
            wall = time.perf_counter() - last_step_end  # data loading included
            state.step += 1
            out_of_time = budget.after_step(state.step, dist_)

            # --- Log ---
            # a signal to any rank stops every rank after this same step (the sum doubles as the vote)
            loss_sum, signalled, aux_sum = dist_.sum(
                [figures.loss_sum, float(stop.signum is not None), figures.aux_loss_sum]
            )
            last_loss = loss_sum / max(figures.supervised, 1)
            state.count(last_loss, figures.tokens, figures.seconds, figures.skipped_rows)
            record = step_record(
                state, figures, last_loss, optimizer, steps_per_epoch, data_time, wall, device
            )
            if fact_heads is not None:  # the heads' mean cross-entropy per field, unweighted
                record["fact_loss"] = aux_sum / max(figures.supervised, 1) / train_cfg.fact_loss_weight

            # --- Evaluate, keep the best, early-stop, checkpoint ---
            is_last = state.step == budget.total_steps
            stopped_early = evaluate(state, record, final=is_last or out_of_time)
            if tracker is not None:
                tracker.log(record)
            state.wall_time_s = budget.wall_time_s()
            ending = is_last or stopped_early or out_of_time or signalled
            if state.step % train_cfg.checkpoint_interval == 0 or ending:
                if dist_.main:
                    ckpt.save_training_state(
                        run_dir, model, optimizer, budget.state_dict(), state, fact_heads, average
                    )
                dist_.barrier()
            if signalled:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, state.step, run_dir)
            val_text = f" | val {evaluate.val_loss:.3f}" if evaluate.val_loss is not None else ""
            message = f"loss {last_loss:.3f}{val_text} | {figures.tokens / wall:,.0f} tok/s"
            progress(state.step, budget.total_steps, message)
            if stopped_early or out_of_time:
                break
            last_step_end = time.perf_counter()  # evaluation and checkpoint time is not the next step's
    finally:
        if tracker is not None:
            tracker.close()
        stop_workers(loader)
        stop_workers(val_loader)
    # The last step's checkpoint is on disk: a signal from here on stops at once, and one that came
    # after the last step's vote still stops the run (a resume only writes model/ and the summary).
    stop.deferring = False
    if stop.signum is not None and dist_.world_size == 1:
        raise TrainingInterrupted(stop.signum, state.step, run_dir)
    if budget.fitted():
        notes.append(budget.fitted_note())
    if average is not None:  # from here on the model is what model/ saves: the averaged weights
        average.copy_to_model()

    # --- How the model answers: the decoding its validation rows prefer (picovlm/eval/choose.py) ---
    choice = None
    if dist_.main:
        choice = choose_answering(
            model, val_ds, field_parser, train_cfg, state, run_dir,
            lambda done, total, message: progress(state.step, budget.total_steps, f"choosing: {message}"),
        )  # fmt: skip
        evaluate.check_chosen_answers(choice)

    # --- Finish: final model, plots, summary ---
    stop_reason = budget.stop_reason(stopped_early, out_of_time)
    result = _run_result(
        run_dir, state, budget, evaluate, stop_reason, last_loss, train_cfg, notes, device, report.to_dict()
    )
    result.train_rows, result.val_rows = len(train_ds), len(val_ds) if val_ds else 0
    result.generation = choice.to_dict() if choice is not None else None
    _finish(result, model, dist_)
    return result


def step_record(
    state: TrainState,
    figures: StepFigures,
    loss: float,
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    data_time: float,
    wall: float,
    device: torch.device,
) -> dict[str, Any]:
    """The step's line of metrics.jsonl (train/tracking.py lists the fields); `wall` is the seconds
    since the previous step ended, data loading included."""
    rss, cuda_mb = peak_memory_mb(device)
    record: dict[str, Any] = {
        "step": state.step,
        "epoch": round(state.step / steps_per_epoch, 4),
        "loss": loss,
        "lr": optimizer.param_groups[0]["lr"],
        "grad_norm": figures.grad_norm,
        "tokens": int(figures.tokens),
        "tokens_per_s": figures.tokens / figures.seconds,
        "tokens_per_s_wall": figures.tokens / wall,
        "samples_per_s": figures.samples / wall,
        "padding_share": 1 - figures.tokens / max(figures.slots, 1),
        "step_time_s": figures.seconds,
        "data_time_s": data_time,
        "peak_rss_mb": rss,
        "peak_cuda_mb": cuda_mb,
        "skipped_rows": int(figures.skipped_rows),
    }
    for group in optimizer.param_groups:
        record[f"lr_{group['name']}"] = group["lr"]
    return record


def _finish(result: RunResult, model, dist_: Dist) -> None:
    """Write model/ (the final weights), the plots and summary.json (which marks the run finished),
    then leave the process group."""
    if dist_.main:
        ckpt.save_model(model, result.run_dir / "model")
        plot_run(result.run_dir)
        summary = json.dumps({**result.to_dict(), "finished": True}, indent=2)
        atomic_write_text(result.run_dir / SUMMARY_FILE, summary)
    dist_.barrier()
    if dist_.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _start_tracking(run_dir: Path, model_cfg: VLMConfig, train_cfg: TrainConfig, step: int) -> Tracker:
    """Write the run's config.yaml (what --resume reads back) and open metrics.jsonl at `step`."""
    save_config(run_dir / "config.yaml", model_cfg, train_cfg)
    config = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    return Tracker(run_dir, train_cfg.report_to, config, resume_step=step)


def _run_result(
    run_dir: Path,
    state: TrainState,
    budget: Budget,
    evaluate: EvalHook,
    stop_reason: str,
    last_loss: float | None,
    train_cfg: TrainConfig,
    notes: list[str],
    device: torch.device,
    params: dict[str, int],
) -> RunResult:
    rss, cuda_mb = peak_memory_mb(device)
    return RunResult(
        run_dir=run_dir,
        steps=state.step,
        total_steps=budget.total_steps,
        stop_reason=stop_reason,
        last_loss=last_loss,
        val_loss=evaluate.val_loss,
        best_val_loss=state.best_val_loss,
        best_step=state.best_step,
        best_metric=train_cfg.best_metric,
        best_score=state.best_score,
        tokens_per_s=state.tokens / state.step_time_s if state.step_time_s else None,
        tokens_per_s_wall=state.tokens / state.wall_time_s if state.wall_time_s else None,
        wall_time_s=state.wall_time_s,
        peak_rss_mb=rss,
        peak_cuda_mb=cuda_mb,
        skipped_rows=state.skipped_rows,
        params=params,
        notes=notes,
        gen_verdict=evaluate.gen_verdict,
        gen_verdict_status=evaluate.gen_verdict_status,
    )
