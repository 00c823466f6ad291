import sys
from pathlib import Path
from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import fail


@app.command("plan", short_help="Write the pipeline as a Makefile or as Slurm job arrays.")
def plan(
    pipeline: Annotated[str, typer.Argument(help="Pipeline file (TOML), e.g. examples/pipeline.toml.")],
    emit: Annotated[str, typer.Option("--emit", help="make: a Makefile; slurm: sbatch scripts + submit.sh.")],
    output: Annotated[
        str | None,
        typer.Option(
            "-o", "--output", help="Directory to write into (default: OUTPUT/plan-make or OUTPUT/plan-slurm)."
        ),
    ] = None,
    until: Annotated[
        list[str] | None,
        typer.Option("--until", metavar="PASS", help="Plan only this pass and the passes it needs (repeatable)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a setting of the file, e.g. stages.embed.shards=8 (kept in the emitted commands).",
        ),
    ] = None,
) -> None:
    """Write the pass graph of a pipeline file as a Makefile (one target per part: its done marker;
    `make -j N` runs parts in parallel) or as Slurm job arrays (one array task per part, passes
    chained with --dependency=afterok, --gpus-per-task only on GPU passes) and a submit.sh that
    submits them in order. Every part runs as `rsyn run PIPELINE --part PASS/K`. See docs/running.md."""
    from rsyn.pipeline.config import PipelineError, load_pipeline
    from rsyn.pipeline.passes import build_graph
    from rsyn.pipeline.planners import emit_make, emit_slurm
    from rsyn.stream import write_bytes_atomic

    if emit not in ("make", "slurm"):
        fail(f"--emit {emit!r}: choose make or slurm")
    try:
        p = load_pipeline(pipeline, overrides)
        graph = build_graph(p)
    except PipelineError as exc:
        fail(str(exc))
    for name in until or []:
        if name not in graph.passes:
            fail(f"--until {name!r}: no such pass (passes: {', '.join(graph.passes)})")
    if until:
        graph = graph.only(list(until))
    files = emit_make(p, graph) if emit == "make" else emit_slurm(p, graph)
    out = Path(output) if output else p.output / f"plan-{emit}"
    for name, text in files.items():
        write_bytes_atomic(out / name, text.encode())
        if name.endswith((".sh", ".sbatch")):
            (out / name).chmod(0o755)
    print(f"rsyn plan: wrote {', '.join(sorted(files))} in {out}", file=sys.stderr)
