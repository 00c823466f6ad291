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


# Runs the command (argv[2:]) as its child and writes that child's wall seconds, CPU seconds and peak RSS
# (KiB) to the pipe whose fd is argv[1]. The launcher is a small process between the benchmark and the
# command because Linux carries a process's peak RSS across fork and exec: a command started straight from
# a benchmark that holds 1.5 GiB (a model, a corpus) reports at least 1.5 GiB, whatever it used itself.
_LAUNCHER = r"""
import os, sys, time
report = int(sys.argv[1])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(report)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(2, f"cannot run {sys.argv[2]}: {exc}".encode())
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
os.write(report, f"{wall} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}".encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one child process; exits with its stderr if it fails.

    Wall time runs from the command's start to its exit (the launcher's own start is not counted)."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(write_end), *cmd],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            pass_fds=(write_end,),
        )
    finally:
        os.close(write_end)
    err = proc.stderr.read()
    proc.wait()
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().split()
    if proc.returncode != 0 or len(report) != 3:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err.decode(errors='replace')[-2000:]}")
    wall, cpu, maxrss_kib = map(float, report)
    return wall, cpu, maxrss_kib / 1024


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
