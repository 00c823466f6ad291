"""Options of `rsyn retrieve` (rsyn.stages.retrieve), declared once."""

from dataclasses import dataclass
from typing import Annotated

from rsyn.options import opt

# The smallest nprobe that reached recall@3 >= 0.95 against exact search at the paper's cluster size in
# benchmarks/retrieve.py; the figures, and the command that reproduces them, are in docs/retrieval.md.
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
            f"benchmarks/retrieve.py (docs/retrieval.md).",
        ),
    ] = DEFAULT_NPROBE
    rerank: Annotated[
        int,
        opt(
            "--rerank",
            min=1,
            help="ivf_pq indexes only: PQ candidates per image re-scored exactly from the float16 vectors; "
            "more candidates, fewer true neighbours lost to the PQ approximation (docs/retrieval.md).",
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
