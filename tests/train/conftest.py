"""Fixtures for the training tests: a tiny demo dataset (32 px images) and tiny-preset configs."""

from __future__ import annotations

import pytest

from picovlm.config import load_config


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """96 demo rows split into train/validation/test (about 77/10/9), 32x32 px to match the tiny preset."""
    from picovlm.data.scenes import write_demo

    return write_demo(tmp_path_factory.mktemp("data") / "demo", n=96, seed=0, image_size=32)


def _tiny_args(demo_dir, out_dir, **train) -> list[str]:
    values = {
        "data_dir": str(demo_dir), "out_dir": str(out_dir), "batch_size": 4, "max_steps": 8,
        "eval_interval": 4, "checkpoint_interval": 4, "tokenizer_vocab_size": 400, **train,
    }  # fmt: skip
    return [f"train.{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_args():
    """tiny_args(demo_dir, out_dir, **train_fields) -> FIELD=VALUE overrides for a run of a few steps."""
    return _tiny_args


class Crash(Exception):
    pass


def crash_after_step(model_cfg, train_cfg, step: int) -> None:
    """Run `train` and crash it from its progress callback once optimizer step `step` is done, as a
    kill would: the run folder keeps whatever its last checkpoint saved."""
    from picovlm.train.loop import train

    def crash(done, total, message):
        if done == step:
            raise Crash()

    with pytest.raises(Crash):
        train(model_cfg, train_cfg, progress=crash)


@pytest.fixture
def crash_run():
    """crash_run(model_cfg, train_cfg, step): train until optimizer step `step`, then crash."""
    return crash_after_step


@pytest.fixture
def tiny_configs():
    """tiny_configs(demo_dir, out_dir, **train_fields) -> (VLMConfig, TrainConfig) of the tiny preset."""
    return lambda demo_dir, out_dir, **train: load_config(
        "tiny", overrides=_tiny_args(demo_dir, out_dir, **train)
    )
