from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.image_limits import DEFAULT_MAX_BYTES
from rsyn.image_options import MaxBytesOption, PathRootOption


@rsyn_command(app, "report", "Turn the --stats files of a run into one self-contained HTML report.")
def report(
    run: Run,
    records: Annotated[
        list[str],
        typer.Option(
            "--records",
            help="Record streams to sample the gallery and the score histograms from (e.g. the extract, "
            "retrieve, caption or balance output). Repeatable.",
        ),
    ] = [],  # noqa: B006 - Typer needs a list default
    packed: Annotated[
        str,
        typer.Option(
            "--packed", help="Output directory of `rsyn pack`: text lengths, and thumbnails from its webdataset tars."
        ),
    ] = "",
    images: Annotated[
        str | None,
        typer.Option("--images", metavar="DIR", help="img2dataset output folder to find gallery images in by URL."),
    ] = None,
    gallery: Annotated[
        int, typer.Option("--gallery", min=0, max=500, help="Number of sample pairs shown, drawn at random (--seed).")
    ] = 12,
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "rsyn pipeline report",
    path_root: PathRootOption = None,
    max_bytes: MaxBytesOption = DEFAULT_MAX_BYTES,
) -> None:
    """Turn the --stats JSON files of a run (INPUT...) into one self-contained HTML page to look at the data:
    a gallery of sampled pairs (thumbnail, texts with scores, caption, tags, syn_text and its cosine), the funnel
    from documents to pairs (images and sentences apart), histograms of the filter scores and the similarities
    with thresholds and the balance window marked, cluster sizes, packed text lengths, and the run's models,
    settings, version and date. Images are read only from a record's `path`, --images or --packed, never fetched.
    Write it with -o report.html."""
    from rsyn.stages.report import run_report

    run_report(
        run,
        records,
        packed or None,
        images,
        title,
        gallery=gallery,
        path_root=None if path_root is None else str(path_root),
        max_bytes=max_bytes,
    )
