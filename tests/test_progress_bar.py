"""The CLI's one progress adapter: a stage that goes on keeps its bar, a new stage gets a new one."""

from __future__ import annotations

from picovlm.commands.progress import ProgressBar


def test_a_refitted_total_resizes_the_bar_and_a_new_stage_starts_a_new_one(capsys):
    with ProgressBar(unit="step") as progress:
        progress(0, 100, "start")
        first = progress.bar
        progress(10, 100, "loss 2.0")
        progress(11, 98, "loss 1.9")  # max_minutes refits the step count: the same run
        assert progress.bar is first and progress.bar.total == 98 and progress.bar.n == 11
        progress(0, 12, "eval")  # the next stage counts from zero
        assert progress.bar is not first and progress.bar.total == 12
        second = progress.bar
        progress(3, 12, "eval")
        progress(1, 12, "again")  # the count went back: a new bar
        assert progress.bar is not second
        progress(None, None, "a line above the bar")
    assert "a line above the bar" in capsys.readouterr().err
