"""Options of `rsyn index` and its passes (rsyn.stages.index), declared once."""

from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from rsyn.options import k_of_n, opt


class IndexType(str, Enum):
    auto = "auto"
    flat = "flat"
    pq = "pq"
    sq8 = "sq8"


@dataclass
class IndexTrainOptions:
    """The clustering and the index layout: `rsyn index` and `rsyn index train`."""

    clusters: Annotated[
        int | None,
        opt(
            "--clusters",
            min=1,
            show_default="sentences / 420",
            help="Number of text semantic clusters (k-means centroids). The default keeps the paper's cluster "
            "size: 0.84B sentences in 2M clusters is about 420 sentences per cluster. From 4096 clusters on, "
            "k-means trains in two levels (sqrt(clusters) coarse clusters, then each one's share independently).",
        ),
    ] = None
    max_memory: Annotated[
        str,
        opt(
            "--max-memory",
            metavar="SIZE",
            help="Memory budget for the index (e.g. 16G). Inverted lists of full float32 vectors when they fit "
            "and take at most 1 GiB; else 8-bit scalar codes, else product-quantized codes (the largest that fits), "
            "re-ranked exactly from float16 vectors on disk. auto = half of this machine's RAM, so the choice depends on the machine: it is printed and "
            "recorded in meta.json (layout); give a size to make it the same everywhere.",
        ),
    ] = "auto"
    index_type: Annotated[
        IndexType,
        opt(
            "--index-type",
            help="auto (chosen by --max-memory), flat, pq, or sq8 (8-bit scalar codes, re-ranked exactly).",
        ),
    ] = IndexType.auto
    pq_bytes: Annotated[
        int | None,
        opt("--pq-bytes", min=1, help="PQ code size in bytes per vector (must divide the dimension); implies pq."),
    ] = None
    points_per_cluster: Annotated[
        int,
        opt(
            "--kmeans-points-per-cluster",
            min=1,
            aliases=("--points-per-cluster",),
            help="k-means trains on a seeded random sample of this many sentences per cluster (faiss advises at "
            "least 39).",
        ),
    ] = 64
    niter: Annotated[int, opt("--kmeans-iters", min=1, aliases=("--niter",), help="k-means iterations.")] = 20

    @property
    def layout(self) -> str:
        """The index type asked for: --pq-bytes implies pq."""
        return "pq" if self.pq_bytes else IndexType(self.index_type).value


_TRAINED = opt("--trained", metavar="DIR", help="The directory written by rsyn index train.", show_default=False)


@dataclass(kw_only=True)
class IndexAddOptions:
    trained: Annotated[str, _TRAINED]
    part: Annotated[
        tuple[int, int] | None,
        opt(
            "--part",
            metavar="K/N",
            parse=k_of_n("--part"),
            help="Add the K-th of N contiguous ranges of the parts given (all without it).",
        ),
    ] = None


@dataclass(kw_only=True)
class IndexMergeOptions:
    trained: Annotated[str, _TRAINED]
    added: Annotated[
        list[str],
        opt(
            "--added",
            metavar="DIR",
            help="An add directory; repeat it for every --part K/N, in order.",
            show_default=False,
        ),
    ]
    on_disk: Annotated[
        bool,
        opt(
            "--on-disk",
            help="Write the inverted lists to lists.ivfdata with faiss's on-disk lists, one list in "
            "memory at a time, for indexes larger than RAM (otherwise merged in RAM).",
        ),
    ] = False
