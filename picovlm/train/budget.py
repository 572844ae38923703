"""Budget: how many optimizer steps a run gets, what ends it, and the learning rate along the way.

Without a time budget the plan is fixed before the first step: `max_steps`, else `epochs` x steps per
epoch, with `warmup_ratio` of it as warmup (the schedule itself, warmup then cosine, is optim.py's
`lr_factor`). With `max_minutes` the clock decides instead: the plan is refitted as steps get timed,
so the learning rate has decayed when the time is up rather than being cut off at its peak. `epochs`
is then only the first guess and only `max_steps` caps the fit (issue 14: `epochs: 20` ended a
10-minute run at 74% of its budget).

The plan is saved in the checkpoint (`state_dict`); a resumed run keeps a fitted plan, and says so
when a fixed one changed because the config did.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from picovlm.config import TrainConfig
from picovlm.train.optim import lr_factor

if TYPE_CHECKING:
    from picovlm.train.setup import Dist

FIT_SCHEDULE_FROM_STEP = 5  # first fit after this many steps; refits every step from 4x as many later


class Budget:
    """The run's plan (total_steps, warmup_steps) and the clock of this session that refits it."""

    def __init__(self, train_cfg: TrainConfig, steps_per_epoch: int):
        self.cfg = train_cfg
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * steps_per_epoch))
        self.warmup_steps = math.ceil(train_cfg.warmup_ratio * self.total_steps)
        self.planned_steps = self.total_steps  # the first guess, for the note on a fitted run
        self.fit_to_clock = train_cfg.max_minutes is not None
        self._session_start, self._first_step, self._prior_wall_s = time.time(), 0, 0.0
        self._fit_anchor: tuple[int, float] | None = None  # (step, time) of the first fit to the clock

    def lr_factor(self, step: int) -> float:
        """The multiplier of the peak learning rates for optimizer step `step` (0-based)."""
        return lr_factor(step, self.total_steps, self.warmup_steps, self.cfg.min_lr_ratio)

    def state_dict(self) -> dict:
        fitted = {"fitted_to_time": True} if self.fit_to_clock else {}
        return {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps, **fitted}

    def load_state_dict(self, saved: dict) -> str | None:
        """Continue a checkpoint's plan if the clock fitted it; else keep this config's. Returns a note
        for the run when the config changed the plan."""
        if saved.get("fitted_to_time"):
            self.total_steps, self.warmup_steps = saved["total_steps"], saved["warmup_steps"]
        elif saved != {"total_steps": self.total_steps, "warmup_steps": self.warmup_steps}:
            return f"schedule changed since the checkpoint ({saved}); continuing with the new one"
        return None

    def start(self, step: int, prior_wall_s: float) -> None:
        """Start this session's clock at `step`, after `prior_wall_s` seconds of earlier sessions."""
        self._session_start, self._first_step, self._prior_wall_s = time.time(), step, prior_wall_s

    def wall_time_s(self) -> float:
        """Wall-clock seconds of the whole run so far, earlier sessions included."""
        return self._prior_wall_s + time.time() - self._session_start

    def after_step(self, step: int, dist_: Dist) -> bool:
        """Refit the plan to the clock when due, and say whether the time budget is spent (always False
        without max_minutes). `step` is the number of steps done."""
        if not self.fit_to_clock:
            return False
        # One clock per step for both the fit and the stop; under DDP the ranks average theirs (one
        # all-reduce), so they fit the same schedule and stop together.
        now = time.time()
        elapsed = self._prior_wall_s + now - self._session_start
        per_step = self._seconds_per_step(step, now)  # 0: no fit on this step
        if dist_.world_size > 1:
            elapsed, per_step = (v / dist_.world_size for v in dist_.sum([elapsed, per_step]))
        if per_step:
            self.total_steps, self.warmup_steps = fit_schedule_to_time(
                self.cfg, step, elapsed, per_step, self.cfg.max_steps, self.warmup_steps
            )
        return elapsed >= self.cfg.max_minutes * 60

    def _seconds_per_step(self, step: int, now: float) -> float:
        """The step time to fit to: the first fit times everything so far (start-up and the slow first
        steps), so it errs short; later fits time the steps since it, evaluations and checkpoints
        included. 0 on steps that do not refit."""
        if step >= self.total_steps:
            return 0.0
        if step - self._first_step == FIT_SCHEDULE_FROM_STEP:
            self._fit_anchor = (step, now)
            return (now - self._session_start) / FIT_SCHEDULE_FROM_STEP
        if self._fit_anchor and step - self._fit_anchor[0] >= FIT_SCHEDULE_FROM_STEP * 4:
            return (now - self._fit_anchor[1]) / (step - self._fit_anchor[0])
        return 0.0

    def fitted(self) -> bool:
        """Whether the clock, not max_steps, set the run's length."""
        return self.fit_to_clock and self.total_steps < (self.cfg.max_steps or math.inf)

    def stop_reason(self, stopped_early: bool, out_of_time: bool) -> str:
        if stopped_early:
            return "early_stopping"
        if out_of_time or self.fitted():
            return "max_minutes"
        return "max_steps" if self.cfg.max_steps else "epochs"

    def fitted_note(self) -> str:
        return (
            f"max_minutes={self.cfg.max_minutes}: schedule fitted to the clock, {self.total_steps} steps "
            f"({self.total_steps / self.steps_per_epoch:.1f} epochs; the first guess was {self.planned_steps})"
        )


def fit_schedule_to_time(
    train_cfg: TrainConfig,
    steps_done: int,
    elapsed_s: float,
    per_step_s: float,
    max_steps: int | None,
    warmup_steps: int,
) -> tuple[int, int]:
    """(total_steps, warmup_steps) that fill what is left of `max_minutes` at `per_step_s` a step.

    5% of the budget is kept for the final evaluation and save. Never more steps than max_steps (when
    set), never fewer than one more. Once warmup is over it stays as it was, so a refit never restarts it.
    """
    remaining = train_cfg.max_minutes * 60 * 0.95 - elapsed_s
    fit = steps_done + int(max(remaining, 0.0) / max(per_step_s, 1e-9))
    total = max(steps_done + 1, min(max_steps or fit, fit))
    if steps_done >= warmup_steps:
        return total, warmup_steps
    return total, max(math.ceil(train_cfg.warmup_ratio * total), min(steps_done, warmup_steps))
