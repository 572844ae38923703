"""Real processes: a CLI training run killed with SIGKILL and resumed; two gloo DDP ranks vs one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from picovlm.train.loop import train
from picovlm.train.tracking import read_metrics


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_sigkill_then_resume_loses_at_most_the_steps_since_the_checkpoint(
    demo_dir, tmp_path, tiny_args, tiny_configs
):
    run = tmp_path / "run"
    args = tiny_args(demo_dir, run, max_steps=150, checkpoint_interval=10, eval_interval=50)
    cmd = [sys.executable, "-m", "picovlm", "train", "--preset", "tiny", *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = run / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, (
        f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    )
    time.sleep(0.2)  # let it run past the checkpoint
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved_step = torch.load(checkpoint, weights_only=True)["step"]
    logged_before_kill = max(r["step"] for r in read_metrics(run))
    assert 10 <= saved_step < 150 and saved_step % 10 == 0
    assert logged_before_kill - saved_step <= 10  # what the kill cost: only the steps since the checkpoint

    resumed = subprocess.run([*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {saved_step}" in resumed.stdout
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 151))
    # and the result is the uninterrupted run's
    model_cfg, cfg = tiny_configs(
        demo_dir, tmp_path / "straight", max_steps=150, checkpoint_interval=10, eval_interval=50
    )
    torch.set_num_threads(1)
    train(model_cfg, cfg)
    straight = read_metrics(tmp_path / "straight")
    assert records[-1]["loss"] == pytest.approx(straight[-1]["loss"], rel=1e-4)
    assert records[-1]["val_loss"] == pytest.approx(straight[-1]["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(
    demo_dir, tmp_path, tiny_args, tiny_configs
):
    """Tolerance: 1e-4 relative on every step's loss (fp32; only the summation order differs)."""
    steps = 6
    args = tiny_args(demo_dir, tmp_path / "ddp", batch_size=4, max_steps=steps, eval_interval=3, device="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "picovlm", "train", "--preset", "tiny", *args]  # fmt: skip
    ddp = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    model_cfg, cfg = tiny_configs(
        demo_dir, tmp_path / "single", batch_size=8, max_steps=steps, eval_interval=3
    )
    train(model_cfg, cfg)
    two, one = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    assert [r["step"] for r in two] == list(range(1, steps + 1))
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r.get("val_loss") for r in two if "val_loss" in r] == pytest.approx(
        [r["val_loss"] for r in one if "val_loss" in r], rel=1e-4
    )
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # both ranks' tokens are counted
    assert two[-1]["loss"] < two[0]["loss"]
