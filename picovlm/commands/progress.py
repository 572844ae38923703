"""The command line's one drawing of the library's progress hook (picovlm.utils.ProgressFn)."""

from __future__ import annotations

import sys


class ProgressBar:
    """A ProgressFn (done, total, message) drawn with tqdm on stderr, so stdout keeps only results.

    A call with a total moves the bar, the message beside it. A count that goes back (the next stage,
    the next model, the next file) starts a new bar; a total that changes while the count goes on only
    resizes the bar (training with `max_minutes` refits its step count as steps get timed). A call without a total prints its message as a line above
    the bar (a stage starts, data loads). Use it as a context manager, or call close() when done.
    leave=False clears each finished bar, for commands that run many stages in a row.
    """

    def __init__(self, label: str | None = None, unit: str = "it", leave: bool = True):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.label, self.unit, self.leave = label, unit, leave
        self.bar = None

    def __call__(self, done: int, total: int | None, message: str = "") -> None:
        if total is None:
            if message:
                self.tqdm.write(message, file=sys.stderr)
            return
        if self.bar is not None and self.bar.total != total and done >= self.bar.n > 0:
            self.bar.total = total
        elif self.bar is None or self.bar.total != total or done < self.bar.n:
            self.close()
            self.bar = self.tqdm(
                desc=self.label,
                total=total,
                unit=self.unit,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=self.leave,
            )
        self.bar.n = done
        self.bar.set_postfix_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
