import math

import pytest
import torch

from picovlm.config import TrainConfig, preset
from picovlm.model.vlm import VLM
from picovlm.train.optim import build_optimizer, lr_factor


def test_warmup_then_cosine_to_min_ratio():
    total, warmup, floor = 100, 10, 0.1
    factors = [lr_factor(s, total, warmup, floor) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10]))  # warmup rises
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then never rises again
    assert factors[55] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factors[total] == pytest.approx(floor)


def test_param_groups_skip_decay_on_norms_biases_embeddings():
    model = VLM(preset("tiny"))
    opt = build_optimizer(model, TrainConfig(lr_mp=3e-3, lr_vision_backbone=1e-3, lr_language_backbone=2e-3))
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {
        g["name"]: (g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in opt.param_groups
    }
    assert (
        by_group["projector"][0] == 3e-3 and by_group["language"][0] == 2e-3 and by_group["vision"][0] == 1e-3
    )
    no_decay = by_group["language_no_decay"][2] + by_group["vision_no_decay"][2]
    assert "decoder.embed_tokens.weight" in no_decay
    assert "vision_encoder.patch_embedding.position_embedding" in no_decay
    assert "decoder.norm.weight" in no_decay and "vision_encoder.blocks.0.attn.qkv.bias" in no_decay
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if g["name"].endswith("no_decay"))
    decayed = by_group["language"][2]
    assert "decoder.blocks.0.attn.q_proj.weight" in decayed and by_group["language"][1] > 0
    # every trainable parameter is in exactly one group
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted({id(p) for p in model.parameters()})


def test_zero_learning_rate_freezes_the_tower():
    model = VLM(preset("tiny"))
    opt = build_optimizer(model, TrainConfig(lr_vision_backbone=0.0))
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    assert all(p.requires_grad for p in model.projector.parameters())
    frozen = {id(p) for p in model.vision_encoder.parameters()}
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}
    assert isinstance(opt, torch.optim.AdamW)
