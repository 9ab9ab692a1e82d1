"""A run's progress: a bar only on a terminal, elsewhere a line every ~10 s and at the end."""

from __future__ import annotations

import io

import pytest

from tlc.errors import UserError
from tlc.train.progress import ProgressLines, format_duration, interval_s, progress_mode, run_progress


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_come_every_interval_and_at_the_end_with_speed_losses_and_time_left():
    out, clock = io.StringIO(), _Clock()
    lines = ProgressLines(total=100, initial=0, desc="w32-d2-s0", tokens_per_step=512, every_s=10, stream=out,
                          clock=clock)
    for _ in range(10):  # 10 steps in 5 s: under the interval, nothing yet
        clock.now += 0.5
        lines.update()
    assert out.getvalue() == ""
    lines.set_postfix(loss="4.123", val="4.200")
    for _ in range(10):  # 10 more: 10 s since the start, one line
        clock.now += 0.5
        lines.update()
    assert out.getvalue().splitlines() == ["w32-d2-s0: step 20/100 (20%), 1,024 tok/s, loss 4.123, val 4.200, ETA 40s"]
    clock.now += 1.0
    lines.update(80)
    lines.close()
    lines.close()  # once only
    assert out.getvalue().splitlines()[1:] == ["w32-d2-s0: step 100/100 (100%), 40,960 tok/s, loss 4.123, val 4.200, "
                                               "done in 11s"]


def test_a_resumed_run_counts_its_time_left_from_its_own_steps():
    out, clock = io.StringIO(), _Clock()
    lines = ProgressLines(total=1000, initial=900, desc="r", tokens_per_step=1, every_s=0, stream=out, clock=clock)
    clock.now += 10
    lines.update(10)  # 10 steps in 10 s, 90 left
    assert out.getvalue().strip().endswith("ETA 1m30s")


def test_mode_follows_the_terminal_unless_tlc_progress_says(monkeypatch):
    monkeypatch.delenv("TLC_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(_Terminal()) == "bar"
    monkeypatch.setenv("TLC_PROGRESS", "off")
    assert progress_mode(_Terminal()) == "off"
    assert type(run_progress(10, 0, "r", 1)).__name__ == "_Silent"
    monkeypatch.setenv("TLC_PROGRESS", "lines")
    assert isinstance(run_progress(10, 0, "r", 1), ProgressLines)
    monkeypatch.setenv("TLC_PROGRESS", "fancy")
    with pytest.raises(UserError, match="TLC_PROGRESS: expected one of bar, lines, off, got 'fancy'"):
        progress_mode()


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("TLC_PROGRESS_S", raising=False)
    assert interval_s() == 10
    monkeypatch.setenv("TLC_PROGRESS_S", "2.5")
    assert interval_s() == 2.5
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("TLC_PROGRESS_S", bad)
        with pytest.raises(UserError, match="TLC_PROGRESS_S: expected seconds >= 0"):
            interval_s()


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
