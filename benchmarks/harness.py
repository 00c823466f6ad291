"""What the benchmark scripts share: timing (a child process, a call, alternating rounds), peak RSS,
the sample data, and the table with the ratio to the reference measured in the same run.

Scripts here run as `python benchmarks/NAME.py` with rsyn importable (the `.venv` of bin/bootstrap, or
`PYTHONPATH=$PWD`), so they import this module as `harness`.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Real web data the benchmarks read: laion-10k.parquet (LAION captions), images/ (web JPEGs named W_H.jpg),
# ram_tag_list.txt (the RAM++ tag list).
DATA = Path(os.environ.get("RSYN_SAMPLE_DATA", "/work/shared/data"))


def sample_data(name: str) -> Path:
    """DATA/name; exits with a one-line message when it is missing (set RSYN_SAMPLE_DATA to its folder)."""
    path = DATA / name
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        sys.exit(f"no sample data at {path} (set RSYN_SAMPLE_DATA to the folder holding {name})")
    return path


def rsyn(*args: object) -> list[str]:
    """The command line of `rsyn ARGS...` run by this interpreter (the rsyn this script imports)."""
    return [sys.executable, "-m", "rsyn", *map(str, args)]


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one child process; exits with its stderr if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """(fn's result, wall seconds of the call)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def best_of(sides: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Fewest wall seconds of each side over `rounds` rounds, the sides alternating within each round, so that
    a noisy neighbour on the shared machine slows every side alike."""
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(rounds):
        for name, fn in sides.items():
            best[name] = min(best[name], timed(fn)[1])
    return best


def peak_rss_mib() -> float:
    """Peak RSS of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """The machine in words, for the first line of a result: cores and load average now."""
    return f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"


def ratio(reference_seconds: float, seconds: float) -> str:
    """Speed relative to the reference: reference time / time (> 1: faster than the reference)."""
    return f"{reference_seconds / seconds:.2f}x" if seconds else "inf"


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A markdown table (what docs/*.md quote); floats with 2 decimals, ints with thousands separators."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")
