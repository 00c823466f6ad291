"""`rsyn run`: pick the passes, lock the output, sweep what dead runs left, run, stop cleanly on a signal."""

from __future__ import annotations

import os
import sys

from rsyn.pipeline.config import Pipeline
from rsyn.pipeline.engines import Interrupted, LocalEngine, RayEngine, RunFailed, execute, visible_gpus, with_signals
from rsyn.pipeline.graph import Graph, Part
from rsyn.pipeline.parts import OutputLock, sweep_output
from rsyn.pipeline.progress import Progress


def select(graph: Graph, until: list[str] | None, part: str | None) -> tuple[list[str], Part | None]:
    """The passes to run (--until: those and what they need; default: all) or the one part of --part PASS/K."""
    if part is not None:
        name, _, k = part.rpartition("/")
        if name not in graph.passes or not k.isdigit() or int(k) >= len(graph.passes[name].parts):
            known = ", ".join(f"{n}/0..{len(q.parts) - 1}" for n, q in graph.passes.items())
            raise RunFailed(f"--part {part!r}: no such part (parts: {known})")
        return [name], graph.passes[name].parts[int(k)]
    for name in until or []:
        if name not in graph.passes:
            raise RunFailed(f"--until {name!r}: no such pass (passes: {', '.join(graph.passes)})")
    return graph.upstream(list(until) if until else graph.final()), None


def run_pipeline(
    p: Pipeline,
    graph: Graph,
    names: list[str],
    only: Part | None,
    engine: str,
    address: str | None,
    workers: int,
    retries: int,
    quiet: bool,
) -> None:
    """Run the passes; raises RunFailed (exit 2) or Interrupted (after the parts were stopped and swept)."""
    try:
        lock = OutputLock(p.output, exclusive=only is None)
    except RuntimeError as exc:
        raise RunFailed(str(exc)) from None
    try:
        if only is None:
            swept = sweep_output(p.output)  # what dead runs left; a single part sweeps only its own
            if swept and not quiet:
                print(
                    f"rsyn run: removed {swept} temporar{'y' if swept == 1 else 'ies'} left by a dead run",
                    file=sys.stderr,
                )
        progress = Progress(quiet=quiet)
        state: dict = {}

        def body() -> None:
            passes = [graph.passes[n] for n in names]
            if engine == "ray":
                state["engine"] = RayEngine(address, workers or None)
                state["engine"].check(passes)
            else:
                gpus = visible_gpus() if any(q.gpus for q in passes) else []
                for q in passes:
                    if gpus and q.gpus > len(gpus):
                        raise RunFailed(f"pass {q.name} needs {q.gpus} GPUs per part; this machine has {len(gpus)}")
                state["engine"] = LocalEngine(workers or os.cpu_count() or 1, gpus)
            execute(graph, names, state["engine"], retries, progress, only=only)

        def stop() -> None:
            if "engine" in state:
                stopped = state["engine"].stop()  # before close(): a local Ray must be up to cancel its tasks
                if not quiet and stopped:
                    print(
                        f"rsyn run: stopped {len(stopped)} running part(s) and removed their temporaries",
                        file=sys.stderr,
                    )

        try:
            with_signals(body, stop)
        except Interrupted:
            if not quiet:
                print(
                    "rsyn run: interrupted; finished parts keep their markers, a rerun does the rest", file=sys.stderr
                )
            raise
        finally:
            progress.close()
            if "engine" in state:
                state["engine"].close()
        if not quiet:
            print(f"rsyn run: {progress.summary()}", file=sys.stderr)
    finally:
        lock.release()
