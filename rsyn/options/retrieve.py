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
        int | None,
        opt(
            "--rerank",
            min=1,
            show_default="200 for ivf_pq, 16 for ivf_sq8",
            help="ivf_pq and ivf_sq8 indexes: candidates per image re-scored exactly from the float16 vectors "
            "(a true neighbour outside them is missed; docs/retrieval.md has the measured recall).",
        ),
    ] = None
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
