"""Running a pass graph: one scheduler, two engines (local subprocesses, Ray tasks).

The scheduler starts every part whose passes-before are complete, as far as the engine has room,
retries a failed part up to --retries times, and stops starting parts after one failed for good
(the running ones finish and keep their markers). An engine only starts parts and reports the
ones that ended; markers, logs and temporaries are handled by rsyn.pipeline.parts for all of them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from rsyn.pipeline.graph import Graph, Part, Pass
from rsyn.pipeline.parts import PartProcess, PartResult, is_done, remove_temporaries, run_part
from rsyn.pipeline.progress import Progress


class RunFailed(Exception):
    """A part failed on every attempt: one line naming it and its log."""


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Engine:
    name = "engine"

    def room(self, p: Pass) -> bool:
        """Can a part of this pass start now?"""
        raise NotImplementedError

    def start(self, p: Pass, part: Part, attempt: int) -> None:
        raise NotImplementedError

    def ended(self, timeout: float) -> list[PartResult]:
        """Results of the parts that ended, waiting up to `timeout` seconds for one."""
        raise NotImplementedError

    def running(self) -> int:
        raise NotImplementedError

    def stop(self) -> list[Part]:
        """Stop every running part (children terminated, temporaries removed); the parts stopped."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def execute(
    graph: Graph, names: list[str], engine: Engine, retries: int, progress: Progress, only: Part | None = None
) -> None:
    """Run the parts of the named passes (or the one part `only`), skipping those already done.

    Whether a part is done is decided when its pass becomes ready, after the passes before it ran:
    a pass whose input was just rewritten has a stale marker and runs again.
    """
    passes = [graph.passes[n] for n in names]
    parts_of: dict[str, list[Part]] = {}
    for p in passes:
        parts_of[p.name] = [only] if only is not None and only.pass_name == p.name else ([] if only else p.parts)
        progress.add_pass(p.name, len(parts_of[p.name]))
    by_name = {part.name: (p, part) for p in passes for part in parts_of[p.name]}
    left = {n: len(parts_of[n]) for n in names}
    opened: set[str] = set()  # passes whose parts were checked and queued
    complete: set[str] = set()
    attempts: dict[str, int] = {}
    queue: list[tuple[Pass, Part]] = []
    failed: PartResult | None = None
    failed_part: Part | None = None
    while True:
        if failed is None:
            changed = True
            while changed:  # a pass found all done makes the next one ready at once
                changed = False
                for p in passes:
                    if p.name in opened or not all(a in complete or a not in left for a in p.after):
                        continue
                    opened.add(p.name)
                    listed: dict = {}  # its parts share their inputs: list them once
                    for part in parts_of[p.name]:
                        if is_done(part, listed):
                            progress.skipped(p.name, part)
                            left[p.name] -= 1
                        else:
                            queue.append((p, part))
                    if left[p.name] == 0:
                        complete.add(p.name)
                        changed = True
            still = []
            for p, part in queue:
                if engine.room(p):
                    attempts[part.name] = attempts.get(part.name, 0) + 1
                    engine.start(p, part, attempts[part.name])
                    progress.started(p.name, part, attempts[part.name])
                else:
                    still.append((p, part))
            queue = still
        if engine.running() == 0 and (failed is not None or not queue):
            break
        for result in engine.ended(timeout=0.5):
            p, part = by_name[result.name]
            if result.status == 0:
                left[p.name] -= 1
                progress.done(p.name, part, result)
                if left[p.name] == 0:
                    complete.add(p.name)
            elif attempts[part.name] <= retries and failed is None:
                progress.retry(p.name, part, result, retries + 1)
                queue.append((p, part))
            else:
                progress.failed(p.name, part, result)
                if failed is None:
                    failed, failed_part = result, part
        progress.tick()
    if failed is not None:
        why = failed.message or _status_words(failed.status)
        raise RunFailed(
            f"part {failed_part.name} failed {attempts[failed_part.name]} time"
            f"{'s' if attempts[failed_part.name] != 1 else ''} ({why}); its log: {failed_part.log}"
        )
    not_done = [n for n in names if n not in complete]
    if not_done:  # cannot happen unless the graph is broken; say so rather than claim success
        raise RunFailed(f"passes never became ready: {', '.join(not_done)}")


def _status_words(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class LocalEngine(Engine):
    """Parts as subprocesses of this process, at most `workers` at a time; GPU parts one per visible GPU."""

    name = "local"

    def __init__(self, workers: int, gpus: list[str] | None = None):
        self.workers = max(1, workers)
        self.free_gpus = list(gpus or [])
        self.has_gpus = bool(self.free_gpus)  # without any, a GPU pass runs on the CPU like the others
        self.procs: dict[str, tuple[PartProcess, list[str]]] = {}

    def room(self, p: Pass) -> bool:
        if len(self.procs) >= self.workers:
            return False
        return not (p.gpus and self.has_gpus and len(self.free_gpus) < p.gpus)

    def start(self, p: Pass, part: Part, attempt: int) -> None:
        env = {}
        taken: list[str] = []
        if p.gpus and self.has_gpus:
            taken, self.free_gpus = self.free_gpus[: p.gpus], self.free_gpus[p.gpus :]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
        proc = PartProcess(part, attempt, env)
        proc.start()
        self.procs[part.name] = (proc, taken)

    def ended(self, timeout: float) -> list[PartResult]:
        deadline = time.monotonic() + timeout
        while True:
            results = []
            for name, (proc, taken) in list(self.procs.items()):
                status = proc.poll()
                if status is not None:
                    del self.procs[name]
                    self.free_gpus += taken
                    results.append(proc.finish(status))
            if results or not self.procs or time.monotonic() >= deadline:
                return results
            time.sleep(0.05)

    def running(self) -> int:
        return len(self.procs)

    def stop(self) -> list[Part]:
        stopped = []
        for proc, _ in self.procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                try:
                    os.killpg(proc.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc, _ in self.procs.values():
            proc.terminate()
            stopped.append(proc.part)
        self.procs.clear()
        return stopped


class RayEngine(Engine):
    """Parts as Ray tasks, each running the part's command as a subprocess on whichever node Ray picks.

    A CPU part asks for `ray_cpus` (0.5 by default) CPUs, a GPU part for its GPUs: the requests are
    scheduling tokens, so fractional CPUs let a 2-CPU cluster run 4 light parts, and no part can wait
    forever on CPUs that long GPU parts hold. The nodes must share the output directory's filesystem.
    """

    name = "ray"

    def __init__(self, address: str | None, workers: int | None):
        try:
            import ray
        except ImportError:
            raise RunFailed("the ray engine needs Ray: pip install 'rsyn[ray]'") from None
        self.ray = ray
        self.started_cluster = address is None
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address is None:
            kwargs["num_cpus"] = workers or os.cpu_count()
        else:
            kwargs["address"] = address
        ray.init(**kwargs)
        self.resources = ray.cluster_resources()
        self.remote = ray.remote(max_retries=0)(run_part)
        self.refs: dict = {}  # ObjectRef -> Part

    def check(self, passes: list[Pass]) -> None:
        """Refuse a pass the whole cluster cannot hold: Ray would leave it pending forever."""
        gpus = self.resources.get("GPU", 0)
        for p in passes:
            if p.gpus > gpus:
                raise RunFailed(f"pass {p.name} needs {p.gpus} GPU(s) per part; the Ray cluster has {gpus:g}")

    def room(self, p: Pass) -> bool:
        return True  # Ray queues the task until its resources are free

    def start(self, p: Pass, part: Part, attempt: int) -> None:
        options = {"num_cpus": p.ray_cpus}
        if p.gpus:
            options["num_gpus"] = p.gpus
        ref = self.remote.options(**options).remote(part.to_dict(), attempt)
        self.refs[ref] = part

    def ended(self, timeout: float) -> list[PartResult]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        results = []
        for ref in ready:
            part = self.refs.pop(ref)
            try:
                results.append(self.ray.get(ref))
            except Exception as exc:  # the task's worker died (node lost, out of memory)
                remove_temporaries(part)
                results.append(PartResult(part.name, 1, 0.0, 0, message=f"Ray task failed: {type(exc).__name__}"))
        return results

    def running(self) -> int:
        return len(self.refs)

    def stop(self) -> list[Part]:
        parts = list(self.refs.values())
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)  # kills the worker; the part dies with it (PDEATHSIG)
        if self.refs:
            self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=15)
        for part in parts:
            remove_temporaries(part)
        self.refs.clear()
        return parts

    def close(self) -> None:
        if self.started_cluster:
            self.started_cluster = False
            self.ray.shutdown()


def visible_gpus() -> list[str]:
    """GPU ids the local engine hands out (CUDA_VISIBLE_DEVICES, else nvidia-smi's count); none: []."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def with_signals(body: Callable[[], None], on_signal: Callable[[], None]) -> None:
    """Run body; SIGTERM or SIGINT raise Interrupted in it, after on_signal() stopped the parts."""

    def handler(signum, frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        body()
    except Interrupted:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        on_signal()
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
