"""The entry points of `rsyn balance scan|plan|assign|cap|filter`: each pass of rsyn.stages.balance run on its own,
over pass directories (-o DIR, built beside its place and renamed there when done)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING

from rsyn.errors import RsynError
from rsyn.options.balance import AssignOptions, BalancePlanOptions, CapOptions, FilterOptions
from rsyn.stages.balance import (
    DONE,
    REASONS,
    PassDir,
    assign_pass,
    cap_pass,
    filter_pass,
    note_summary,
    parse_sim_range,
    plan_pass,
    scan_pass,
    stage_summary,
)
from rsyn.stream import AtomicDirectory

if TYPE_CHECKING:
    from rsyn.command import Run


def _run_into(run: Run, name: str, body) -> dict:
    """body(directory) builds the pass's output in a temporary directory, renamed to -o when it returns."""
    if not run.output or run.output == "-":
        raise RsynError(f"rsyn balance {name}: give the output directory with -o DIR")
    with AtomicDirectory(run.output, marker=DONE, overwrite=True) as directory:  # OutputExists is an RsynError
        return body(Path(directory.tmp))


def _no_shard(run: Run, name: str) -> None:
    if run.shard is not None:
        raise RsynError(f"rsyn balance {name} takes no --shard: it reads whole pass directories (scan takes --shard)")


def _dirs(run: Run, kind: str, one: bool = False) -> list[PassDir]:
    names = [p for item in run.inputs for p in (sorted(glob.glob(item)) if glob.has_magic(item) else [item])]
    if not names or (one and len(names) != 1):
        raise RsynError(f"give {'one' if one else 'the'} `rsyn balance {kind}` director{'y' if one else 'ies'}")
    return [PassDir(name, kind) for name in names]


def run_scan(run: Run) -> None:
    run.declare_reasons(REASONS[:1])
    meta = _run_into(run, "scan", lambda out: scan_pass(run, out))
    run.extra.update({"images": meta["count"], "spilled_records": bool(meta["records"])})


def run_plan(run: Run, opts: BalancePlanOptions) -> None:
    _no_shard(run, "plan")
    window = parse_sim_range(opts.sim_range)
    scans = _dirs(run, "scan")
    meta = _run_into(
        run,
        "plan",
        lambda out: plan_pass(
            run,
            scans,
            out,
            window=window,
            clusters=opts.clusters,
            kmeans_iters=opts.kmeans_iters,
            kmeans_sample=opts.kmeans_sample,
            centroids_path=opts.centroids,
            save_centroids=opts.save_centroids,
        ),
    )
    run.extra.update(stage_summary(meta, None))


def run_assign(run: Run, opts: AssignOptions) -> None:
    _no_shard(run, "assign")
    scan_dir = _dirs(run, "scan", one=True)[0]
    meta = _run_into(run, "assign", lambda out: assign_pass(run, scan_dir, PassDir(opts.plan_dir, "plan"), out))
    run.extra.update({"images": meta["count"], "in_window": meta["in_window"]})


def run_cap(run: Run, opts: CapOptions) -> None:
    _no_shard(run, "cap")
    assigns = _dirs(run, "assign")
    meta = _run_into(
        run, "cap", lambda out: cap_pass(run, assigns, out, per_cluster=opts.per_cluster, target=opts.target)
    )
    run.extra.update(stage_summary(None, meta))
    note_summary(run, run.extra)


def run_filter(run: Run, opts: FilterOptions) -> None:
    _no_shard(run, "filter")
    run.declare_reasons(REASONS[1:])
    assign_dir = _dirs(run, "assign", one=True)[0]
    run.count_in(assign_dir.meta["count"])
    filter_pass(run, assign_dir, PassDir(opts.cap_dir, "cap"))
