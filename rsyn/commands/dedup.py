"""`rsyn dedup` and its passes (`rsyn dedup-scan`, ... `rsyn dedup-filter`); see docs/dedup.md."""

from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, parse_shard, rsyn_command, run_command
from rsyn.options.dedup import WORK_HELP, DedupOptions, DedupScanOptions, WorkOptions


@rsyn_command(app, "dedup", "Remove exact, near (MinHash LSH) and semantic duplicates.", options=DedupOptions)
def dedup(run: Run, opts: DedupOptions) -> None:
    """Remove duplicate sentences and images; each kind is compared only with its own kind.

    The first record of a group (in input order) is kept; the others are dropped
    with the reason and the id of the kept record (`dup_of`, in --rejects).
    Kept records carry the highest similarity found (`scores.dup_jaccard`,
    `scores.dup_sim`) so a threshold can be re-applied later. For corpora that
    do not fit one machine, run the same work as passes (rsyn dedup-scan ...
    rsyn dedup-filter). See docs/dedup.md.
    """
    from rsyn.stages.dedup import run_dedup

    run_dedup(run, opts)


@rsyn_command(
    app,
    "dedup-scan",
    "dedup pass 1 (per shard): validate records, write keys, shingles, embeddings.",
    options=DedupScanOptions,
)
def dedup_scan(run: Run, opts: DedupScanOptions) -> None:
    """Pass 1 of dedup (per input shard, --shard K/N): validate the records and write what every
    mode needs to WORK/scan/part-K-of-N (records, order keys, exact keys, shingles and LSH bands, embeddings).

    Bad input is handled here (--on-error, --rejects). The dedup options given here are stored with the scan and used
    by every later pass. See docs/dedup.md for the order of the passes.
    """
    from rsyn.stages.dedup import run_scan

    run_scan(run, opts)


@rsyn_command(
    app,
    "dedup-filter",
    "dedup last pass (per shard): write survivors with scores, drop duplicates.",
    options=WorkOptions,
)
def dedup_filter(run: Run, opts: WorkOptions) -> None:
    """Last pass of dedup (per scan shard, --shard K/N, as scanned): re-read the shard's records from WORK and
    write the survivors (with `scores.dup_jaccard`, `scores.dup_sim`) to -o; duplicates go to --rejects with
    their reason, `dup_of` and `similarity`. Takes no INPUT: the records come from the scan."""
    from rsyn.stages.dedup import run_filter

    run_filter(run, opts)


# --------------------------------------------------------------------------- the passes between scan and filter

_Work = Annotated[str, typer.Option("--work", metavar="DIR", help=WORK_HELP)]
_Part = Annotated[
    str | None,
    typer.Option(
        "--part", metavar="M/P", help="This pass's partition M of P (default 0/1); every M from 0 to P-1 must run."
    ),
]
_Shard = Annotated[str | None, typer.Option("--shard", metavar="K/N", help="The scan shard K of N.")]
_Stats = Annotated[str | None, typer.Option("--stats", metavar="PATH", help="Write the pass's summary as JSON.")]
_Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
_Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")]


def _run_pass(name: str, body, stats, device="auto", quiet=False) -> None:
    run_command(name, body, inputs=None, output=None, shard=None, stats=stats, device=device, quiet=quiet)


def _slice(option: str, value: str | None) -> tuple[int, int]:
    from rsyn.command import fail

    try:
        return parse_shard(value) or (0, 1)
    except typer.BadParameter as exc:
        fail(f"{option} {exc}")


@app.command("dedup-exact", short_help="dedup pass (per key partition): link records sharing an exact key.")
def dedup_exact(work: _Work, part: _Part = None, stats: _Stats = None, quiet: _Quiet = False) -> None:
    """Exact-key edges of one key partition (--part M/P), after every dedup-scan shard is done."""
    from rsyn.stages.dedup import Work, group_pass

    partition = _slice("--part", part)
    _run_pass("dedup-exact", lambda run: group_pass(run, Work(work), "exact", partition), stats, quiet=quiet)


@app.command("dedup-near", short_help="dedup pass (per bucket partition): verified MinHash LSH candidate pairs.")
def dedup_near(work: _Work, part: _Part = None, stats: _Stats = None, quiet: _Quiet = False) -> None:
    """Near-duplicate edges of one LSH bucket partition (--part M/P), after `dedup-settle --mode exact`."""
    from rsyn.stages.dedup import Work, group_pass

    partition = _slice("--part", part)
    _run_pass("dedup-near", lambda run: group_pass(run, Work(work), "near", partition), stats, quiet=quiet)


@app.command("dedup-settle", short_help="dedup pass (once): groups of the exact or near edges.")
def dedup_settle(
    work: _Work,
    mode: Annotated[str, typer.Option("--mode", help="exact or near.")],
    stats: _Stats = None,
    quiet: _Quiet = False,
) -> None:
    """Connected components of every partition's exact (or near) edges; the first record of each group stays."""
    from rsyn.command import fail
    from rsyn.stages.dedup import Work, settle_pass

    if mode not in ("exact", "near"):
        fail(f"--mode {mode!r}: expected exact or near (semantic settles with dedup-select)")
    _run_pass("dedup-settle", lambda run: settle_pass(run, Work(work), mode), stats, quiet=quiet)


@app.command("dedup-train", short_help="dedup pass (once): k-means centroids on a sample of the survivors.")
def dedup_train(work: _Work, stats: _Stats = None, device: _Device = "auto", quiet: _Quiet = False) -> None:
    """Semantic dedup: k-means per kind on a sample of the records exact and near dedup kept."""
    from rsyn.stages.dedup import Work, train_pass

    _run_pass("dedup-train", lambda run: train_pass(run, Work(work)), stats, device, quiet)


@app.command("dedup-assign", short_help="dedup pass (per shard): nearest clusters of each record.")
def dedup_assign(
    work: _Work, shard: _Shard = None, stats: _Stats = None, device: _Device = "auto", quiet: _Quiet = False
) -> None:
    """Semantic dedup: the --probes nearest k-means clusters of every surviving record of scan shard K."""
    from rsyn.stages.dedup import Work, assign_pass

    k = _slice("--shard", shard)
    _run_pass("dedup-assign", lambda run: assign_pass(run, Work(work), k), stats, device, quiet)


@app.command("dedup-pairs", short_help="dedup pass (per cluster partition): pairs at the cosine threshold.")
def dedup_pairs(
    work: _Work, part: _Part = None, stats: _Stats = None, device: _Device = "auto", quiet: _Quiet = False
) -> None:
    """Semantic dedup: within the clusters of partition M/P, the pairs at or above the threshold."""
    from rsyn.stages.dedup import Work, group_pass

    partition = _slice("--part", part)
    _run_pass("dedup-pairs", lambda run: group_pass(run, Work(work), "semantic", partition), stats, device, quiet)


@app.command("dedup-select", short_help="dedup pass (once): keep-first over the semantic pairs.")
def dedup_select(work: _Work, stats: _Stats = None, quiet: _Quiet = False) -> None:
    """Semantic dedup: which records stay (the first in input order of every pair at the threshold wins)."""
    from rsyn.stages.dedup import Work, settle_pass

    _run_pass("dedup-select", lambda run: settle_pass(run, Work(work), "semantic"), stats, quiet=quiet)
