"""AdamW with one parameter group per tower, and the learning-rate schedule.

Groups: projector (`lr_mp`), vision tower (`lr_vision_backbone`), language model
(`lr_language_backbone`). A rate of 0 freezes the tower: its parameters get requires_grad=False, so
no gradients, no optimizer state, and no backward compute through that tower's weights.

Weight decay applies to matrices only: never to norms, biases, embeddings or learned positions
(decaying a lookup table pulls rarely seen tokens towards zero, which is noise, not regularisation).

Schedule: linear warmup from ~0 to the peak over `warmup_steps`, then cosine decay to
`min_lr_ratio * peak` at `total_steps`. It is a pure function of the step, so resuming at step k
gives exactly the learning rate an uninterrupted run had at step k.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from picovlm.config import TrainConfig

GROUP_PREFIXES = {"projector": "projector.", "vision": "vision_encoder.", "language": "decoder."}


def group_learning_rates(cfg: TrainConfig) -> dict[str, float]:
    return {"projector": cfg.lr_mp, "vision": cfg.lr_vision_backbone, "language": cfg.lr_language_backbone}


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights and biases (1-D), token embeddings and learned positions are never decayed."""
    return param.ndim < 2 or "embed_tokens" in name or "position_embedding" in name or "cls_token" in name


def decay_groups(
    named: list[tuple[str, nn.Parameter]], rate: float, weight_decay: float, name: str
) -> list[dict]:
    """The parameters' group with weight decay and the one without (see no_weight_decay), empty ones left out."""
    decay = [p for n, p in named if not no_weight_decay(n, p)]
    plain = [p for n, p in named if no_weight_decay(n, p)]
    return [
        {"params": params, "lr": rate, "weight_decay": wd, "name": name + suffix}
        for params, wd, suffix in ((decay, weight_decay, ""), (plain, 0.0, "_no_decay"))
        if params
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, extra: nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW over up to six groups (tower x decay/no-decay); towers with lr 0 are frozen, not grouped.
    `extra`: a training-only module beside the model (the fact heads), at the projector's rate."""
    rates = group_learning_rates(cfg)
    groups: list[dict] = []
    for tower, prefix in GROUP_PREFIXES.items():
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
        if rates[tower] == 0:
            for _, p in named:
                p.requires_grad_(False)
            continue
        groups += decay_groups(named, rates[tower], cfg.weight_decay, tower)
    if extra is not None:
        groups += decay_groups(list(extra.named_parameters()), cfg.lr_mp, cfg.weight_decay, "extra")
    if not groups:
        from picovlm.errors import ConfigError

        raise ConfigError(
            "every learning rate (lr_mp, lr_vision_backbone, lr_language_backbone) is 0: nothing to train."
        )
    for group in groups:
        group["initial_lr"] = group["lr"]
    # fused/foreach kernels are faster on CUDA; the plain loop is fine on a CPU with few tensors.
    return torch.optim.AdamW(groups, betas=cfg.betas, foreach=None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
