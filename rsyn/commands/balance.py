"""`rsyn balance`: the whole run, or one of its passes (`rsyn balance scan|plan|assign|cap|filter`)."""

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from rsyn.cli import app
from rsyn.command import RsynError, Run, rsyn_command

PASSES = ("scan", "plan", "assign", "cap", "filter")
WHOLE = "balance"  # registered names: "balance" (the whole run) and "balance-PASS", so messages and --stats say so


class _WholeOrPass(TyperGroup):
    """`rsyn balance PASS ...` runs a pass; anything else (`rsyn balance x.jsonl.zst ...`) is the whole run."""

    def parse_args(self, ctx, args):
        if not args or args[0] not in PASSES:
            args = [WHOLE, *args]
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx, args):
        name = args[0]
        if name in PASSES:
            return name, self.commands[f"{WHOLE}-{name}"], args[1:]
        return "", self.commands[WHOLE], args[1:]

    def list_commands(self, ctx):
        return [f"{WHOLE}-{name}" for name in PASSES]


balance_app = typer.Typer(
    cls=_WholeOrPass,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(
    balance_app,
    name="balance",
    help="Keep image/syn_text pairs in the similarity window; cap each image cluster. "
    "`rsyn balance INPUT... --per-cluster T` does it all in one process; "
    "`rsyn balance scan|plan|assign|cap|filter` are its passes, for runs split over processes.",
    short_help="Keep image/syn_text pairs in the similarity window; cap each image cluster.",
)

SimRangeOption = Annotated[
    str | None,
    typer.Option(
        "--sim-range",
        metavar="LO HI|auto",
        help="Keep pairs with LO <= cosine(image, syn_text) <= HI (also LO,HI). Default: the paper's 0.51 0.61, "
        "only for EVA02-E-14-plus embeddings; any other model needs a range or 'auto' (the 7.5%..92.5% "
        "quantiles of the observed sims, the 85% share the paper kept; auto:QLO,QHI for others).",
    ),
]
ClustersOption = Annotated[
    int | None,
    typer.Option(
        "--clusters",
        min=1,
        help="k-means clusters of the image embeddings. Default: images in the window / 168 "
        "(the paper: 168M images, 1M clusters).",
    ),
]
PerClusterOption = Annotated[
    int | None,
    typer.Option(
        "--per-cluster",
        min=1,
        metavar="T",
        help="Keep at most T pairs per cluster, all of a smaller one (paper: 20, 35, 180 for 15M, 30M, 100M).",
    ),
]
TargetOption = Annotated[
    int | None,
    typer.Option(
        "--target", min=1, metavar="N", help="Instead of T: the largest T whose total output does not exceed N."
    ),
]
ItersOption = Annotated[int, typer.Option("--kmeans-iters", min=1, help="k-means iterations.")]
SampleOption = Annotated[
    int | None,
    typer.Option(
        "--kmeans-sample",
        min=1,
        help="Train k-means on at most this many embeddings, those with the smallest hash of "
        "(seed, id). Default: 256 per cluster, at most 65,536 in all but at least 8 per "
        "cluster.",
    ),
]
CentroidsOption = Annotated[
    str | None,
    typer.Option("--centroids", metavar="NPY", help="Use these centroids (k x d .npy) instead of k-means."),
]
SaveCentroidsOption = Annotated[
    str | None, typer.Option("--save-centroids", metavar="NPY", help="Write the centroids used to this .npy file.")
]


@rsyn_command(
    balance_app, WHOLE, "The whole balance in one process (the default: `rsyn balance INPUT...`).", hidden=True
)
def balance(
    run: Run,
    sim_range: SimRangeOption = None,
    clusters: ClustersOption = None,
    per_cluster: PerClusterOption = None,
    target: TargetOption = None,
    kmeans_iters: ItersOption = 20,
    kmeans_sample: SampleOption = None,
    centroids: CentroidsOption = None,
    save_centroids: SaveCentroidsOption = None,
    spill_dir: Annotated[
        str | None,
        typer.Option(
            "--spill-dir",
            metavar="DIR",
            help="Where the passes' files go (default: $TMPDIR): 2 bytes per embedding "
            "dimension plus ~34 bytes per image, plus a zstd copy of stdin or pipe "
            "input.",
        ),
    ] = None,
) -> None:
    """Semantic balance sampling (RealSyn step 10), in one process.

    Computes sim = cosine(image emb, syn_emb) and keeps the pairs inside the --sim-range window; clusters their
    image embeddings with faiss k-means (on the GPU with faiss-gpu and a CUDA device) and keeps at most T pairs per
    cluster. Which pairs a full cluster keeps is drawn from a hash of (--seed, record id): the same for any input
    order or split. Survivors gain `sim` and `cluster`; non-image records are dropped (counted as not_image). The
    summary gives the cluster-size distribution before and after (max share, Gini, singletons).

    This is the composition of the passes `rsyn balance scan | plan | assign | cap | filter`, which run as separate
    processes over shards of a corpus too large for one machine (docs/balance_pack.md). It does not take --shard.
    """
    from rsyn.stages.balance import run_balance

    run_balance(
        run,
        sim_range=sim_range,
        clusters=clusters,
        per_cluster=per_cluster,
        target=target,
        kmeans_iters=kmeans_iters,
        kmeans_sample=kmeans_sample,
        centroids_path=centroids,
        save_centroids=save_centroids,
        spill_dir=spill_dir,
    )


def _out_dir(run: Run, name: str):
    """The pass's output directory (-o), built beside its place and renamed there when done."""
    from rsyn.stages.balance import DONE
    from rsyn.stream import AtomicDirectory, OutputExists

    if not run.output or run.output == "-":
        raise RsynError(f"rsyn balance {name}: give the output directory with -o DIR")
    try:
        return AtomicDirectory(run.output, marker=DONE, overwrite=True)
    except OutputExists as exc:
        raise RsynError(str(exc)) from None


def _run_into(run: Run, name: str, body) -> dict:
    directory = _out_dir(run, name)
    try:
        meta = body(Path(directory.tmp))
    except BaseException:
        directory.discard()
        raise
    directory.commit()
    return meta


def _no_shard(run: Run, name: str) -> None:
    if run.shard is not None:
        raise RsynError(f"rsyn balance {name} takes no --shard: it reads whole pass directories (scan takes --shard)")


def _dirs(run: Run, kind: str, one: bool = False):
    import glob

    from rsyn.stages.balance import PassDir

    names = [p for item in run.inputs for p in (sorted(glob.glob(item)) if glob.has_magic(item) else [item])]
    if not names or (one and len(names) != 1):
        raise RsynError(f"give {'one' if one else 'the'} `rsyn balance {kind}` director{'y' if one else 'ies'}")
    return [PassDir(name, kind) for name in names]


@rsyn_command(
    balance_app, "balance-scan", "Pass 1 (per shard): sims, keys, embedding spill and sim histogram -> -o DIR."
)
def scan(run: Run) -> None:
    """Pass 1, per shard: validate this shard's records, compute sim and the sampling keys, spill the embeddings.

    Writes the directory -o DIR (done.json last). Non-image records are dropped (not_image); bad records are
    errors or, with --on-error skip, counted. Give every pass the same --seed.
    """
    from rsyn.stages.balance import REASONS, scan_pass

    run.declare_reasons(REASONS[:1])
    meta = _run_into(run, "scan", lambda out: scan_pass(run, out))
    run.extra.update({"images": meta["count"], "spilled_records": bool(meta["records"])})


@rsyn_command(balance_app, "balance-plan", "Pass 2 (once): the window, the training sample and k-means -> -o DIR.")
def plan(
    run: Run,
    sim_range: SimRangeOption = None,
    clusters: ClustersOption = None,
    kmeans_iters: ItersOption = 20,
    kmeans_sample: SampleOption = None,
    centroids: CentroidsOption = None,
    save_centroids: SaveCentroidsOption = None,
) -> None:
    """Pass 2, once: merge the scans' sim histograms into the window, pick the training sample, train k-means.

    INPUT...: every scan directory of the run. Memory: the training sample (d x 4 bytes per point), not the corpus.
    """
    from rsyn.stages.balance import parse_sim_range, plan_pass, stage_summary

    _no_shard(run, "plan")
    window, run.inputs = parse_sim_range(sim_range, run.inputs)
    scans = _dirs(run, "scan")
    meta = _run_into(
        run,
        "plan",
        lambda out: plan_pass(
            run,
            scans,
            out,
            window=window,
            clusters=clusters,
            kmeans_iters=kmeans_iters,
            kmeans_sample=kmeans_sample,
            centroids_path=centroids,
            save_centroids=save_centroids,
        ),
    )
    run.extra.update(stage_summary(meta, None))


@rsyn_command(
    balance_app, "balance-assign", "Pass 3 (per shard): the nearest centroid of each image in the window -> -o DIR."
)
def assign(
    run: Run,
    plan_dir: Annotated[str, typer.Option("--plan", metavar="DIR", help="The plan directory.")],
) -> None:
    """Pass 3, per shard: label every image of one scan directory (INPUT) that lies in the window."""
    from rsyn.stages.balance import PassDir, assign_pass

    _no_shard(run, "assign")
    scan_dir = _dirs(run, "scan", one=True)[0]
    meta = _run_into(run, "assign", lambda out: assign_pass(run, scan_dir, PassDir(plan_dir, "plan"), out))
    run.extra.update({"images": meta["count"], "in_window": meta["in_window"]})


@rsyn_command(
    balance_app, "balance-cap", "Pass 4 (once): the per-cluster cut-off, from --per-cluster or --target -> -o DIR."
)
def cap(run: Run, per_cluster: PerClusterOption = None, target: TargetOption = None) -> None:
    """Pass 4, once: sum the cluster sizes of all assign directories (INPUT...), fix T, find each full cluster's cut.

    Memory: at most about 3 x 24 bytes per pair kept, plus one chunk.
    """
    from rsyn.stages.balance import cap_pass, note_summary, stage_summary

    _no_shard(run, "cap")
    assigns = _dirs(run, "assign")
    meta = _run_into(run, "cap", lambda out: cap_pass(run, assigns, out, per_cluster=per_cluster, target=target))
    run.extra.update(stage_summary(None, meta))
    note_summary(run, run.extra)


@rsyn_command(balance_app, "balance-filter", "Pass 5 (per shard): write the survivors with sim and cluster -> -o FILE.")
def filter_(
    run: Run,
    cap_dir: Annotated[str, typer.Option("--cap", metavar="DIR", help="The cap directory.")],
) -> None:
    """Pass 5, per shard: the records of one assign directory's scan (INPUT) that survive, in input order.

    Output: a record stream (-o FILE, atomic); drops go to --rejects. The input files the scan read must not have
    changed (stdin and pipes were copied into the scan directory).
    """
    from rsyn.stages.balance import REASONS, PassDir, filter_pass

    _no_shard(run, "filter")
    run.declare_reasons(REASONS[1:])
    assign_dir = _dirs(run, "assign", one=True)[0]
    run.count_in(assign_dir.meta["count"])
    filter_pass(run, assign_dir, PassDir(cap_dir, "cap"))
