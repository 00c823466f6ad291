from enum import Enum
from typing import Annotated

import typer
from typer.core import TyperGroup

from rsyn.cli import app
from rsyn.command import Run, parse_shard, rsyn_command


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    pq = "pq"
    sq8 = "sq8"


class _WholeOrPasses(TyperGroup):
    """`rsyn index INPUT... -o DIR` builds the whole index; `rsyn index collect|train|add|merge ...` runs one pass.

    Anything that does not start with a pass name goes to the whole build, so the one-process command
    keeps its old form (inputs and options right after `index`).
    """

    def parse_args(self, ctx, args):
        if not args or args[0] not in self.commands:
            args = ["build", *args]
        return super().parse_args(ctx, args)


index_app = typer.Typer(
    cls=_WholeOrPasses, add_completion=False, context_settings={"help_option_names": ["-h", "--help"]}
)
app.add_typer(
    index_app,
    name="index",
    help="Cluster sentence embeddings (k-means) and build the retrieval index (or run one of its passes).",
)

Clusters = Annotated[
    int | None,
    typer.Option(
        "--clusters",
        min=1,
        show_default="sentences / 420",
        help="Number of text semantic clusters (k-means centroids). The default keeps the paper's cluster "
        "size: 0.84B sentences in 2M clusters is about 420 sentences per cluster. From 4096 clusters on, "
        "k-means trains in two levels (sqrt(clusters) coarse clusters, then each one's share independently).",
    ),
]
MaxMemory = Annotated[
    str,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory budget for the index (e.g. 16G). Inverted lists of full float32 vectors when they fit "
        "and take at most 1 GiB; else 8-bit scalar codes, else product-quantized codes (the largest that fits), "
        "re-ranked exactly from float16 vectors on disk. auto = half of this machine's RAM, so the choice depends on the machine: it is printed and "
        "recorded in meta.json (layout); give a size to make it the same everywhere.",
    ),
]
IndexTypeOption = Annotated[
    IndexType,
    typer.Option(
        "--index-type", help="auto (chosen by --max-memory), flat, pq, or sq8 (8-bit scalar codes, re-ranked exactly)."
    ),
]
PqBytes = Annotated[
    int | None,
    typer.Option("--pq-bytes", min=1, help="PQ code size in bytes per vector (must divide the dimension); implies pq."),
]
PointsPerCluster = Annotated[
    int,
    typer.Option(
        "--points-per-cluster",
        min=1,
        help="k-means trains on a seeded random sample of this many sentences per cluster (faiss advises at least 39).",
    ),
]
Niter = Annotated[int, typer.Option("--niter", min=1, help="k-means iterations.")]
Trained = Annotated[
    str, typer.Option("--trained", metavar="DIR", help="The directory written by rsyn index train.", show_default=False)
]


@rsyn_command(index_app, "build", "Build the whole index in one process (what plain `rsyn index` runs).")
def build(
    run: Run,
    clusters: Clusters = None,
    max_memory: MaxMemory = "auto",
    index_type: IndexTypeOption = IndexType.auto,
    pq_bytes: PqBytes = None,
    points_per_cluster: PointsPerCluster = 64,
    niter: Niter = 20,
) -> None:
    """Read sentence records with embeddings (from `rsyn embed`) and write an index directory (-o DIR).

    The directory holds the k-means centroids (centroids.npy: the text semantic clusters), a faiss IVF index
    whose coarse quantizer is exactly those centroids (ivf.faiss), the sentences by faiss row
    (sentences.sqlite, table sentences(row, id, text, doc)), and meta.json, written last, with every file's
    checksum. The directory appears atomically; an existing index at -o is replaced. Records that are not
    sentences are ignored and counted. The stream is read once; vectors are spilled to disk.

    This runs, in one process, the passes that split the work over many: `rsyn index collect` (per
    --shard K/N of the stream), `rsyn index train` (k-means on a sample), `rsyn index add` (per --part K/N)
    and `rsyn index merge`; see `rsyn index PASS --help`. It takes no --shard itself.
    """
    from rsyn.stages.index import run_index

    run_index(
        run,
        clusters=clusters,
        max_memory=max_memory,
        index_type="pq" if pq_bytes else index_type.value,
        pq_bytes=pq_bytes,
        points_per_cluster=points_per_cluster,
        niter=niter,
    )


@rsyn_command(index_app, "collect", "Pass 1, per shard: sentences and their vectors into a part directory.")
def collect(run: Run) -> None:
    """Read this --shard K/N of the sentence stream and write a part directory (-o DIR): the sentences
    (sentences.sqlite), their float16 vectors (vectors.f16), their input places (keys.i64), and part.json
    last. Give all parts, in shard order, to train, add and merge."""
    from rsyn.stages.index import run_collect

    run_collect(run)


@rsyn_command(index_app, "train", "Pass 2, once: k-means on a sample of the parts, the trained empty index.")
def train(
    run: Run,
    clusters: Clusters = None,
    max_memory: MaxMemory = "auto",
    index_type: IndexTypeOption = IndexType.auto,
    pq_bytes: PqBytes = None,
    points_per_cluster: PointsPerCluster = 64,
    niter: Niter = 20,
) -> None:
    """Inputs: every collect part directory, in order. Writes a train directory (-o DIR): centroids.npy,
    trained.faiss (the empty IVF index, its PQ trained), train.json last. Memory: the sample
    (clusters x points per cluster x dim x 4 bytes), not the corpus."""
    from rsyn.stages.index import run_train

    run_train(
        run,
        clusters=clusters,
        max_memory=max_memory,
        index_type="pq" if pq_bytes else index_type.value,
        pq_bytes=pq_bytes,
        points_per_cluster=points_per_cluster,
        niter=niter,
    )


def _part(value: str | None):
    from rsyn.command import fail

    try:
        return parse_shard(value)
    except typer.BadParameter as exc:
        fail(f"--part {exc}")


@rsyn_command(index_app, "add", "Pass 3, per part: add the vectors of a range of parts to the trained index.")
def add(
    run: Run,
    trained: Trained,
    part: Annotated[
        str | None,
        typer.Option(
            "--part", metavar="K/N", help="Add the K-th of N contiguous ranges of the parts given (all without it)."
        ),
    ] = None,
) -> None:
    """Inputs: every collect part directory, in order (for the global rows). Writes an add directory (-o DIR):
    lists.faiss (those parts' vectors under their global rows) and add.json last."""
    from rsyn.stages.index import run_add

    run_add(run, trained=trained, part=_part(part))


@rsyn_command(index_app, "merge", "Pass 4, once: the index directory from the parts, train and add outputs.")
def merge(
    run: Run,
    trained: Trained,
    added: Annotated[
        list[str],
        typer.Option(
            "--added",
            metavar="DIR",
            help="An add directory; repeat it for every --part K/N, in order.",
            show_default=False,
        ),
    ],
    on_disk: Annotated[
        bool,
        typer.Option(
            "--on-disk",
            help="Write the inverted lists to lists.ivfdata with faiss's on-disk lists, one list in "
            "memory at a time, for indexes larger than RAM (otherwise merged in RAM).",
        ),
    ] = False,
) -> None:
    """Inputs: every collect part directory, in order. Writes the index directory (-o DIR), the same one
    `rsyn index` writes, with meta.json last."""
    from rsyn.stages.index import run_merge

    run_merge(run, trained=trained, added=added, on_disk=on_disk)
