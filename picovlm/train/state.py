"""TrainState: what a run has done so far, the part of a checkpoint that is neither weights nor schedule.

The step is also the data position (train/loop.py's module docstring), so together with the model,
the optimizer, the schedule (train/budget.py) and the RNG states (train/checkpoint.py) this is all a
resumed run needs to continue exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from picovlm.errors import PicovlmError


@dataclass
class TrainState:
    """The run's progress, updated by the loop after every step and by the evaluation hook."""

    step: int = 0  # optimizer steps done
    # running totals, for the summary's mean throughput and the time budget
    tokens: int = 0  # non-padding tokens trained on
    step_time_s: float = 0.0  # seconds spent in optimizer steps (no data loading, evaluation, saving)
    wall_time_s: float = 0.0  # wall-clock seconds of the run, over all sessions
    skipped_rows: int = 0  # rows the data pipeline could not use
    # evaluation: best/ and early stopping (train/evaluation.py)
    best_val_loss: float | None = None  # the lowest val loss seen, whatever best_metric is
    best_score: float | None = None  # the best value of best_metric: the model in best/
    best_step: int | None = None  # the step of best_score
    bad_evals: int = 0  # judgements of best_metric in a row without a new best
    train_losses_since_eval: list[float] = field(default_factory=list)  # for the train/val gap

    def count(self, loss: float, tokens: float, seconds: float, skipped_rows: float) -> None:
        """Add a finished optimizer step's figures to the running totals (the step is counted apart)."""
        self.tokens += int(tokens)
        self.step_time_s += seconds
        self.skipped_rows += int(skipped_rows)
        self.train_losses_since_eval.append(loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers and lists: a checkpoint must load with torch.load(weights_only=True)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PicovlmError(
                f"the checkpoint's train state has fields this picovlm does not know ({', '.join(unknown)}): "
                "it was written by a newer picovlm; upgrade picovlm to resume it."
            )
        return cls(**values)

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], best_metric: str) -> TrainState:
        """The state of a loaded checkpoint.pt, written by this version or by one before TrainState.

        Before TrainState the state was a string-keyed dict under "trainer" without the step (which
        sat beside it); before best_metric existed it had no "best_score": best/ then followed the
        val loss, so that is the best score when this run's best_metric is the val loss too.
        """
        if "train_state" in saved:
            return cls.from_dict(saved["train_state"])
        old = dict(saved["trainer"])
        if "best_score" not in old:
            old["best_score"] = old["best_val_loss"] if best_metric == "val_loss" else None
        return cls.from_dict({**old, "step": saved["step"]})
