"""Progress of a whole run: per pass, parts done out of total, throughput and ETA; one line per event."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from rsyn.pipeline.graph import Part
from rsyn.pipeline.parts import PartResult


@dataclass
class _PassState:
    total: int
    done: int = 0
    skipped: int = 0
    running: int = 0
    records: int = 0
    first_start: float | None = None
    part_seconds: list[float] = field(default_factory=list)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress on stderr: a bar per pass on a terminal, else one `rsyn run: ...` line per event.

    On a terminal, starts and ends of parts only move the bars; retries and failures are printed.
    """

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.passes: dict[str, _PassState] = {}
        self.start = time.monotonic()
        self._live = None
        self._bars: dict[str, int] = {}
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(
                TextColumn("[bold]{task.description:>14}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
            )
            self._live.start()

    def _say(self, line: str, event: bool = True) -> None:
        """One line; on a terminal only the lines that are not routine events (retries, failures)."""
        if self.quiet:
            return
        if self._live is None:
            print(f"rsyn run: {line}", file=self.stream, flush=True)
        elif not event:
            self._live.console.print(f"rsyn run: {line}")

    def _bar(self, name: str) -> None:
        if self._live is not None:
            s = self.passes[name]
            self._live.update(self._bars[name], completed=s.done, rate=self.rate(name).partition(", ")[2])

    def add_pass(self, name: str, total: int) -> None:
        self.passes[name] = _PassState(total)
        if self._live is not None:
            self._bars[name] = self._live.add_task(name, total=total, rate="")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def skipped(self, name: str, part: Part) -> None:
        s = self.passes[name]
        s.done += 1
        s.skipped += 1
        self._say(f"{part.name}: already done, skipped ({s.done}/{s.total} parts of {name})")
        self._bar(name)

    def started(self, name: str, part: Part, attempt: int) -> None:
        s = self.passes[name]
        s.running += 1
        if s.first_start is None:
            s.first_start = time.monotonic()
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._say(f"{part.name}: started{again}; log {part.log}")

    def done(self, name: str, part: Part, result: PartResult) -> None:
        s = self.passes[name]
        s.running -= 1
        s.done += 1
        s.records += result.records_in
        s.part_seconds.append(result.seconds)
        self._say(f"{part.name}: done in {result.seconds:.1f}s; {self.rate(name)}")
        self._bar(name)

    def rate(self, name: str) -> str:
        """`D/T parts of PASS, X parts/s, Y records/s, ETA H:MM:SS` from the parts this run finished."""
        s = self.passes[name]
        ran = s.done - s.skipped
        words = f"{s.done}/{s.total} parts of {name}"
        if ran and s.first_start is not None:
            elapsed = max(time.monotonic() - s.first_start, 1e-6)
            words += f", {ran / elapsed:.2f} parts/s"
            if s.records:
                words += f", {s.records / elapsed:,.0f} records/s"
            if s.done < s.total:
                words += f", ETA {_clock(elapsed / ran * (s.total - s.done))}"
        return words

    def retry(self, name: str, part: Part, result: PartResult, attempts: int) -> None:
        self.passes[name].running -= 1
        why = result.message or f"exit {result.status}"
        self._say(f"{part.name}: failed ({why}), retrying; log {part.log}", event=False)

    def failed(self, name: str, part: Part, result: PartResult) -> None:
        self.passes[name].running -= 1
        why = result.message or f"exit {result.status}"
        self._say(f"{part.name}: failed ({why}), giving up; log {part.log}", event=False)

    def tick(self) -> None:
        for name in self._bars:
            self._bar(name)  # the ETA moves while parts run

    def summary(self) -> str:
        total = sum(s.total for s in self.passes.values())
        done = sum(s.done for s in self.passes.values())
        skipped = sum(s.skipped for s in self.passes.values())
        return (
            f"{done}/{total} parts done ({done - skipped} run, {skipped} already done) "
            f"in {_clock(time.monotonic() - self.start)}"
        )
