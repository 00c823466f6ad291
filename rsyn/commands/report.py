from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command


@rsyn_command(app, "report", "Turn the --stats files of a run into one self-contained HTML report.")
def report(
    run: Run,
    records: Annotated[list[str], typer.Option(
        "--records", help="Record streams to plot retrieval scores and image-syn_text similarity from "
        "(e.g. the retrieve or balance output). Repeatable.")] = [],  # noqa: B006 - Typer needs a list default
    packed: Annotated[str, typer.Option("--packed", help="Output directory of `rsyn pack`, for text lengths.")] = "",
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "rsyn pipeline report",
) -> None:
    """Turn the --stats JSON files of a run (INPUT...) into one HTML page with plots: the filter funnel
    per stage, retrieval-score and image-syn_text similarity histograms, cluster sizes before and after
    balancing, and the text-length table of the packed output. Write it with -o report.html."""
    from rsyn.stages.report import run_report

    run_report(run, records, packed or None, title)
