"""`rsyn cat`: concatenate and convert record streams, optionally one kind, a limit or a range of positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rsyn.errors import RsynError
from rsyn.options.cat import CatOptions
from rsyn.stream import STDIO, ShardPlan, iter_line_blocks

if TYPE_CHECKING:
    from rsyn.command import Run


def run_cat(run: Run, opts: CatOptions) -> None:
    if opts.range_ is not None:
        run.read_plan(_range_plan(run, opts.range_))
    if opts.plain:
        run.plain_output()
    kind, limit = opts.kind, opts.limit
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


def _range_plan(run: Run, k_n: tuple[int, int]) -> ShardPlan:
    k, n = k_n
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
