"""Options of `rsyn report` (rsyn.stages.report), declared once."""

from dataclasses import dataclass, field
from typing import Annotated

from rsyn.options import opt
from rsyn.options.images import ImageFolderOptions, LocalFileOptions


def _folder(value: str) -> str | None:
    return value or None


@dataclass
class ReportOptions(ImageFolderOptions, LocalFileOptions):
    records: Annotated[
        list[str],
        opt(
            "--records",
            help="Record streams to sample the gallery and the score histograms from (e.g. the extract, "
            "retrieve, caption or balance output). Repeatable.",
        ),
    ] = field(default_factory=list)
    packed: Annotated[
        str | None,
        opt(
            "--packed",
            cli_type=str,
            parse=_folder,
            shown=lambda value: value or "",
            help="Output directory of `rsyn pack`: text lengths, and thumbnails from its webdataset tars.",
        ),
    ] = None
    gallery: Annotated[
        int, opt("--gallery", min=0, max=500, help="Number of sample pairs shown, drawn at random (--seed).")
    ] = 12
    title: Annotated[str, opt("--title", help="Page title.")] = "rsyn pipeline report"
