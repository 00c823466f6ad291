"""Options of the commands that read the images records name (embed, caption, pack, dedup, report), declared once.

A record's `path` is untrusted (rsyn.localfiles): these options say where such
files may lie and how large they may be. Kept apart from rsyn.localfiles so
that module stays free of the command-line library.
"""

from pathlib import Path
from typing import Annotated

import typer

from rsyn.image_limits import MAX_REDIRECTS

PathRootOption = Annotated[
    Path | None,
    typer.Option(
        "--path-root",
        metavar="DIR",
        rich_help_panel="Local files",
        exists=True,
        file_okay=False,
        dir_okay=True,
        help="A record's `path` must lie under DIR once resolved (symlinks and `..` included); others are "
        "rejected as outside_root. Default: the current directory.",
    ),
]

MaxBytesOption = Annotated[
    int,
    typer.Option(
        "--max-bytes",
        min=1,
        rich_help_panel="Local files",
        help="Largest image file read, local or downloaded; only regular files are read, never more than this.",
    ),
]

# Downloads (embed and caption fetch images by URL; rsyn/net.py bounds each request).
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0.01,
        rich_help_panel="Downloads",
        help="Image downloads: seconds to connect and for each read (within --deadline).",
    ),
]

DeadlineOption = Annotated[
    float,
    typer.Option(
        "--deadline",
        min=0.01,
        rich_help_panel="Downloads",
        help="Image downloads: seconds for one whole download: connecting, headers, body, redirects and retries "
        "together.",
    ),
]

RetriesOption = Annotated[
    int,
    typer.Option(
        "--retries",
        min=0,
        rich_help_panel="Downloads",
        help=f"Image downloads: retries (with backoff) after a connection error, a timeout or a 429/5xx answer. Up to "
        f"{MAX_REDIRECTS} redirects are followed apart from these.",
    ),
]

AllowPrivateUrlsOption = Annotated[
    bool,
    typer.Option(
        "--allow-private-urls",
        rich_help_panel="Downloads",
        help="Also download images from loopback, private, link-local and other non-public addresses (tests, "
        "intranets). By default such a URL fails its record as private_address.",
    ),
]
