"""Option groups of the commands that read the images records name (embed, caption, pack, dedup, report).

A record's `path` is untrusted (rsyn.localfiles): LocalFileOptions say where such files may lie and how
large they may be; DownloadOptions bound each download (rsyn/net.py). A stage's Options class inherits
the groups it needs, so each option is declared here only.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from rsyn.image_limits import DEFAULT_DEADLINE, DEFAULT_MAX_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_REDIRECTS
from rsyn.options import opt

LOCAL = "Local files"
IMAGES = "Images"
DOWNLOADS = "Downloads"


def _path_text(value: Path | None) -> str | None:
    return None if value is None else str(value)


@dataclass
class LocalFileOptions:
    # a record's `path` must lie under it (default: the current directory)
    path_root: Annotated[
        str | None,
        opt(
            "--path-root",
            metavar="DIR",
            panel=LOCAL,
            cli_type=Path | None,
            parse=_path_text,
            exists=True,
            file_okay=False,
            dir_okay=True,
            help="A record's `path` must lie under DIR once resolved (symlinks and `..` included); others are "
            "rejected as outside_root. Default: the current directory.",
        ),
    ] = None
    max_bytes: Annotated[
        int,
        opt(
            "--max-bytes",
            min=1,
            panel=LOCAL,
            help="Largest image file read, local or downloaded; only regular files are read, never more than this.",
        ),
    ] = DEFAULT_MAX_BYTES


@dataclass
class DownloadOptions:
    timeout: Annotated[
        float,
        opt(
            "--timeout",
            min=0.01,
            panel=DOWNLOADS,
            help="Image downloads: seconds to connect and for each read (within --deadline).",
        ),
    ] = DEFAULT_TIMEOUT
    deadline: Annotated[
        float,
        opt(
            "--deadline",
            min=0.01,
            panel=DOWNLOADS,
            help="Image downloads: seconds for one whole download: connecting, headers, body, redirects and "
            "retries together.",
        ),
    ] = DEFAULT_DEADLINE
    retries: Annotated[
        int,
        opt(
            "--retries",
            min=0,
            panel=DOWNLOADS,
            help=f"Image downloads: retries (with backoff) after a connection error, a timeout or a 429/5xx answer. "
            f"Up to {MAX_REDIRECTS} redirects are followed apart from these.",
        ),
    ] = DEFAULT_RETRIES
    allow_private_urls: Annotated[
        bool,
        opt(
            "--allow-private-urls",
            panel=DOWNLOADS,
            help="Also download images from loopback, private, link-local and other non-public addresses (tests, "
            "intranets). By default such a URL fails its record as private_address.",
        ),
    ] = False


@dataclass
class ImageFolderOptions:
    images: Annotated[
        str | None,
        opt(
            "--images",
            metavar="DIR",
            panel=IMAGES,
            help="img2dataset output folder (any output_format: webdataset, parquet or files): a record's image is "
            "found there by its URL (a record's own `path` comes first). A folder with no img2dataset output in "
            "it is refused.",
        ),
    ] = None


@dataclass
class ImageWorkerOptions:
    image_workers: Annotated[
        int,
        opt(
            "--image-workers",
            min=0,
            panel=IMAGES,
            aliases=("--workers",),
            help="Threads reading, fetching and decoding images; 0: 4 per CPU core, 8 to 64.",
        ),
    ] = 0

    def image_worker_count(self) -> int:
        return self.image_workers or max(8, min(64, 4 * (os.cpu_count() or 1)))
