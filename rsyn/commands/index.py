from enum import Enum
from typing import Annotated, Optional

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    pq = "pq"


@rsyn_command(app, "index", "Cluster sentence embeddings (k-means) and build the retrieval index.")
def index(
    run: Run,
    clusters: Annotated[Optional[int], typer.Option(
        "--clusters", min=1, show_default="sentences / 420",
        help="Number of text semantic clusters (k-means centroids). The default keeps the paper's cluster "
             "size: 0.84B sentences in 2M clusters is about 420 sentences per cluster.")] = None,
    max_memory: Annotated[str, typer.Option(
        "--max-memory", metavar="SIZE",
        help="Memory budget for the index (e.g. 16G). Inverted lists of full float32 vectors when they fit, "
             "else product-quantized lists (largest code that fits) re-ranked exactly from float16 vectors "
             "on disk. auto = half the physical memory.")] = "auto",
    index_type: Annotated[IndexType, typer.Option(
        "--index-type", help="auto (chosen by --max-memory), flat or pq.")] = IndexType.auto,
    pq_bytes: Annotated[Optional[int], typer.Option(
        "--pq-bytes", min=1, help="PQ code size in bytes per vector (must divide the dimension); implies pq.")] = None,
    points_per_cluster: Annotated[int, typer.Option(
        "--points-per-cluster", min=1,
        help="k-means trains on a seeded random sample of this many sentences per cluster "
             "(faiss advises at least 39).")] = 64,
    niter: Annotated[int, typer.Option("--niter", min=1, help="k-means iterations.")] = 20,
) -> None:
    """Read sentence records with embeddings (from `rsyn embed`) and write an index directory (-o DIR).

    The directory holds the k-means centroids (centroids.npy: the text semantic clusters), a faiss IVF index
    whose coarse quantizer is exactly those centroids (ivf.faiss), the sentences by faiss row
    (sentences.sqlite, table sentences(row, id, text, doc)), and meta.json, written last. The directory
    appears atomically; an existing index at -o is replaced. Records that are not sentences are ignored
    and counted. The stream is read once; vectors are spilled to disk, not held in memory.
    """
    from rsyn.stages.index import run_index

    run_index(run, clusters=clusters, max_memory=max_memory, index_type="pq" if pq_bytes else index_type.value,
              pq_bytes=pq_bytes, points_per_cluster=points_per_cluster, niter=niter)
