"""The memory check before training: the sample cache counts beside the weights on a CPU run, once
per process on the machine."""

from __future__ import annotations

import pytest
import torch

from picovlm.config import load_config, replace
from picovlm.errors import ConfigError
from picovlm.model.vlm import VLM
from picovlm.train.setup import available_memory_bytes, check_memory, setup_distributed


def test_a_sample_cache_larger_than_the_free_memory_is_refused_with_its_setting(tmp_path, tiny_args):
    model_cfg, train_cfg = load_config("tiny", overrides=tiny_args(tmp_path, tmp_path / "run"))
    model = VLM(model_cfg)
    total = sum(p.numel() for p in model.parameters())
    cpu = torch.device("cpu")
    # more rows than this machine's free memory can cache, under a cap that does not stop them
    rows = available_memory_bytes(cpu) // (3 * model_cfg.vit_img_size**2) + 1
    huge_cap = replace(train_cfg, sample_cache_mb=10**9)
    with pytest.raises(
        ConfigError,
        match=r"sample caches .* GiB, beside the .* lower train\.sample_cache_mb \(now 1000000000",
    ):
        check_memory(model, huge_cap, total, cpu, (rows, 0))
    check_memory(model, huge_cap, total, cpu, (10, 10))  # a few rows hold little, whatever the cap
    check_memory(model, replace(huge_cap, sample_cache_mb=0), total, cpu, (rows, rows))
    check_memory(model, replace(huge_cap, image_augment=True), total, cpu, (rows, rows))


def test_the_caches_count_once_per_process_on_this_machine(tmp_path, tiny_args, monkeypatch):
    """Under torchrun every process on a machine holds its own caches (and, on a CPU, its own weights):
    caches that fit one process are refused for as many processes as the machine's memory cannot hold."""
    model_cfg, train_cfg = load_config("tiny", overrides=tiny_args(tmp_path, tmp_path / "run"))
    model = VLM(model_cfg)
    total = sum(p.numel() for p in model.parameters())
    cpu = torch.device("cpu")
    # rows whose cache takes about a third of the free memory: one process fits, four do not
    rows = available_memory_bytes(cpu) // (3 * (3 * model_cfg.vit_img_size**2))
    huge_cap = replace(train_cfg, sample_cache_mb=10**9)
    check_memory(model, huge_cap, total, cpu, (rows, 0), processes_here=1)
    with pytest.raises(
        ConfigError, match=r"sample caches .* GiB for its 4 processes on this machine, beside"
    ):
        check_memory(model, huge_cap, total, cpu, (rows, 0), processes_here=4)
    # torchrun says how many processes share this machine; a plain run is one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert setup_distributed("cpu").local_world_size == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert setup_distributed("cpu").local_world_size == 1
