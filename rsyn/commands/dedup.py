"""`rsyn dedup` and its passes (`rsyn dedup-scan`, ... `rsyn dedup-filter`); see docs/dedup.md."""

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.dedup import DedupOptions, DedupScanOptions, PartitionOptions, SettleOptions, WorkOptions


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
# They read and write only the work directory: no input stream, no -o, no --on-error.
_PASS = ("stats", "quiet")
_PASS_ON_DEVICE = ("stats", "device", "quiet")


@rsyn_command(
    app,
    "dedup-exact",
    "dedup pass (per key partition): link records sharing an exact key.",
    options=PartitionOptions,
    common=_PASS,
)
def dedup_exact(run: Run, opts: PartitionOptions) -> None:
    """Exact-key edges of one key partition (--part M/P), after every dedup-scan shard is done."""
    from rsyn.stages.dedup import Work, group_pass

    group_pass(run, Work(opts.work), "exact", opts.part)


@rsyn_command(
    app,
    "dedup-near",
    "dedup pass (per bucket partition): verified MinHash LSH candidate pairs.",
    options=PartitionOptions,
    common=_PASS,
)
def dedup_near(run: Run, opts: PartitionOptions) -> None:
    """Near-duplicate edges of one LSH bucket partition (--part M/P), after `dedup-settle --mode exact`."""
    from rsyn.stages.dedup import Work, group_pass

    group_pass(run, Work(opts.work), "near", opts.part)


@rsyn_command(
    app, "dedup-settle", "dedup pass (once): groups of the exact or near edges.", options=SettleOptions, common=_PASS
)
def dedup_settle(run: Run, opts: SettleOptions) -> None:
    """Connected components of every partition's exact (or near) edges; the first record of each group stays."""
    from rsyn.stages.dedup import Work, settle_pass

    settle_pass(run, Work(opts.work), opts.mode)


@rsyn_command(
    app,
    "dedup-train",
    "dedup pass (once): k-means centroids on a sample of the survivors.",
    options=WorkOptions,
    common=_PASS_ON_DEVICE,
)
def dedup_train(run: Run, opts: WorkOptions) -> None:
    """Semantic dedup: k-means per kind on a sample of the records exact and near dedup kept."""
    from rsyn.stages.dedup import Work, train_pass

    train_pass(run, Work(opts.work))


@rsyn_command(
    app,
    "dedup-assign",
    "dedup pass (per shard): nearest clusters of each record.",
    options=WorkOptions,
    common=("shard", *_PASS_ON_DEVICE),
)
def dedup_assign(run: Run, opts: WorkOptions) -> None:
    """Semantic dedup: the --probes nearest k-means clusters of every surviving record of scan shard K
    (--shard K/N, as scanned)."""
    from rsyn.stages.dedup import Work, assign_pass

    assign_pass(run, Work(opts.work), run.shard or (0, 1))


@rsyn_command(
    app,
    "dedup-pairs",
    "dedup pass (per cluster partition): pairs at the cosine threshold.",
    options=PartitionOptions,
    common=_PASS_ON_DEVICE,
)
def dedup_pairs(run: Run, opts: PartitionOptions) -> None:
    """Semantic dedup: within the clusters of partition M/P, the pairs at or above the threshold."""
    from rsyn.stages.dedup import Work, group_pass

    group_pass(run, Work(opts.work), "semantic", opts.part)


@rsyn_command(
    app, "dedup-select", "dedup pass (once): keep-first over the semantic pairs.", options=WorkOptions, common=_PASS
)
def dedup_select(run: Run, opts: WorkOptions) -> None:
    """Semantic dedup: which records stay (the first in input order of every pair at the threshold wins)."""
    from rsyn.stages.dedup import Work, settle_pass

    settle_pass(run, Work(opts.work), "semantic")
