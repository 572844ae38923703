"""One optimizer step: its micro-batches (`StepBatches`) and the step itself (`train_step`).

The loss of a step is the mean cross-entropy over every supervised token of the whole global batch
(all micro-batches, all ranks): each micro-batch's summed loss is divided by the global supervised-token
count. So the trajectory is the same whether a global batch of 16 runs as one process x 16, one
process x 4 x 4 accumulation steps, or two processes x 8.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from picovlm.config import TrainConfig
from picovlm.train.optim import set_learning_rates
from picovlm.train.setup import Dist

MODEL_KEYS = (
    "input_ids", "attention_mask", "labels", "pixel_values", "position_ids", "segment_ids",
    "fact_labels", "first_image",  # only in batches for the auxiliary fact loss (picovlm/train/facts.py)
)  # fmt: skip


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_KEYS if batch.get(k) is not None}


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """bf16 autocast when amp_dtype is set, else plain fp32 (train/setup.py's autocast_dtype)."""
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def supervised_tokens(batch: dict) -> int:
    """Tokens the loss is computed on: the same rule as the model's forward."""
    supervised = batch["labels"][:, 1:] != -100
    if batch.get("segment_ids") is not None:
        seg = batch["segment_ids"]
        supervised &= seg[:, 1:] == seg[:, :-1]
    return int(supervised.sum())


class StepBatches:
    """The training data as a function of the step: epoch = step // steps_per_epoch, and the sample
    order of an epoch is fixed by (seed, epoch), so starting at a checkpoint's step continues the data
    stream exactly where it stopped."""

    def __init__(self, loader, train_cfg: TrainConfig, steps_per_epoch: int, start_step: int):
        self.loader, self.accum = loader, train_cfg.gradient_accumulation_steps
        self.epoch = start_step // steps_per_epoch
        samples_per_step = train_cfg.batch_size * self.accum  # this rank's
        self._batches = self._epoch(self.epoch, (start_step % steps_per_epoch) * samples_per_step)

    def _epoch(self, epoch: int, start_sample: int):
        self.loader.sampler.set_epoch(epoch)
        self.loader.sampler.skip(start_sample)
        return iter(self.loader)

    def next(self) -> list[dict]:
        """The next step's micro-batches (this rank's share): all of them are fetched before any
        backward pass, because the loss is normalised by their supervised-token count."""
        step_batches: list[dict] = []
        while len(step_batches) < self.accum:
            batch = next(self._batches, None)
            if batch is None:  # epoch done (a tail shorter than one optimizer step is dropped)
                self.epoch += 1
                self._batches = self._epoch(self.epoch, 0)
                step_batches = []
                continue
            step_batches.append(batch)
        return step_batches


@dataclass
class StepFigures:
    """What one optimizer step did; counts are summed over ranks, loss_sum is this rank's."""

    loss_sum: float  # summed cross-entropy of this rank's micro-batches
    grad_norm: float  # before clipping
    supervised: float  # tokens the loss is computed on
    tokens: float  # non-padding tokens
    slots: float  # token positions, padding included
    samples: float
    skipped_rows: float
    seconds: float  # compute time of the step, data loading excluded
    aux_loss_sum: float = 0.0  # this rank's summed auxiliary (fact) loss, weighted as in the backward pass


def train_step(
    train_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_batches: list[dict],
    lr_factor: float,
    max_grad_norm: float,
    dist_: Dist,
    amp_dtype: torch.dtype | None,
    label_smoothing: float = 0.0,
) -> StepFigures:
    """One optimisation step at `lr_factor` x the peak learning rates: forward and backward of every
    micro-batch, gradient clipping, the AdamW update."""
    start, device = time.perf_counter(), dist_.device
    set_learning_rates(optimizer, lr_factor)
    local = [
        sum(supervised_tokens(b) for b in step_batches),
        sum(int(b["attention_mask"].sum()) for b in step_batches),
        sum(b["input_ids"].numel() for b in step_batches),
        sum(b["n_samples"] for b in step_batches),
        sum(b["skipped_rows"] for b in step_batches),
    ]
    n_supervised, n_tokens, n_slots, n_samples, n_skipped = dist_.sum(local)
    loss_sum = aux_loss_sum = 0.0
    for i, batch in enumerate(step_batches):
        # Under DDP, the gradient all-reduce runs only on the last micro-batch of the step.
        sync = i == len(step_batches) - 1 or not hasattr(train_model, "no_sync")
        with contextlib.nullcontext() if sync else train_model.no_sync():
            with autocast(device, amp_dtype):
                out = train_model(
                    **to_device(batch, device), reduction="sum", label_smoothing=label_smoothing
                )
            loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
            # DDP averages gradients over ranks; the world_size factor turns that into a sum.
            (loss * (dist_.world_size / max(n_supervised, 1))).backward()
        loss_sum += float(out.loss.detach())
        aux_loss_sum += 0.0 if out.aux_loss is None else float(out.aux_loss.detach())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(train_model.parameters(), max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so that `seconds` times the GPU's work, not its queueing
    seconds = time.perf_counter() - start
    return StepFigures(
        loss_sum, grad_norm, n_supervised, n_tokens, n_slots, n_samples, n_skipped, seconds, aux_loss_sum
    )
