"""Progress of a run on stderr: a live line in a terminal, a plain log line every N seconds elsewhere.

A run counts; a ticker thread reads the counts and draws, so the stages pay
nothing per record. Only one process of a pipe draws a live line: the one whose
stdout is not a pipe (the last stage); the others log plain lines, which the
live line keeps above it.

What a line says (docs/progress in the README):
  done      input records the stage has finished (kept, dropped or skipped). A stage that
            batches reports it as batches complete (Run.advance); else it is the records read.
  total     this run's input records: exact once every input was read, before that an
            estimate (~) from the compressed bytes read so far and the inputs' sizes.
  rate/ETA  done per second since the first finished record; ETA = (total - done) / rate.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LIVE_REFRESH_SECONDS = 0.5


@dataclass
class Snapshot:
    done: int
    n_out: int
    dropped: int
    errors: int
    bytes_read: int  # compressed input bytes whose records are all read
    in_at_bytes_read: int  # those records
    total_bytes: int | None  # None: an input of unknown size (stdin) or not read as records
    n_in: int
    input_complete: bool
    elapsed: float


def stdout_is_pipe() -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (ValueError, AttributeError):
        return False


def choose_mode(quiet: bool, log_every: float) -> str | None:
    """'live' (a redrawn line), 'log' (plain lines every log_every s) or None."""
    if quiet:
        return None
    if stderr_is_terminal() and not stdout_is_pipe():
        return "live"
    return "log" if log_every > 0 else None


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RateMeter:
    """done per second, measured from the first time anything was done (model loading is not work done)."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None

    def rate(self, done: int, now: float) -> float | None:
        if self.start is None:
            if done > 0:
                self.start = (now, done)
            return None
        t0, d0 = self.start
        if now - t0 < 1e-3 or done <= d0:
            return None
        return (done - d0) / (now - t0)


def describe(s: Snapshot, rate: float | None) -> str:
    """One progress line (without the command name)."""
    total: float | None = None
    exact = s.input_complete
    if exact:
        total = s.n_in
    elif s.total_bytes and s.bytes_read > 0 and s.in_at_bytes_read > 0:
        total = max(s.n_in, s.in_at_bytes_read * s.total_bytes / s.bytes_read)
    parts = []
    if total is not None and total > 0:
        shown = _count(total) if exact else "~" + _count(total)
        parts.append(f"{_count(s.done)}/{shown} records ({min(100.0, 100.0 * s.done / total):.0f}%)")
    else:
        parts.append(f"{_count(s.done)} records")
    if rate:
        parts.append(f"{rate:,.1f}/s")
        if total is not None and total > s.done:
            parts.append(f"ETA {_duration((total - s.done) / rate)}")
    parts.append(f"{_count(s.n_out)} out")
    if s.dropped:
        parts.append(f"{_count(s.dropped)} dropped")
    if s.errors:
        parts.append(f"{_count(s.errors)} skipped errors")
    parts.append(_duration(s.elapsed))
    return ", ".join(parts)


class Ticker:
    """A daemon thread that draws `snapshot()` every interval: rich's live line, or plain stderr lines."""

    def __init__(self, command: str, mode: str, snapshot: Callable[[], Snapshot], log_every: float):
        self.command = command
        self.mode = mode
        self.snapshot = snapshot
        self.interval = LIVE_REFRESH_SECONDS if mode == "live" else log_every
        self.meter = RateMeter()
        self._stop = threading.Event()
        self.progress = None
        if mode == "live":
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn

            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]rsyn {task.description}"),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task(command, status="starting")
        self._thread = threading.Thread(target=self._loop, name=f"rsyn-progress-{command}", daemon=True)

    def start(self) -> None:
        if self.progress is not None:
            self.progress.start()
        self._thread.start()

    def line(self) -> str:
        s = self.snapshot()
        return describe(s, self.meter.rate(s.done, time.perf_counter()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                text = self.line()
            except Exception:  # a counter read mid-update: the next tick draws it
                continue
            if self.progress is not None:
                self.progress.update(self.task, status=text)
            else:
                print(f"rsyn {self.command}: {text}", file=sys.stderr, flush=True)

    def print(self, message: str) -> None:
        """A note printed above the live line (or plainly)."""
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.progress is not None:
            self.progress.stop()
