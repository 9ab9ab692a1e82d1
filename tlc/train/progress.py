"""A run's progress: a bar on a terminal, otherwise one line every ~10 s and one at the end.

A progress bar redraws itself several times a second; written to a file or a pipe (a sweep's log, CI,
``make demo | tee``) every redraw stays as text, a megabyte for the demo. So a bar is drawn only when
the output is a terminal; elsewhere each run prints a line about every ``TLC_PROGRESS_S`` seconds
(default 10) and when it ends: step, tokens per second, the last training and validation losses, and
the time left at the rate so far.

``TLC_PROGRESS`` overrides the choice: ``bar``, ``lines`` or ``off``. ``tlc sweep`` sets it for its
trainers from its own output, since theirs is always a pipe to the sweep.
"""

from __future__ import annotations

import os
import sys
import time

MODES = ("bar", "lines", "off")
MODE_ENV = "TLC_PROGRESS"
INTERVAL_ENV = "TLC_PROGRESS_S"
DEFAULT_INTERVAL_S = 10.0


def progress_mode(stream=None) -> str:
    """``TLC_PROGRESS`` if set (bar, lines or off), else bar when ``stream`` (stderr) is a terminal, else lines."""
    from tlc.errors import UserError

    chosen = os.environ.get(MODE_ENV, "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise UserError(f"{MODE_ENV}: expected one of {', '.join(MODES)}, got {chosen!r}; unset it to choose by terminal")
        return chosen
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def interval_s() -> float:
    """Seconds between progress lines: ``TLC_PROGRESS_S`` (a number >= 0), else 10."""
    from tlc.errors import UserError

    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise UserError(f"{INTERVAL_ENV}: expected seconds >= 0, got {raw!r}; unset it for {DEFAULT_INTERVAL_S:g}")
    return value


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``: a time left, to the precision a reader needs."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLines:
    """The same calls as a tqdm bar (update, set_postfix, close), written as a line every ``every_s`` seconds."""

    def __init__(self, total: int, initial: int, desc: str, tokens_per_step: int, every_s: float, stream=None,
                 clock=time.monotonic):
        self.total, self.step, self.desc, self.tokens_per_step = total, initial, desc, tokens_per_step
        self.every_s, self.stream, self.clock = every_s, stream if stream is not None else sys.stderr, clock
        self.started = self.last_at = clock()
        self.first_step = self.last_step = initial
        self.postfix: dict[str, str] = {}
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.clock() - self.last_at >= self.every_s:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix.update({k: str(v) for k, v in values.items()})

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(final=True)

    def _line(self, final: bool = False) -> None:
        now = self.clock()
        # tokens/s since the last line (the current speed); the time left at the speed since this process began
        since, done = now - self.last_at, self.step - self.last_step
        overall, done_here = now - self.started, self.step - self.first_step
        rate = f"{done * self.tokens_per_step / since:,.0f} tok/s" if since > 0 and done > 0 else "- tok/s"
        parts = [f"{self.desc}: step {self.step}/{self.total} ({self.step / max(1, self.total):.0%})", rate]
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        if final:
            parts.append(f"done in {format_duration(overall)}")
        elif done_here > 0:
            parts.append(f"ETA {format_duration((self.total - self.step) * overall / done_here)}")
        print(", ".join(parts), file=self.stream, flush=True)
        self.last_at, self.last_step = now, self.step


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def run_progress(total: int, initial: int, desc: str, tokens_per_step: int, enabled: bool = True):
    """The progress reporter for one run: a tqdm bar, progress lines or nothing (see the module docstring)."""
    mode = progress_mode() if enabled else "off"
    if mode == "off":
        return _Silent()
    if mode == "lines":
        return ProgressLines(total, initial, desc, tokens_per_step, interval_s())
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=True)
