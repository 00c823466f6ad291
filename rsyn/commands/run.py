from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import fail


@app.command("run", short_help="Run a pipeline file: every pass, resumable, here or on a Ray cluster.")
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline file (TOML), e.g. examples/pipeline.toml.")],
    engine: Annotated[
        str,
        typer.Option(
            "--engine", help="local: subprocesses on this machine; ray: Ray tasks (--address, or a local Ray)."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster to join (e.g. auto or HOST:6379); default: start a local one."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="local: parts at a time; ray without --address: CPUs of the local Ray. 0: the CPU count.",
        ),
    ] = 0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries of a failed part.")] = 2,
    until: Annotated[
        list[str] | None,
        typer.Option("--until", metavar="PASS", help="Run only this pass and the passes it needs (repeatable)."),
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(
            "--part",
            metavar="PASS/K",
            help="Run only part K of PASS (what `rsyn plan` jobs run); its inputs must be there.",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a setting of the file, e.g. stages.embed.shards=8."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """Run the passes of a pipeline file. Each part writes its outputs, then a done marker
    (OUTPUT/.done/PART.json: argv, exit status, seconds, input and output sizes); a rerun, with any
    engine, skips the parts whose marker matches their command and inputs and removes what dead
    attempts left. A failed part is retried --retries times, then the run ends with exit status 2
    naming the part and its log (OUTPUT/logs/PART.log). SIGTERM and Ctrl-C stop the parts, remove
    their temporaries and exit 143 / 130. See docs/running.md."""
    from rsyn.pipeline.config import PipelineError, load_pipeline
    from rsyn.pipeline.engines import Interrupted, RunFailed
    from rsyn.pipeline.passes import build_graph
    from rsyn.pipeline.runner import run_pipeline, select

    if engine not in ("local", "ray"):
        fail(f"--engine {engine!r}: choose local or ray")
    try:
        p = load_pipeline(pipeline, overrides)
        graph = build_graph(p)
        names, only = select(graph, until, part)
        run_pipeline(p, graph, names, only, engine, address, workers, retries, quiet)
    except (PipelineError, RunFailed) as exc:
        fail(str(exc))
    except Interrupted as exc:
        raise typer.Exit(128 + exc.signum) from None  # 130 for SIGINT, 143 for SIGTERM, as a shell reports
