"""Running one part: its subprocess, log, temporaries and done marker. Every engine goes through here.

A part is done when its marker exists and still describes it: the same argv and the same inputs
(size and mtime of every input file, or of a directory's entries). The marker is written last,
atomically, after the command exited 0 and left every output; a part killed at any point leaves
no marker, so the next run redoes it, after removing what the dead attempt left: the
`.NAME.rsyn-tmp-PID` / `.NAME.rsyn-old-PID` files and directories beside its outputs (rsyn's atomic
writes) and its TMPDIR (dedup and balance spill there).
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rsyn.pipeline.graph import Part
from rsyn.stream import write_bytes_atomic

MARKER_VERSION = 1


@dataclass
class PartResult:
    name: str
    status: int  # 0: done; else the exit status (negative: killed by that signal)
    seconds: float
    attempt: int
    message: str = ""  # why a part that exited 0 still failed (an output missing)
    records_in: int = 0
    records_out: int = 0
    skipped: bool = False  # found done, not run


# ----------------------------------------------------------------------------- fingerprints and markers


def fingerprint(inputs: tuple[str, ...], cache: dict | None = None) -> dict[str, list]:
    """{path: [size, mtime_ns]} of every file the inputs name (globs expanded, directories by entry).

    `cache` (input -> its entries) spares the parts of one pass, which share their inputs, from
    listing a large folder (the images) once per part.
    """
    seen: dict[str, list] = {}
    for item in inputs:
        if cache is not None and item in cache:
            seen.update(cache[item])
            continue
        entries = _entries(item)
        if cache is not None:
            cache[item] = entries
        seen.update(entries)
    return seen


def _entries(item: str) -> dict[str, list]:
    entries: dict[str, list] = {}
    for path in sorted(glob.glob(item)) if glob.has_magic(item) else [item]:
        try:
            st = os.stat(path)
        except OSError:
            entries[path] = ["missing"]
            continue
        if os.path.isdir(path):
            with os.scandir(path) as listing:
                for entry in sorted(listing, key=lambda e: e.name):
                    if not entry.name.startswith("."):
                        est = entry.stat()
                        entries[entry.path] = [est.st_size, est.st_mtime_ns]
        else:
            entries[path] = [st.st_size, st.st_mtime_ns]
    return entries


def read_marker(part: Part) -> dict | None:
    try:
        with open(part.marker, "rb") as fh:
            marker = json.loads(fh.read(1 << 22))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def is_done(part: Part, cache: dict | None = None) -> bool:
    """The part's marker exists, was written for this argv and these inputs, and its outputs are there."""
    marker = read_marker(part)
    if marker is None or marker.get("version") != MARKER_VERSION or marker.get("argv") != list(part.argv):
        return False
    if marker.get("inputs") != fingerprint(part.inputs, cache):
        return False
    outputs = marker.get("outputs", {})
    for path in part.outputs:
        if not os.path.exists(path):
            return False
        if os.path.isfile(path) and outputs.get(path) != os.path.getsize(path):
            return False
    return True


def _records(stats: str | None) -> tuple[int, int]:
    if not stats:
        return 0, 0
    try:
        with open(stats, "rb") as fh:
            s = json.loads(fh.read(1 << 22))
        return int(s.get("in", 0)), int(s.get("out", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0, 0


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path)


def write_marker(part: Part, result: PartResult, inputs: dict) -> None:
    marker = {
        "version": MARKER_VERSION,
        "part": part.name,
        "argv": list(part.argv),
        "status": result.status,
        "seconds": round(result.seconds, 3),
        "attempt": result.attempt,
        "host": socket.gethostname(),
        "records": {"in": result.records_in, "out": result.records_out},
        "inputs": inputs,
        "outputs": {path: _size(path) for path in (*part.outputs, *part.optional_outputs) if os.path.exists(path)},
    }
    write_bytes_atomic(part.marker, json.dumps(marker, indent=1).encode() + b"\n")


# ----------------------------------------------------------------------------- temporaries


def temporaries(part: Part) -> list[str]:
    """What a dead attempt of this part can have left: rsyn's atomic-write temporaries and its TMPDIR."""
    found = []
    for path in (*part.outputs, *part.optional_outputs, part.marker):
        parent, name = os.path.split(path)
        for kind in ("rsyn-tmp", "rsyn-old"):
            found += glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.{kind}-*"))
    if os.path.exists(part.tmp):
        found.append(part.tmp)
    return found


def remove_temporaries(part: Part) -> int:
    n = 0
    for path in temporaries(part):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        n += 1
    try:
        os.rmdir(os.path.dirname(part.tmp))  # OUTPUT/.tmp goes when no part is running
    except OSError:
        pass
    return n


def make_tmpdir(path: str) -> None:
    """Create a part's TMPDIR under OUTPUT/.tmp, which a part finishing beside this one (make -j, a Slurm
    array) may remove between our creating it and creating the TMPDIR in it (remove_temporaries): retry."""
    for _ in range(100):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    Path(path).mkdir(parents=True, exist_ok=True)


def sweep_output(output: Path) -> int:
    """Remove every temporary under OUTPUT: only while holding its exclusive lock (no part is running)."""
    n = 0
    for pattern in (".*.rsyn-tmp-*", ".*.rsyn-old-*"):
        for path in output.rglob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            n += 1
    if (output / ".tmp").is_dir():
        shutil.rmtree(output / ".tmp", ignore_errors=True)
        n += 1
    return n


class OutputLock:
    """A whole run holds OUTPUT/.done/.lock exclusively; single parts (make -j, Slurm tasks) hold it shared.

    So a whole run never sweeps temporaries of parts that another process is running, and two
    whole runs never write the same outputs at once.
    """

    def __init__(self, output: Path, exclusive: bool):
        import fcntl

        path = output / ".done" / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a")
        try:
            fcntl.flock(self.fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise RuntimeError(f"{output} is in use by another rsyn run") from None

    def release(self) -> None:
        self.fh.close()


# ----------------------------------------------------------------------------- the subprocess

_PR_SET_PDEATHSIG = 1


def _die_with_parent(runner: int) -> Callable[[], None]:
    """Linux: the part gets SIGKILL when the runner dies, even by SIGKILL, so no orphan races a rerun."""

    def arm() -> None:  # pragma: no cover - runs in the child between fork and exec
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != runner:  # the runner died between the fork and the line above: no signal will come
            os._exit(128 + signal.SIGKILL)

    return arm


class PartProcess:
    """One attempt of a part: start() spawns it, poll() says if it ended, finish() writes the marker."""

    def __init__(self, part: Part, attempt: int, env: dict | None = None):
        self.part = part
        self.attempt = attempt
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.inputs: dict = {}
        self.start_error = ""

    def start(self) -> None:
        part = self.part
        remove_temporaries(part)
        for path in (*part.outputs, *part.optional_outputs, part.log, part.marker):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        make_tmpdir(part.tmp)
        try:
            os.unlink(part.marker)  # a stale marker (other argv or inputs) must not survive a failed attempt
        except FileNotFoundError:
            pass
        self.inputs = fingerprint(part.inputs)  # before the run: an input changed meanwhile makes it redo
        env = {**os.environ, **(self.env or {}), "TMPDIR": part.tmp}
        with open(part.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(
                f"=== rsyn run: {part.name} attempt {self.attempt} on {socket.gethostname()} at {stamp}\n"
                f"=== {' '.join(part.argv)}\n".encode()
            )
            log.flush()
            self.started = time.monotonic()
            try:
                self.proc = subprocess.Popen(
                    list(part.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=part.cwd,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()) if sys.platform == "linux" else None,
                )
            except OSError as exc:
                log.write(f"=== cannot start: {exc.strerror}\n".encode())
                self.proc = None
                self.start_error = f"cannot start {part.argv[0]}: {exc.strerror}"

    def poll(self) -> int | None:
        if self.proc is None:
            return 127
        return self.proc.poll()

    def wait(self) -> int:
        return 127 if self.proc is None else self.proc.wait()

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM the part's process group, SIGKILL what is left after `grace` seconds, then sweep."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        remove_temporaries(self.part)

    def finish(self, status: int) -> PartResult:
        part = self.part
        seconds = time.monotonic() - self.started
        result = PartResult(part.name, status, seconds, self.attempt, message=self.start_error)
        if status == 0:
            missing = [p for p in part.outputs if not os.path.exists(p)]
            if missing:
                result.status, result.message = 1, f"exited 0 but did not write {missing[0]}"
        if result.status == 0:
            result.records_in, result.records_out = _records(part.stats)
            write_marker(part, result, self.inputs)
        with open(part.log, "ab") as log:
            log.write(
                f"=== {part.name} attempt {self.attempt}: "
                f"{'done' if result.status == 0 else 'failed'} (exit {status}) in {seconds:.1f}s"
                f"{': ' + result.message if result.message else ''}\n".encode()
            )
        remove_temporaries(part)
        return result


def run_part(part_data: dict, attempt: int, env: dict | None = None) -> PartResult:
    """One attempt of a part, start to marker, blocking: what a Ray task runs."""
    part = Part.from_dict(part_data)
    proc = PartProcess(part, attempt, env)
    proc.start()
    try:
        status = proc.wait()
    except BaseException:
        proc.terminate()
        raise
    return proc.finish(status)
