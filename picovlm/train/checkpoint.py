"""Training checkpoints: everything needed to continue a run exactly, written atomically.

`checkpoint.pt` in the run folder holds:
    model       the model's state_dict (fp32 master weights)
    optimizer   AdamW's state (moments per parameter, step counts)
    schedule    {"total_steps", "warmup_steps"}: the learning rate is a pure function of the step
    step        optimizer steps done; also the data position (batches are a function of the step)
    rng         python, numpy, torch CPU and CUDA generator states
    trainer     early-stopping state, running totals (tokens, wall time), best val loss

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
from picovlm.utils import atomic_write_bytes

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
        },  # fmt: skip
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


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / CHECKPOINT_FILE).is_file()


def _to_lists(value: Any) -> Any:
    # python's random state is nested tuples; lists of ints survive weights_only loading everywhere.
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
