"""Options of `rsyn retrieve` (rsyn.stages.retrieve), declared once."""

from dataclasses import dataclass
from typing import Annotated

from rsyn.options import opt

# Measured by benchmarks/retrieve.py (docs/retrieval.md): the smallest of 1, 4, 8, 16, 64 reaching
# recall@3 >= 0.95 against exact search on clustered data at the paper's cluster size
# (1M sentences in 2,381 clusters, 10k queries: recall@3 0.952 at 12x the brute-force speed; nprobe 8: 0.878).
DEFAULT_NPROBE = 16


@dataclass(kw_only=True)
class RetrieveOptions:
    index_dir: Annotated[
        str, opt("--index", metavar="DIR", help="Index directory written by rsyn index.", show_default=False)
    ]
    k: Annotated[int, opt("-k", "--top-k", min=1, help="Texts kept per image (the paper keeps 3).")] = 3
    nprobe: Annotated[
        int,
        opt(
            "--nprobe",
            min=1,
            help=f"Clusters visited per image: the nearest centroids first, then the sentences inside them. "
            f"1 is the paper's choice (fastest, misses neighbours across cluster borders); the default "
            f"{DEFAULT_NPROBE} is the smallest value that reached recall@3 >= 0.95 against exact search in "
            f"benchmarks/retrieve.py (1M sentences: recall@3 0.952 at 12x the brute-force speed).",
        ),
    ] = DEFAULT_NPROBE
    rerank: Annotated[
        int,
        opt(
            "--rerank",
            min=1,
            help="ivf_pq indexes only: PQ candidates per image re-scored exactly from the float16 vectors "
            "(64-byte codes, 512-d: 50 gave recall@3 0.92, 200 gave 0.996 in benchmarks/retrieve.py).",
        ),
    ] = 200
    distinct: Annotated[
        float | None,
        opt(
            "--distinct",
            metavar="COSINE",
            min=-1.0,
            max=1.0,
            help="Skip a candidate whose cosine to a text already taken is >= COSINE (e.g. 0.95), so the k texts "
            "differ. Off by default.",
        ),
    ] = None
    verify: Annotated[
        bool,
        opt(
            "--verify/--no-verify",
            help="Check every index file against its checksum in meta.json before searching (one sequential read "
            "of the index, which also loads it into the page cache that concurrent retrieves share).",
        ),
    ] = True
