import os
import sys
from typing import Annotated, Optional

import typer

from rsyn.cli import app
from rsyn.command import fail


@app.command("run", short_help="Run a pipeline file: every pass, resumable, here or on a Ray cluster.")
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline file (TOML), e.g. examples/pipeline.toml.")],
    engine: Annotated[str, typer.Option(
        "--engine", help="local: subprocesses on this machine; ray: Ray tasks (--address, or a local Ray).")
    ] = "local",
    address: Annotated[Optional[str], typer.Option(
        "--address", help="Ray cluster to join (e.g. auto or HOST:6379); default: start a local one.")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, help="local: parts at a time; ray without --address: CPUs of the local Ray. "
        "0: the CPU count.")] = 0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries of a failed part.")] = 2,
    until: Annotated[Optional[list[str]], typer.Option(
        "--until", metavar="PASS", help="Run only this pass and the passes it needs (repeatable).")] = None,
    part: Annotated[Optional[str], typer.Option(
        "--part", metavar="PASS/K", help="Run only part K of PASS (what `rsyn plan` jobs run); its inputs "
        "must be there.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a setting of the file, e.g. stages.embed.shards=8.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """Run the passes of a pipeline file. Each part writes its outputs, then a done marker
    (OUTPUT/.done/PART.json: argv, exit status, seconds, input and output sizes); a rerun, with any
    engine, skips the parts whose marker matches their command and inputs and removes what dead
    attempts left. A failed part is retried --retries times, then the run ends with exit status 2
    naming the part and its log (OUTPUT/logs/PART.log). SIGTERM and Ctrl-C stop the parts, remove
    their temporaries and exit 143 / 130. See docs/running.md."""
    from rsyn.pipeline.config import PipelineError, load_pipeline
    from rsyn.pipeline.engines import Interrupted, LocalEngine, RayEngine, RunFailed, execute, visible_gpus
    from rsyn.pipeline.engines import with_signals
    from rsyn.pipeline.passes import build_graph
    from rsyn.pipeline.progress import Progress

    if engine not in ("local", "ray"):
        fail(f"--engine {engine!r}: choose local or ray")
    try:
        p = load_pipeline(pipeline, overrides)
        graph = build_graph(p)
    except PipelineError as exc:
        fail(str(exc))
    only = None
    if part is not None:
        name, _, k = part.rpartition("/")
        if name not in graph.passes or not k.isdigit() or int(k) >= len(graph.passes[name].parts):
            known = ", ".join(f"{n}/0..{len(q.parts) - 1}" for n, q in graph.passes.items())
            fail(f"--part {part!r}: no such part (parts: {known})")
        only = graph.passes[name].parts[int(k)]
        names = [name]
    else:
        for name in until or []:
            if name not in graph.passes:
                fail(f"--until {name!r}: no such pass (passes: {', '.join(graph.passes)})")
        names = graph.upstream(list(until) if until else graph.final())
    from rsyn.pipeline.parts import OutputLock, sweep_output

    try:
        lock = OutputLock(p.output, exclusive=only is None)
    except RuntimeError as exc:
        fail(str(exc))
    if only is None:
        swept = sweep_output(p.output)  # what dead runs left; a single part sweeps only its own
        if swept and not quiet:
            print(f"rsyn run: removed {swept} temporar{'y' if swept == 1 else 'ies'} left by a dead run",
                  file=sys.stderr)
    progress = Progress(quiet=quiet)
    state = {}

    def body() -> None:
        if engine == "ray":
            eng = RayEngine(address, workers or None)
            eng.check([graph.passes[n] for n in names])
        else:
            gpus = visible_gpus()
            for n in names:
                if gpus and graph.passes[n].gpus > len(gpus):
                    raise RunFailed(f"pass {n} needs {graph.passes[n].gpus} GPUs per part; "
                                    f"this machine has {len(gpus)}")
            eng = LocalEngine(workers or os.cpu_count() or 1, gpus)
        state["engine"] = eng
        try:
            execute(graph, names, eng, retries, progress, only=only)
        finally:
            eng.close()

    def stop() -> None:
        eng = state.get("engine")
        if eng is not None:
            stopped = eng.stop()
            eng.close()
            if not quiet and stopped:
                print(f"rsyn run: stopped {len(stopped)} running part(s) and removed their temporaries",
                      file=sys.stderr)

    try:
        try:
            with_signals(body, stop)
        finally:
            progress.close()
    except RunFailed as exc:
        fail(str(exc))
    except Interrupted as exc:
        print("rsyn run: interrupted; finished parts keep their markers, a rerun does the rest", file=sys.stderr)
        raise typer.Exit(128 + exc.signum) from None  # 130 for SIGINT, 143 for SIGTERM, as a shell reports
    finally:
        lock.release()
    if not quiet:
        print(f"rsyn run: {progress.summary()}", file=sys.stderr)
