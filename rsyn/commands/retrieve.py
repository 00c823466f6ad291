from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command

# The smallest nprobe that reached recall@3 >= 0.95 against exact search in benchmarks/retrieve.py
# (the measurements are in docs/retrieval.md).
DEFAULT_NPROBE = 16


@rsyn_command(app, "retrieve", "Add the top-k realistic texts to each image by hierarchical retrieval.")
def retrieve(
    run: Run,
    index_dir: Annotated[
        str, typer.Option("--index", metavar="DIR", help="Index directory written by rsyn index.", show_default=False)
    ],
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Texts kept per image (the paper keeps 3).")] = 3,
    nprobe: Annotated[
        int,
        typer.Option(
            "--nprobe",
            min=1,
            help=f"Clusters visited per image: the nearest centroids first, then the sentences inside them. "
            f"1 is the paper's choice (fastest, misses neighbours across cluster borders); the default "
            f"{DEFAULT_NPROBE} is the smallest value that reached recall@3 >= 0.95 against exact search in "
            f"benchmarks/retrieve.py (docs/retrieval.md).",
        ),
    ] = DEFAULT_NPROBE,
    rerank: Annotated[
        int | None,
        typer.Option(
            "--rerank",
            min=1,
            show_default="200 for ivf_pq, 16 for ivf_sq8",
            help="ivf_pq and ivf_sq8 indexes: candidates per image re-scored exactly from the float16 vectors "
            "(a true neighbour outside them is missed; docs/retrieval.md has the measured recall).",
        ),
    ] = None,
    distinct: Annotated[
        float | None,
        typer.Option(
            "--distinct",
            metavar="COSINE",
            min=-1.0,
            max=1.0,
            help="Skip a candidate whose cosine to a text already taken is >= COSINE (e.g. 0.95), so the k texts "
            "differ. Off by default.",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check every index file against its checksum in meta.json before searching (one sequential read "
            "of the index, which also loads it into the page cache that concurrent retrieves share).",
        ),
    ] = True,
) -> None:
    """Read image records with embeddings and add `texts`: the top-k sentences of the index as
    {id, text, score} (score = cosine), best first. Other records pass through unchanged; every field is kept.

    Retrieval is hierarchical: the nearest text semantic clusters (k-means centroids) first, then the
    nearest sentences inside them. Image embeddings must come from the model that embedded the index's
    sentences; a different model is refused.
    """
    from rsyn.stages.retrieve import run_retrieve

    run_retrieve(run, index_dir=index_dir, k=k, nprobe=nprobe, rerank=rerank, distinct=distinct, verify=verify)
