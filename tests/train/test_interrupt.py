"""SIGINT / SIGTERM during training: the step finishes, checkpoint.pt is written at that step, the command
prints how to resume and exits 130 / 143, and resuming gives the uninterrupted run's result."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from picovlm.config import load_config
from picovlm.train.checkpoint import load_checkpoint
from picovlm.train.interrupt import StopOnSignal, TrainingInterrupted
from picovlm.train.loop import train
from picovlm.train.tracking import read_metrics

STEPS = 200  # ~3 s on one CPU thread: the signal comes at step ~20, far from the end


def _args(demo_dir, out_dir, **extra) -> list[str]:
    # checkpoint_interval past the end: the only checkpoint before the end is the one the signal causes
    values = {
        "data_dir": demo_dir, "out_dir": out_dir, "batch_size": 4, "max_steps": STEPS, "eval_interval": 50,
        "checkpoint_interval": 1000, "tokenizer_vocab_size": 400, "gen_eval_interval": 0, **extra,
    }  # fmt: skip
    return [f"train.{k}={v}" for k, v in values.items()]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def straight_run(demo_dir, tmp_path_factory):
    """The same run, never interrupted: what an interrupted and resumed run must end with."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(*load_config("tiny", overrides=_args(demo_dir, run)))
    return read_metrics(run)


def test_the_library_finishes_the_step_saves_it_and_raises(demo_dir, tmp_path, tiny_configs):
    model_cfg, train_cfg = tiny_configs(demo_dir, tmp_path / "run", max_steps=40, checkpoint_interval=1000)

    def signal_at_5(done, total, message):
        if done == 5 and message != "training":
            os.kill(os.getpid(), signal.SIGTERM)  # arrives after step 5's vote: step 6 is the last

    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(model_cfg, train_cfg, progress=signal_at_5)
    assert (stopped.value.signum, stopped.value.step, stopped.value.exit_code) == (signal.SIGTERM, 6, 143)
    assert load_checkpoint(tmp_path / "run")["step"] == 6
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 6
    assert not (tmp_path / "run" / "summary.json").exists()  # not finished: a resume finishes it
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the caller's handler is back
    result = train(model_cfg, train_cfg, resume=True)
    assert result.steps == 40 and "resumed from step 6" in result.notes


def test_a_signal_before_the_first_step_or_a_second_one_stops_at_once():
    with StopOnSignal() as stop:
        with pytest.raises(TrainingInterrupted, match="SIGINT before the first step"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        stop.deferring = True
        os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised: the step goes on
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT
        with pytest.raises(TrainingInterrupted, match="twice"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)


@pytest.mark.slow  # ~20 s: two CLI processes
@pytest.mark.parametrize(
    "signum, workers", [(signal.SIGINT, 1), (signal.SIGTERM, 0)], ids=["ctrl-c", "sigterm"]
)
def test_a_signalled_cli_run_saves_its_step_says_how_to_resume_and_resumes_exactly(
    demo_dir, tmp_path, straight_run, signum, workers
):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "picovlm", "train", "--preset", "tiny",
           *_args(demo_dir, run, num_workers=workers)]  # fmt: skip
    # its own process group: Ctrl-C in a terminal signals the whole group, data workers included
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    stderr = bytearray()
    reader = threading.Thread(
        target=lambda: [stderr.extend(b) for b in iter(lambda: proc.stderr.read1(4096), b"")]
    )
    reader.start()
    seen, deadline = 0, time.time() + 120
    while seen < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # the progress bar prints "step/total" after every step
        seen = max([int(n) for n in re.findall(rb"(\d+)/%d" % STEPS, bytes(stderr))] or [0])
    assert proc.poll() is None, f"training ended before the signal: {bytes(stderr)[-2000:].decode()}"
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    # not communicate(): it would read stderr too, racing the reader thread for the last lines
    stdout = proc.stdout.read().decode()
    proc.wait(timeout=120)
    reader.join()
    message = bytes(stderr).decode(errors="replace")
    assert proc.returncode == 128 + signum, message[-2000:]

    saved = load_checkpoint(run)["step"]
    logged = max(r["step"] for r in read_metrics(run))
    assert seen <= saved == logged < STEPS  # the step in progress finished and was saved; none was lost
    name = signal.Signals(signum).name
    assert f"interrupted by {name} after step {saved}: saved {run / 'checkpoint.pt'}" in message
    resume = re.search(r"resume with: (.+)", message)
    assert resume, message[-2000:]
    words = shlex.split(resume.group(1))
    assert words[:2] == ["picovlm", "train"] and "--resume" in words
    assert "summary.json" not in os.listdir(run) and "run folder" not in stdout

    resumed = subprocess.run(
        [sys.executable, "-m", "picovlm", *words[1:]], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {saved}" in resumed.stdout
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert records[-1]["loss"] == pytest.approx(straight_run[-1]["loss"], rel=1e-4)
    assert records[-1]["val_loss"] == pytest.approx(straight_run[-1]["val_loss"], rel=1e-4)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == STEPS


@pytest.mark.slow  # ~40 s: a sweep process and its run, twice
def test_ctrl_c_on_a_sweep_reaches_its_run_once_and_the_same_command_finishes_it(demo_dir, tmp_path):
    import yaml

    sweep_file, out = tmp_path / "sweep.yaml", tmp_path / "out"
    train_values = dict(v.split("=", 1) for v in _args(demo_dir, "unused"))
    train_values = {k.removeprefix("train."): yaml.safe_load(v) for k, v in train_values.items()}
    del train_values["out_dir"]
    sweep_file.write_text(
        yaml.safe_dump({"preset": "tiny", "train": train_values, "runs": [{"name": "only"}]})
    )
    cmd = [sys.executable, "-m", "picovlm", "sweep", str(sweep_file), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    log, deadline = out / "configs" / "only.log", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        text = log.read_bytes() if log.exists() else b""
        if max([int(n) for n in re.findall(rb"(\d+)/%d" % STEPS, text)] or [0]) >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the sweep ended before the signal: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the sweep's whole group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert "during sweep run only" in stderr.decode() and "run the same command again" in stderr.decode()
    run = out / "only"
    saved = load_checkpoint(run)["step"]
    assert 20 <= saved == max(r["step"] for r in read_metrics(run)) < STEPS  # saved after its step, once
    assert "interrupted by SIGINT after step" in log.read_text()  # one signal, not two: not "twice"

    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed  only" in again.stdout
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
