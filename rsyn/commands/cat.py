from dataclasses import dataclass
from enum import Enum
from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import RsynError, Run, parse_shard, rsyn_command
from rsyn.stream import STDIO, RecordWriter, ShardPlan, iter_line_blocks


class Kind(str, Enum):
    image = "image"
    text = "text"


@rsyn_command(app, "cat", "Concatenate and convert record streams (any compression in, zstd out).")
def cat(
    run: Run,
    plain: Annotated[bool, typer.Option("--plain", help="Write uncompressed JSONL.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=0, help="Stop after N records.")] = None,
    kind: Annotated[
        Kind | None,
        typer.Option("--kind", help="Keep only records of this kind; the others are counted as dropped."),
    ] = None,
    range_: Annotated[
        str | None,
        typer.Option(
            "--range",
            metavar="K/N",
            help="Keep the K-th of N contiguous, nearly equal ranges of record positions "
            "(the input is read twice: to count, then to copy). The N outputs, concatenated in K order, are the input; "
            "given as N input files, a later --shard K/N reads exactly file K.",
        ),
    ] = None,
) -> None:
    """Concatenate and convert record streams: zstd, gzip or plain JSONL in (detected from the bytes), zstd out.

    With --kind, split a mixed stream (e.g. `rsyn extract` output) into its images and its sentences.
    """
    if range_ is not None:
        run._plan = _range_plan(run, range_)
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


@dataclass(frozen=True)
class _RangePlan(ShardPlan):
    """Positions lo <= p < hi of the non-blank lines of the concatenated input (the record rule's positions)."""

    lo: int = 0
    hi: int = 0

    def keeps(self, position: int) -> bool:
        return self.lo <= position < self.hi


def _range_plan(run: Run, value: str) -> ShardPlan:
    try:
        k, n = parse_shard(value)
    except typer.BadParameter as exc:
        raise RsynError(f"--range {exc}") from None
    if run.shard is not None:
        raise RsynError("--range and --shard are two ways to slice the input: give one")
    paths = run.input_paths()
    if STDIO in paths:
        raise RsynError("--range reads its input twice (to count it): give files, not stdin")
    total = 0
    for path in paths:  # damage is not reported here: the copying read reports it, once
        for _, lines in iter_line_blocks(path, on_corrupt=lambda exc: None):
            total += sum(1 for line in lines if line and not line.isspace())
    return _RangePlan("records", paths, k, n, lo=total * k // n, hi=total * (k + 1) // n)
