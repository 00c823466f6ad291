from typing import Annotated, Optional

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.stream import RecordWriter


@rsyn_command(app, "cat", "Concatenate and convert record streams (any compression in, zstd out).")
def cat(
    run: Run,
    plain: Annotated[bool, typer.Option("--plain", help="Write uncompressed JSONL.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="Stop after N records.")] = None,
) -> None:
    """Concatenate and convert record streams: zstd, gzip or plain JSONL in (detected from the bytes), zstd out."""
    if plain:
        run._writer = RecordWriter(run.output, compression="plain")
    records = run.records()
    if limit is not None:
        records = _take(records, limit)
    run.write(records)


def _take(records, limit):
    if limit == 0:
        return
    for i, record in enumerate(records, 1):
        yield record
        if i >= limit:
            return
