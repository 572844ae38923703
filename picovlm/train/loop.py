"""The training loop: one function, `train(model_cfg, train_cfg)`, read top to bottom.

    data (cauldron splits) -> tokenizer (trained on the training texts, or loaded) -> model
    -> memory check -> AdamW + warmup/cosine -> [resume] -> steps:
         accumulate micro-batches -> clip -> step -> log -> eval / early stop -> checkpoint
         (SIGINT / SIGTERM: the step finishes, checkpoint, TrainingInterrupted; train/interrupt.py)
    -> model/ (final), best/ (best train.best_metric: lowest val loss by default), plots, summary.json

Devices: a CPU (fp32), one CUDA GPU (bf16 autocast over fp32 master weights), or several processes
under torchrun (DDP: gloo on CPU, nccl on CUDA). Under DDP every rank reads its own interleaved share
of the same global batch, and only rank 0 writes files.

The loss of an optimizer step is the mean cross-entropy over every supervised token of the whole
global batch (all micro-batches, all ranks): each micro-batch's summed loss is divided by the global
supervised-token count. So the trajectory is the same whether a global batch of 16 runs as one
process x 16, one process x 4 x 4 accumulation steps, or two processes x 8.

The data position is a function of the step (epoch = step // steps_per_epoch; the sample order of an
epoch is fixed by (seed, epoch)), so a checkpoint's step is all that resume needs to continue the
data stream exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from picovlm.config import TrainConfig, VLMConfig, replace, save_config
from picovlm.errors import ConfigError, DataError
from picovlm.train import checkpoint as ckpt
from picovlm.train.interrupt import StopOnSignal, TrainingInterrupted
from picovlm.train.optim import build_optimizer, lr_factor, set_learning_rates
from picovlm.train.tracking import Tracker, plot_run
from picovlm.utils import ProgressFn, atomic_write_text, no_progress

SUMMARY_FILE = "summary.json"
GEN_BASELINE_TRAIN_ROWS = 5000  # training rows the in-training lookup baseline searches (eval: all)


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
    gen_verdict: str | None = None  # the last in-training answer check's verdict (gen_eval_interval)
    best_metric: str = "val_loss"
    best_score: float | None = None  # best_metric's value at best_step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


# --- Set-up helpers --------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Sum numbers over ranks (one all-reduce for the whole list)."""
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if RANK/WORLD_SIZE say so, and choose this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device_name} but no CUDA GPU is visible: use device=cpu or device=auto.")
    device = torch.device(device_name)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank), device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. auto: bf16 on CUDA; fp32 on CPU, where bf16 autocast was ~17x slower here."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def load_splits(train_cfg: TrainConfig) -> tuple[Any, Any | None]:
    """The training split and the validation split (None if the dataset has none)."""
    from picovlm.data.cauldron import load_cauldron

    if not train_cfg.data_dir:
        raise ConfigError(
            "train.data_dir is not set: point it at a cauldron-schema dataset folder, e.g. the demo set "
            "(`picovlm data demo --out data/demo`, then data_dir=data/demo)."
        )
    if not Path(train_cfg.data_dir).exists():
        raise DataError(f"train.data_dir={train_cfg.data_dir} does not exist.")
    train_ds = load_cauldron(train_cfg.data_dir, split=train_cfg.train_split)
    if len(train_ds) == 0:
        raise DataError(
            f"{train_cfg.data_dir} split {train_cfg.train_split!r} is empty: nothing to train on."
        )
    try:
        val_ds = load_cauldron(train_cfg.data_dir, split=train_cfg.val_split)
    except DataError:
        val_ds = None
    if val_ds is not None and train_cfg.val_max_items and len(val_ds) > train_cfg.val_max_items:
        val_ds = val_ds.select(range(train_cfg.val_max_items))
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    return train_ds, val_ds


def training_texts(dataset):
    """Every question and answer of a split, for training the tokenizer (no image decoding)."""
    from picovlm.data.cauldron import iter_column_batches

    for _, batch in iter_column_batches(dataset, ["texts"]):
        for turns in batch["texts"]:
            for turn in turns or []:
                yield from (turn.get("user") or "", turn.get("assistant") or "")


def prepare_tokenizer(
    model_cfg, train_cfg, train_ds, run_dir: Path, dist_: Dist, resuming: bool, notes: list[str]
):
    """Load or train the tokenizer, save it in the run folder, and size the model's vocabulary to it."""
    from picovlm.data.tokenizer import TOKENIZER_FILE, load_tokenizer, train_tokenizer

    saved = run_dir / TOKENIZER_FILE
    if resuming and saved.is_file():
        # Continue with the vocabulary the run started with (a trained tokenizer may have resized it).
        import yaml

        tokenizer = load_tokenizer(saved)
        started = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
        return replace(model_cfg, lm_vocab_size=started["lm_vocab_size"]), tokenizer
    elif train_cfg.tokenizer:
        tokenizer = load_tokenizer(train_cfg.tokenizer).add_image_wrap_tokens()  # a new model's layout
    else:
        if dist_.main:  # one rank trains and saves; the others read the very same file
            train_tokenizer(training_texts(train_ds), train_cfg.tokenizer_vocab_size).save(run_dir)
        dist_.barrier()
        tokenizer = load_tokenizer(saved)
        if model_cfg.lm_vocab_size != len(tokenizer):
            notes.append(
                f"trained a {len(tokenizer)}-token BPE on the training texts; lm_vocab_size "
                f"{model_cfg.lm_vocab_size} -> {len(tokenizer)} (a domain vocabulary shrinks the tied embedding)"
            )
        return replace(model_cfg, lm_vocab_size=len(tokenizer)), tokenizer
    if model_cfg.lm_vocab_size < len(tokenizer):
        notes.append(
            f"lm_vocab_size raised from {model_cfg.lm_vocab_size} to {len(tokenizer)} to fit the tokenizer"
        )
        model_cfg = replace(model_cfg, lm_vocab_size=len(tokenizer))
    if dist_.main:
        tokenizer.save(run_dir)
    return model_cfg, tokenizer


def estimate_memory_bytes(cfg: VLMConfig, train_cfg: TrainConfig, trainable: int, total: int) -> int:
    """A rough upper estimate of training memory: weights, grads, AdamW moments, activations, head chunk.

    Activations: per LM token and block ~ 12 D + 4 inter + 2 heads x T floats are kept for backward;
    per image patch and ViT block ~ 12 D_vit + 2 inter_vit + heads x patches. Good to a factor ~2,
    which is what a "will this batch fit at all" check needs.
    """
    B, T = train_cfg.batch_size, cfg.lm_max_length
    lm = B * T * cfg.lm_n_blocks * (12 * cfg.lm_hidden_dim + 4 * cfg.lm_inter_dim + 2 * cfg.lm_n_heads * T)
    lm += B * T * cfg.lm_hidden_dim * 4  # embeddings, final norm, hidden states kept for the head
    patches = cfg.vit_n_patches
    vit = (
        B
        * patches
        * cfg.vit_n_blocks
        * (12 * cfg.vit_hidden_dim + 2 * cfg.vit_inter_dim + cfg.vit_n_heads * patches)
    )
    head = 3 * 2048 * cfg.lm_vocab_size  # one chunk of logits, its softmax and its gradient
    return 4 * (total + 3 * trainable + lm + vit + head)


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def peak_memory_mb(device: torch.device) -> tuple[float, float | None]:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return rss, cuda


def supervised_tokens(batch: dict) -> int:
    """Tokens the loss is computed on: the same rule as the model's forward."""
    supervised = batch["labels"][:, 1:] != -100
    if batch.get("segment_ids") is not None:
        seg = batch["segment_ids"]
        supervised &= seg[:, 1:] == seg[:, :-1]
    return int(supervised.sum())


MODEL_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids", "segment_ids")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_KEYS if batch.get(k) is not None}


@torch.no_grad()
def validation_loss(model, loader, device, amp_dtype, dist_: Dist) -> float | None:
    """Mean cross-entropy per supervised token over this rank's share of the val set, summed over ranks."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0.0
    for batch in loader:
        if batch["n_samples"] == 0:
            continue
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(**to_device(batch, device), reduction="sum")
        total += float(out.loss)
        tokens += out.n_tokens
    model.train(was_training)
    total, tokens = dist_.sum([total, tokens], device)
    return total / tokens if tokens else None


# --- The loop --------------------------------------------------------------------------------------


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
    from picovlm.data.leakage import check_training_leakage
    from picovlm.data.pipeline import CauldronTorchDataset, make_dataloader
    from picovlm.model.params import param_report
    from picovlm.model.vlm import VisionLanguageModel
    from picovlm.retrieval import build_training_index, with_neighbours

    progress = progress or no_progress
    dist_, device = setup_distributed(train_cfg.device)
    if device.type == "cpu" and train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    run_dir = Path(train_cfg.out_dir)
    notes: list[str] = []
    if not resume and (ckpt.has_checkpoint(run_dir) or (run_dir / SUMMARY_FILE).exists()):
        raise ConfigError(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another train.out_dir."
        )
    if resume and not ckpt.has_checkpoint(run_dir):
        raise ConfigError(f"--resume: {run_dir} has no {ckpt.CHECKPOINT_FILE} to resume from.")
    if dist_.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist_.barrier()
    seed_everything(train_cfg.seed)

    # --- Data and tokenizer ---
    progress(0, None, "loading data")
    train_ds, val_ds = load_splits(train_cfg)
    # held-out rows that share a picture with training would make val loss and eval measure memory
    notes += check_training_leakage(
        train_cfg.data_dir, train_ds, train_cfg.train_split, train_cfg.allow_leakage
    )
    model_cfg, tokenizer = prepare_tokenizer(model_cfg, train_cfg, train_ds, run_dir, dist_, resume, notes)
    if val_ds is None:
        notes.append(
            f"no {train_cfg.val_split!r} split in {train_cfg.data_dir}: no val loss, no early stopping"
        )
    # the parser of the answers' facts, if the rows come from a built-in set: read once, used by every check
    field_parser = _field_parser(train_ds, val_ds)
    if train_cfg.best_metric == "auto":
        train_cfg = replace(train_cfg, best_metric=resolve_best_metric(train_cfg, val_ds))
    _check_best_metric(train_cfg, val_ds, field_parser)

    # --- Model ---
    model = VisionLanguageModel(model_cfg, tokenizer=tokenizer)
    model_cfg = model.cfg  # the tokenizer's special ids are now filled in
    train_rows, val_rows = train_ds, val_ds  # what the model reads: with retrieval, its neighbours too
    if model_cfg.retrieval_k:
        progress(0, None, "indexing the training pictures for retrieval")
        model.retrieval = build_training_index(train_ds, model_cfg.retrieval_k)
        # a training row's neighbours come from other objects, as a test picture's do
        train_rows = with_neighbours(train_ds, model.retrieval, exclude_own_group=True)
        val_rows = with_neighbours(val_ds, model.retrieval, exclude_own_group=False) if val_ds else None
    report = param_report(model_cfg)
    optimizer = build_optimizer(model, train_cfg)  # also freezes towers whose learning rate is 0
    trainable = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    needed, available = (
        estimate_memory_bytes(model_cfg, train_cfg, trainable, report.total),
        available_memory_bytes(device),
    )
    if needed > available:
        raise ConfigError(
            f"batch_size={train_cfg.batch_size} needs about {needed / 2**30:.1f} GiB on {device.type} "
            f"(weights, AdamW state, activations) but only {available / 2**30:.1f} GiB is free: lower "
            f"train.batch_size and raise train.gradient_accumulation_steps to keep the same global batch."
        )
    model.to(device)

    # --- Batches and schedule ---
    train_set = CauldronTorchDataset(train_rows, model.processor)
    micro = train_cfg.batch_size
    accum = train_cfg.gradient_accumulation_steps
    global_batch = micro * accum * dist_.world_size
    steps_per_epoch = (len(train_set) // dist_.world_size) // (micro * accum)
    if steps_per_epoch == 0:
        raise DataError(
            f"{train_cfg.data_dir} split {train_cfg.train_split!r} has {len(train_set)} rows, fewer than one "
            f"global batch ({global_batch} = batch_size x gradient_accumulation_steps x processes): lower "
            f"train.batch_size or add data."
        )
    total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))
    warmup_steps = math.ceil(train_cfg.warmup_ratio * total_steps)
    # With a time budget, the schedule is fitted to the clock as steps get timed (see below), so the
    # learning rate has decayed when the clock runs out instead of being cut off at its peak. The budget
    # is the budget: `epochs` is then only the first guess, and only max_steps caps the fit.
    planned_steps = total_steps
    fit_to_clock = train_cfg.max_minutes is not None
    loader = make_dataloader(
        train_set, micro, shuffle=True, seed=train_cfg.seed, num_workers=train_cfg.num_workers,
        packing=train_cfg.packing, drop_last=True, rank=dist_.rank, world_size=dist_.world_size,
        group_by_length=train_cfg.group_by_length, accumulation_steps=accum,
    )  # fmt: skip
    val_loader = None
    if val_ds is not None:
        val_set = CauldronTorchDataset(val_rows, model.processor)
        val_loader = make_dataloader(
            val_set,
            micro,
            shuffle=False,
            rank=dist_.rank,
            world_size=dist_.world_size,
            packing=train_cfg.packing,
        )
        if len(val_set) < dist_.world_size:
            val_loader = None

    # --- Resume ---
    step, state = 0, {"best_val_loss": None, "best_step": None, "best_score": None, "bad_evals": 0, "tokens": 0,
                      "wall_time_s": 0.0, "step_time_s": 0.0, "skipped_rows": 0, "train_losses_since_eval": []}  # fmt: skip
    if resume:
        saved = ckpt.load_checkpoint(run_dir)
        if saved["schedule"].get("fitted_to_time"):
            total_steps, warmup_steps = saved["schedule"]["total_steps"], saved["schedule"]["warmup_steps"]
        elif saved["schedule"] != {"total_steps": total_steps, "warmup_steps": warmup_steps}:
            notes.append(
                f"schedule changed since the checkpoint ({saved['schedule']}); continuing with the new one"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, state = saved["step"], saved["trainer"]
        if "best_score" not in state:  # a checkpoint from before best_metric: its best was by val loss
            state["best_score"] = state["best_val_loss"] if train_cfg.best_metric == "val_loss" else None
        ckpt.set_rng_state(saved["rng"])
        notes.append(f"resumed from step {step}")

    config_dict = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    tracker = None
    if dist_.main:
        save_config(run_dir / "config.yaml", model_cfg, train_cfg)
        tracker = Tracker(run_dir, train_cfg.report_to, config_dict, resume_step=step)

    amp_dtype = autocast_dtype(train_cfg.precision, device)
    train_model: torch.nn.Module = model
    if train_cfg.compile:
        train_model = torch.compile(model)
    if dist_.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    gen_rows = _gen_eval_rows(val_ds, train_cfg) if dist_.main else None
    gen_baseline = _gen_baseline(gen_rows, train_ds, field_parser)
    trainable_params = [p for p in model.parameters() if p.requires_grad]

    # --- Steps ---
    model.train()
    stop_reason = "max_steps" if train_cfg.max_steps else "epochs"
    last_loss = val_loss = gen_verdict = None
    session_start = time.time()
    session_first_step = step
    fit_anchor: tuple[int, float] | None = None  # (step, time) of the first fit to the clock
    prior_wall = state["wall_time_s"]
    step_times: list[float] = []
    epoch = step // steps_per_epoch
    batches = _epoch_batches(loader, epoch, (step % steps_per_epoch) * micro * accum)
    progress(step, total_steps, "training")
    last_step_end = time.perf_counter()
    stop.deferring = True  # from here a signal ends the run after its step, with a checkpoint
    try:
        while step < total_steps:
            # Fetch the whole optimizer step's micro-batches first: the loss is normalised by their
            # supervised-token count (summed over ranks) before any backward pass.
            data_start = time.perf_counter()
            step_batches = []
            while len(step_batches) < accum:
                batch = next(batches, None)
                if batch is None:  # epoch done (a tail shorter than one optimizer step is dropped)
                    epoch += 1
                    batches = _epoch_batches(loader, epoch, 0)
                    step_batches = []
                    continue
                step_batches.append(batch)
            data_time = time.perf_counter() - data_start

            compute_start = time.perf_counter()
            set_learning_rates(optimizer, lr_factor(step, total_steps, warmup_steps, train_cfg.min_lr_ratio))
            local = [sum(supervised_tokens(b) for b in step_batches),
                     sum(int(b["attention_mask"].sum()) for b in step_batches),
                     sum(b["input_ids"].numel() for b in step_batches),
                     sum(b["n_samples"] for b in step_batches),
                     sum(b["skipped_rows"] for b in step_batches)]  # fmt: skip
            n_supervised, n_tokens, n_slots, n_samples, n_skipped = dist_.sum(local, device)
            loss_sum = 0.0
            for i, batch in enumerate(step_batches):
                sync = i == len(step_batches) - 1 or dist_.world_size == 1
                with _maybe_no_sync(train_model, sync):
                    with torch.autocast(
                        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                    ):
                        out = train_model(**to_device(batch, device), reduction="sum")
                    # DDP averages gradients over ranks; the world_size factor turns that into a sum.
                    (out.loss * (dist_.world_size / max(n_supervised, 1))).backward()
                loss_sum += float(out.loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable_params, train_cfg.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_end = time.perf_counter()
            step += 1
            out_of_time = False
            if fit_to_clock:
                # One clock per step for both the schedule fit and the stop; under DDP the ranks
                # average theirs (one all-reduce), so they fit the same schedule and stop together.
                now = time.time()
                elapsed = prior_wall + now - session_start
                per_step = 0.0  # 0: no fit on this step
                if step < total_steps and step - session_first_step == FIT_SCHEDULE_FROM_STEP:
                    # The first fit times everything so far (start-up and the slow first steps), so it
                    # errs short; later fits time the steps since it, evaluations and checkpoints included.
                    per_step, fit_anchor = (now - session_start) / FIT_SCHEDULE_FROM_STEP, (step, now)
                elif step < total_steps and fit_anchor and step - fit_anchor[0] >= FIT_SCHEDULE_FROM_STEP * 4:
                    per_step = (now - fit_anchor[1]) / (step - fit_anchor[0])
                if dist_.world_size > 1:
                    elapsed, per_step = (v / dist_.world_size for v in dist_.sum([elapsed, per_step], device))
                if per_step:
                    total_steps, warmup_steps = fit_schedule_to_time(
                        train_cfg, step, elapsed, per_step, train_cfg.max_steps, warmup_steps
                    )
                out_of_time = elapsed >= train_cfg.max_minutes * 60

            # --- Log ---
            # a signal to any rank stops every rank after this same step (the sum doubles as the vote)
            loss_sum, signalled = dist_.sum([loss_sum, float(stop.signum is not None)], device)
            last_loss = loss_sum / max(n_supervised, 1)
            step_time = step_end - compute_start
            wall = step_end - last_step_end
            step_times.append(step_time)
            state["tokens"] += int(n_tokens)
            state["step_time_s"] += step_time
            state["skipped_rows"] += int(n_skipped)
            state["train_losses_since_eval"].append(last_loss)
            rss, cuda_mb = peak_memory_mb(device)
            record: dict[str, Any] = {
                "step": step, "epoch": round(step / steps_per_epoch, 4), "loss": last_loss,
                "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm, "tokens": int(n_tokens),
                "tokens_per_s": n_tokens / step_time, "tokens_per_s_wall": n_tokens / wall,
                "samples_per_s": n_samples / wall, "padding_share": 1 - n_tokens / max(n_slots, 1),
                "step_time_s": step_time, "data_time_s": data_time, "peak_rss_mb": rss,
                "peak_cuda_mb": cuda_mb, "skipped_rows": int(n_skipped),
            }  # fmt: skip
            for group in optimizer.param_groups:
                record[f"lr_{group['name']}"] = group["lr"]

            # --- Evaluate, keep the best, early-stop ---
            is_last = step == total_steps
            judged = False  # whether this step measured best_metric
            if val_loader is not None and (step % train_cfg.eval_interval == 0 or is_last or out_of_time):
                val_loss = validation_loss(model, val_loader, device, amp_dtype, dist_)
                train_recent = state["train_losses_since_eval"]
                record["val_loss"] = val_loss
                record["train_val_gap"] = (
                    val_loss - sum(train_recent) / len(train_recent) if val_loss else None
                )
                state["train_losses_since_eval"] = []
                if val_loss is not None and (
                    state["best_val_loss"] is None or val_loss < state["best_val_loss"]
                ):
                    state["best_val_loss"] = val_loss
                judged = train_cfg.best_metric == "val_loss"
            if train_cfg.gen_eval_interval and (
                step % train_cfg.gen_eval_interval == 0 or is_last or out_of_time
            ):
                if gen_rows:
                    record.update(_generation_metrics(model, gen_rows, field_parser, gen_baseline))
                    gen_verdict = record.get("gen_verdict", gen_verdict)
                judged = judged or train_cfg.best_metric != "val_loss"  # a val split exists: checked
            stop_early = judged and _keep_best(record.get(train_cfg.best_metric), step, state, train_cfg, dist_,
                                               device, lambda: _save_model(model, run_dir / "best"))  # fmt: skip

            if tracker is not None:
                tracker.log(record)
            last_step_end = time.perf_counter()  # eval and checkpoint time is not charged to the next step
            state["wall_time_s"] = prior_wall + time.time() - session_start
            if step % train_cfg.checkpoint_interval == 0 or is_last or stop_early or out_of_time or signalled:
                if dist_.main:
                    ckpt.save_checkpoint(run_dir, {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "schedule": {"total_steps": total_steps, "warmup_steps": warmup_steps,
                                     **({"fitted_to_time": True} if train_cfg.max_minutes is not None else {})},
                        "trainer": state,
                    })  # fmt: skip
                dist_.barrier()
            if signalled:
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, step, run_dir)
            val_text = f" | val {val_loss:.3f}" if val_loss is not None else ""
            progress(step, total_steps, f"loss {last_loss:.3f}{val_text} | {n_tokens / wall:,.0f} tok/s")
            if stop_early or out_of_time:
                stop_reason = "early_stopping" if stop_early else "max_minutes"
                break
            last_step_end = time.perf_counter()
    finally:
        if tracker is not None:
            tracker.close()
    # The last step's checkpoint is on disk: a signal from here on stops at once, and one that came
    # after the last step's vote still stops the run (a resume only writes model/ and the summary).
    stop.deferring = False
    if stop.signum is not None and dist_.world_size == 1:
        raise TrainingInterrupted(stop.signum, step, run_dir)

    if fit_to_clock and total_steps < (train_cfg.max_steps or math.inf):
        if stop_reason != "early_stopping":
            stop_reason = "max_minutes"
        notes.append(
            f"max_minutes={train_cfg.max_minutes}: schedule fitted to the clock, {total_steps} steps "
            f"({total_steps / steps_per_epoch:.1f} epochs; the first guess was {planned_steps})"
        )

    # --- Finish: final model, plots, summary ---
    rss, cuda_mb = peak_memory_mb(device)
    wall_total = state["wall_time_s"]
    result = RunResult(
        run_dir=run_dir, steps=step, total_steps=total_steps, stop_reason=stop_reason, last_loss=last_loss,
        val_loss=val_loss, best_val_loss=state["best_val_loss"], best_step=state["best_step"],
        best_metric=train_cfg.best_metric, best_score=state["best_score"],
        tokens_per_s=state["tokens"] / state["step_time_s"] if state["step_time_s"] else None,
        tokens_per_s_wall=state["tokens"] / wall_total if wall_total else None, wall_time_s=wall_total,
        peak_rss_mb=rss, peak_cuda_mb=cuda_mb, skipped_rows=state["skipped_rows"], params=report.to_dict(),
        notes=notes, gen_verdict=gen_verdict, train_rows=len(train_ds), val_rows=len(val_ds) if val_ds else 0,
    )  # fmt: skip
    if dist_.main:
        _save_model(model, run_dir / "model")
        plot_run(run_dir)
        atomic_write_text(
            run_dir / SUMMARY_FILE, json.dumps({**result.to_dict(), "finished": True}, indent=2)
        )
    dist_.barrier()
    if dist_.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return result


FIT_SCHEDULE_FROM_STEP = 5  # first fit after this many steps; refits every step from 4x as many later


def fit_schedule_to_time(
    train_cfg: TrainConfig,
    steps_done: int,
    elapsed_s: float,
    per_step_s: float,
    max_steps: int | None,
    warmup_steps: int,
) -> tuple[int, int]:
    """(total_steps, warmup_steps) that fill what is left of `max_minutes` at `per_step_s` a step.

    5% of the budget is kept for the final evaluation and save. Never more steps than max_steps (when
    set), never fewer than one more. Once warmup is over it stays as it was, so a refit never restarts it.
    """
    remaining = train_cfg.max_minutes * 60 * 0.95 - elapsed_s
    fit = steps_done + int(max(remaining, 0.0) / max(per_step_s, 1e-9))
    total = max(steps_done + 1, min(max_steps or fit, fit))
    if steps_done >= warmup_steps:
        return total, warmup_steps
    return total, max(math.ceil(train_cfg.warmup_ratio * total), min(steps_done, warmup_steps))


def _epoch_batches(loader, epoch: int, start_sample: int):
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip(start_sample)
    return iter(loader)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _maybe_no_sync(model, sync: bool):
    """Under DDP, skip the gradient all-reduce on all but the last micro-batch of a step."""
    if sync or not hasattr(model, "no_sync"):
        return _nullcontext()
    return model.no_sync()


def _save_model(model, directory: Path) -> None:
    from picovlm.utils import atomic_path

    with atomic_path(directory) as tmp:
        model.save_pretrained(tmp)


def _gen_eval_rows(val_ds, train_cfg: TrainConfig) -> list | None:
    if val_ds is None or not train_cfg.gen_eval_interval:
        return None
    return [val_ds[i] for i in range(min(train_cfg.gen_eval_items, len(val_ds)))]


def _field_parser(train_ds, val_ds):
    if val_ds is None:
        return None
    from picovlm.eval.evaluate import detect_extract_fields

    return detect_extract_fields(train_ds, val_ds)


def resolve_best_metric(train_cfg: TrainConfig, val_ds) -> str:
    """What best_metric="auto" means for this run: the answers' token F1 where the answer check runs on
    a validation split (it predicted the test answers; the val loss did not), else the val loss."""
    return "gen_token_f1" if val_ds is not None and train_cfg.gen_eval_interval else "val_loss"


def _check_best_metric(train_cfg: TrainConfig, val_ds, field_parser) -> None:
    """Fail before training, not silently after it, when best/ could never be chosen by best_metric."""
    metric = train_cfg.best_metric
    if metric == "val_loss":
        return
    if val_ds is None:
        raise ConfigError(
            f"best_metric={metric} is measured on the {train_cfg.val_split!r} split, which "
            f"{train_cfg.data_dir} does not have: add one (picovlm data split) or use best_metric=val_loss."
        )
    if metric == "gen_field_accuracy" and field_parser is None:
        raise ConfigError(
            "best_metric=gen_field_accuracy needs rows with facts: a `fields` column (`picovlm data import` "
            "keeps a table's extra columns as facts); for data without facts use gen_token_f1."
        )


def _keep_best(score, step: int, state: dict, train_cfg: TrainConfig, dist_, device, save_best) -> bool:
    """Record an evaluation of train_cfg.best_metric: save best/ when it improved, count evaluations
    without improvement, and return whether early stopping ends the run now. Every rank calls this at
    the same steps; an answer metric is measured on rank 0 only, so its verdict is shared from there."""
    lower_is_better = train_cfg.best_metric == "val_loss"
    improved = score is not None and (
        state["best_score"] is None
        or (score < state["best_score"] if lower_is_better else score > state["best_score"])
    )
    if not lower_is_better and dist_.world_size > 1:
        (improved_anywhere,) = dist_.sum([float(improved)], device)
        improved = improved_anywhere > 0
    if improved:
        state["best_score"], state["best_step"], state["bad_evals"] = score, step, 0
        if dist_.main:
            save_best()
        return False
    state["bad_evals"] += 1
    patience = train_cfg.early_stopping_patience
    return patience is not None and state["bad_evals"] >= patience


def _gen_baseline(rows: list | None, train_ds, field_parser) -> dict[str, Any] | None:
    """The nearest-pixels lookup on the answer-check rows, once per run: it does not change as the
    model trains. Up to GEN_BASELINE_TRAIN_ROWS training rows, so a 200k-row mix starts in seconds."""
    if not rows:
        return None
    from picovlm.eval.evaluate import pixel_baseline

    return pixel_baseline(rows, train_ds, field_parser, max_train_rows=GEN_BASELINE_TRAIN_ROWS)


def _generation_metrics(model, rows: list, field_parser, baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluation area's quick check (answers, collapse signals, image reliance, the lookup baseline)
    as gen_* metrics."""
    try:
        from picovlm.eval.evaluate import quick_eval
    except ImportError:
        return {}
    metrics = quick_eval(model, rows, extract_fields=field_parser, baseline=baseline)
    return {
        f"gen_{k}": v
        for k, v in metrics.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }
