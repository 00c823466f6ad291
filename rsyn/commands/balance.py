"""`rsyn balance`: the whole run, or one of its passes (`rsyn balance scan|plan|assign|cap|filter`)."""

import typer
from typer.core import TyperGroup

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.balance import AssignOptions, BalanceOptions, BalancePlanOptions, CapOptions, FilterOptions

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


@rsyn_command(
    balance_app,
    WHOLE,
    "The whole balance in one process (the default: `rsyn balance INPUT...`).",
    options=BalanceOptions,
    hidden=True,
)
def balance(run: Run, opts: BalanceOptions) -> None:
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

    run_balance(run, opts)


@rsyn_command(
    balance_app, "balance-scan", "Pass 1 (per shard): sims, keys, embedding spill and sim histogram -> -o DIR."
)
def scan(run: Run) -> None:
    """Pass 1, per shard: validate this shard's records, compute sim and the sampling keys, spill the embeddings.

    Writes the directory -o DIR (done.json last). Non-image records are dropped (not_image); bad records are
    errors or, with --on-error skip, counted. Give every pass the same --seed.
    """
    from rsyn.stages.balance_passes import run_scan

    run_scan(run)


@rsyn_command(
    balance_app,
    "balance-plan",
    "Pass 2 (once): the window, the training sample and k-means -> -o DIR.",
    options=BalancePlanOptions,
)
def plan(run: Run, opts: BalancePlanOptions) -> None:
    """Pass 2, once: merge the scans' sim histograms into the window, pick the training sample, train k-means.

    INPUT...: every scan directory of the run. Memory: the training sample (d x 4 bytes per point), not the corpus.
    """
    from rsyn.stages.balance_passes import run_plan

    run_plan(run, opts)


@rsyn_command(
    balance_app,
    "balance-assign",
    "Pass 3 (per shard): the nearest centroid of each image in the window -> -o DIR.",
    options=AssignOptions,
)
def assign(run: Run, opts: AssignOptions) -> None:
    """Pass 3, per shard: label every image of one scan directory (INPUT) that lies in the window."""
    from rsyn.stages.balance_passes import run_assign

    run_assign(run, opts)


@rsyn_command(
    balance_app,
    "balance-cap",
    "Pass 4 (once): the per-cluster cut-off, from --per-cluster or --target -> -o DIR.",
    options=CapOptions,
)
def cap(run: Run, opts: CapOptions) -> None:
    """Pass 4, once: sum the cluster sizes of all assign directories (INPUT...), fix T, find each full cluster's cut.

    Memory: at most about 3 x 24 bytes per pair kept, plus one chunk.
    """
    from rsyn.stages.balance_passes import run_cap

    run_cap(run, opts)


@rsyn_command(
    balance_app,
    "balance-filter",
    "Pass 5 (per shard): write the survivors with sim and cluster -> -o FILE.",
    options=FilterOptions,
)
def filter_(run: Run, opts: FilterOptions) -> None:
    """Pass 5, per shard: the records of one assign directory's scan (INPUT) that survive, in input order.

    Output: a record stream (-o FILE, atomic); drops go to --rejects. The input files the scan read must not have
    changed (stdin and pipes were copied into the scan directory).
    """
    from rsyn.stages.balance_passes import run_filter

    run_filter(run, opts)
