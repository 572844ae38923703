"""Training checkpoints: everything needed to continue a run exactly, written atomically.

`checkpoint.pt` in the run folder holds:
    model        the model's state_dict (fp32 master weights)
    optimizer    AdamW's state (moments per parameter, step counts)
    schedule     train/budget.py's plan {"total_steps", "warmup_steps"[, "fitted_to_time"]}: the
                 learning rate is a pure function of the step
    train_state  train/state.py's TrainState as a dict: the step, running totals (tokens, wall time),
                 best/ and early-stopping state
    step         a copy of train_state's step, for tools that only ask how far a run got; it is also
                 the data position (batches are a function of the step)
    rng          python, numpy, torch CPU and CUDA generator states

Checkpoints from before TrainState carry a string-keyed "trainer" dict instead of "train_state";
`restore_training_state` converts them (TrainState.from_checkpoint), so old runs still resume.

It is written to a temporary file in the same folder and renamed over the old one, so a kill at any
moment leaves either the previous checkpoint or the new one, never a torn file. Everything in it is a
tensor, number, string, list or dict, so it loads with `torch.load(weights_only=True)`: reading a
checkpoint never runs pickled code.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from picovlm.errors import PicovlmError
from picovlm.train.state import TrainState
from picovlm.utils import atomic_path, atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """All random generators' states, in weights_only-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise `state` (plus the RNG states) to run_dir/checkpoint.pt atomically."""
    buffer = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buffer)
    path = Path(run_dir) / CHECKPOINT_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise PicovlmError(f"{path} does not exist: nothing to resume; drop --resume to start a new run.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise PicovlmError(
            f"{path} cannot be read ({type(err).__name__}: {err}); delete it to start over."
        ) from None


def save_training_state(
    run_dir: str | os.PathLike,
    model,
    optimizer,
    schedule: dict[str, Any],
    state: TrainState,
    extra=None,
    average=None,
) -> Path:
    """The run's checkpoint.pt at state.step: what `restore_training_state` continues from. `extra`:
    a training-only module beside the model (the fact heads), and `average`: the weight average
    (train/average.py), both kept so a resumed run continues exactly."""
    saved = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "schedule": schedule,
        "train_state": state.to_dict(),
    }
    if extra is not None:
        saved["extra"] = extra.state_dict()
    if average is not None:
        saved["weight_average"] = average.state_dict()
    return save_checkpoint(run_dir, saved)


def restore_training_state(
    run_dir: str | os.PathLike, model, optimizer, best_metric: str, extra=None, average=None
) -> tuple[TrainState, dict[str, Any]]:
    """Load checkpoint.pt into the model, the optimizer and the random generators; return the run's
    TrainState (converted from an older checkpoint's dict if need be) and the saved schedule."""
    saved = load_checkpoint(run_dir)
    # the fact heads and the weight average are there exactly when the run's config turns them on
    for key, part, option in (("extra", extra, "fact_loss_weight"), ("weight_average", average, "ema_decay")):
        if (part is None) != (key not in saved):
            raise PicovlmError(
                f"{Path(run_dir) / CHECKPOINT_FILE} was saved with train.{option} "
                f"{'on' if key in saved else 'off'}: resume with the run's own config.yaml, or start a new out_dir."
            )
        if part is not None:
            part.load_state_dict(saved[key])
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    state = TrainState.from_checkpoint(saved, best_metric)
    set_rng_state(saved["rng"])
    return state, saved["schedule"]


def save_model(model, directory: Path) -> None:
    """save_pretrained into `directory` (best/, model/) atomically: a kill mid-save leaves the old folder."""
    with atomic_path(directory) as tmp:
        model.save_pretrained(tmp)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()


def _to_lists(value: Any) -> Any:
    # python's random state is nested tuples; lists of ints survive weights_only loading everywhere.
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
