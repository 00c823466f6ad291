from enum import Enum
from typing import Annotated, Optional

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.stream import RecordWriter


class Kind(str, Enum):
    image = "image"
    text = "text"


@rsyn_command(app, "cat", "Concatenate and convert record streams (any compression in, zstd out).")
def cat(
    run: Run,
    plain: Annotated[bool, typer.Option("--plain", help="Write uncompressed JSONL.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="Stop after N records.")] = None,
    kind: Annotated[Optional[Kind], typer.Option(
        "--kind", help="Keep only records of this kind; the others are counted as dropped.")] = None,
) -> None:
    """Concatenate and convert record streams: zstd, gzip or plain JSONL in (detected from the bytes), zstd out.

    With --kind, split a mixed stream (e.g. `rsyn extract` output) into its images and its sentences.
    """
    if plain:
        run._writer = RecordWriter(run.output, compression="plain")
    if kind is None and limit is None:
        for block in run.record_blocks():  # the plain pass-through: no per-record Python work
            run.write(block)
        return
    records = run.records()
    if kind is not None:
        records = _of_kind(run, records, kind.value)
    if limit is not None:
        records = _take(records, limit)
    run.write(records)


def _of_kind(run: Run, records, kind: str):
    for record in records:
        if record.get("kind") == kind:
            yield record
        else:
            run.drop(record, f"kind_not_{kind}")


def _take(records, limit):
    if limit == 0:
        return
    for i, record in enumerate(records, 1):
        yield record
        if i >= limit:
            return
