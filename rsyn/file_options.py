"""Options of the commands that read files a record names (embed, caption, pack, dedup), declared once.

A record's `path` is untrusted (rsyn.localfiles): these options say where such
files may lie and how large they may be. Kept apart from rsyn.localfiles so
that module stays free of the command-line library.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

PathRootOption = Annotated[Optional[Path], typer.Option(
    "--path-root", metavar="DIR", rich_help_panel="Local files", exists=True, file_okay=False, dir_okay=True,
    help="A record's `path` must lie under DIR once resolved (symlinks and `..` included); others are "
         "rejected as outside_root. Default: the current directory.")]

MaxBytesOption = Annotated[int, typer.Option(
    "--max-bytes", min=1, rich_help_panel="Local files",
    help="Largest image file read, local or downloaded; only regular files are read, never more than this.")]
