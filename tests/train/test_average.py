"""Weight averaging (train.ema_decay): the average's arithmetic, and a run that evaluates, saves and
resumes with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from picovlm.errors import ConfigError, PicovlmError
from picovlm.model.vlm import VLM
from picovlm.train.average import WeightAverage
from picovlm.train.checkpoint import load_checkpoint
from picovlm.train.loop import train
from picovlm.train.tracking import read_metrics


def test_the_average_follows_the_formula_and_skips_frozen_weights():
    layer = nn.Linear(3, 2)
    layer.bias.requires_grad_(False)  # a frozen tower is not averaged
    average = WeightAverage(layer, decay=0.9)
    assert average.names == ["weight"]
    expected = layer.weight.detach().clone()
    for n, value in enumerate((1.0, 2.0, 3.0, 4.0)):
        with torch.no_grad():
            layer.weight.fill_(value)
        decay = min(0.9, (1 + n) / (10 + n))  # the warm-up: 0.1, 0.18, 0.25, 0.31
        expected = decay * expected + (1 - decay) * value
        average.update()
        torch.testing.assert_close(average.averages[0], expected)


def test_swapped_in_lends_the_average_and_gives_the_weights_back():
    layer = nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.5)
    trained = layer.weight.detach().clone()
    with torch.no_grad():
        average.averages[0].fill_(7.0)
    with average.swapped_in():
        assert torch.all(layer.weight == 7.0)
    assert torch.equal(layer.weight, trained)
    restored = WeightAverage(nn.Linear(3, 2), decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert torch.equal(restored.averages[0], average.averages[0]) and restored.updates == average.updates


def test_ema_decay_out_of_range_is_a_config_error(demo_dir, tmp_path, tiny_configs):
    with pytest.raises(ConfigError, match="ema_decay=1.0 must be in"):
        tiny_configs(demo_dir, tmp_path / "run", ema_decay=1.0)


def test_a_run_saves_evaluates_and_resumes_with_the_averaged_weights(
    demo_dir, tmp_path, tiny_configs, crash_run
):
    """model/ holds the average (not the last trained weights), the val loss is the average's, and a run
    cut after its step-4 checkpoint and resumed saves the same model as an uninterrupted one."""
    fields = dict(max_steps=10, checkpoint_interval=4, eval_interval=5, ema_decay=0.8)
    model_cfg, full_cfg = tiny_configs(demo_dir, tmp_path / "full", **fields)
    train(model_cfg, full_cfg)
    saved = load_checkpoint(tmp_path / "full")
    final = VLM.from_pretrained(tmp_path / "full" / "model").state_dict()
    averages = saved["weight_average"]["averages"]
    assert saved["weight_average"]["updates"] == 10
    for name, average in averages.items():
        torch.testing.assert_close(final[name], average)
    name = "decoder.blocks.0.mlp.down_proj.weight"
    assert not torch.allclose(saved["model"][name], averages[name])  # the last step's weights differ

    # the same run without the average: the same training losses, another val loss
    _, plain_cfg = tiny_configs(demo_dir, tmp_path / "plain", **{**fields, "ema_decay": 0.0})
    train(model_cfg, plain_cfg)
    full, plain = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "plain")
    assert [r["loss"] for r in full] == [r["loss"] for r in plain]
    assert full[-1]["val_loss"] != pytest.approx(plain[-1]["val_loss"], rel=1e-4)

    _, cut_cfg = tiny_configs(demo_dir, tmp_path / "cut", **fields)
    crash_run(model_cfg, cut_cfg, 6)
    _, no_average = tiny_configs(demo_dir, tmp_path / "cut", **{**fields, "ema_decay": 0.0})
    with pytest.raises(PicovlmError, match="train.ema_decay on"):
        train(model_cfg, no_average, resume=True)
    train(model_cfg, cut_cfg, resume=True)
    resumed = VLM.from_pretrained(tmp_path / "cut" / "model").state_dict()
    for name in averages:
        torch.testing.assert_close(resumed[name], final[name], rtol=1e-5, atol=1e-6)
