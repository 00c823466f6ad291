import typer
from typer.core import TyperGroup

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.index import IndexAddOptions, IndexMergeOptions, IndexTrainOptions


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


@rsyn_command(
    index_app,
    "build",
    "Build the whole index in one process (what plain `rsyn index` runs).",
    options=IndexTrainOptions,
)
def build(run: Run, opts: IndexTrainOptions) -> None:
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

    run_index(run, opts)


@rsyn_command(index_app, "collect", "Pass 1, per shard: sentences and their vectors into a part directory.")
def collect(run: Run) -> None:
    """Read this --shard K/N of the sentence stream and write a part directory (-o DIR): the sentences
    (sentences.sqlite), their float16 vectors (vectors.f16), their input places (keys.i64), and part.json
    last. Give all parts, in shard order, to train, add and merge."""
    from rsyn.stages.index import run_collect

    run_collect(run)


@rsyn_command(
    index_app,
    "train",
    "Pass 2, once: k-means on a sample of the parts, the trained empty index.",
    options=IndexTrainOptions,
)
def train(run: Run, opts: IndexTrainOptions) -> None:
    """Inputs: every collect part directory, in order. Writes a train directory (-o DIR): centroids.npy,
    trained.faiss (the empty IVF index, its PQ trained), train.json last. Memory: the sample
    (clusters x points per cluster x dim x 4 bytes), not the corpus."""
    from rsyn.stages.index import run_train

    run_train(run, opts)


@rsyn_command(
    index_app,
    "add",
    "Pass 3, per part: add the vectors of a range of parts to the trained index.",
    options=IndexAddOptions,
)
def add(run: Run, opts: IndexAddOptions) -> None:
    """Inputs: every collect part directory, in order (for the global rows). Writes an add directory (-o DIR):
    lists.faiss (those parts' vectors under their global rows) and add.json last."""
    from rsyn.stages.index import run_add

    run_add(run, opts)


@rsyn_command(
    index_app,
    "merge",
    "Pass 4, once: the index directory from the parts, train and add outputs.",
    options=IndexMergeOptions,
)
def merge(run: Run, opts: IndexMergeOptions) -> None:
    """Inputs: every collect part directory, in order. Writes the index directory (-o DIR), the same one
    `rsyn index` writes, with meta.json last."""
    from rsyn.stages.index import run_merge

    run_merge(run, opts)
