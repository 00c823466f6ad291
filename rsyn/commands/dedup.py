from typing import Annotated, Optional

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command


@rsyn_command(app, "dedup", "Remove exact, near (MinHash LSH) and semantic duplicates.")
def dedup(
    run: Run,
    mode: Annotated[str, typer.Option(
        "--mode", help="Comma list of: exact (normalised text, image URL or content hash), near (sentences: "
        "MinHash LSH + exact Jaccard), perceptual (embeddings at --perceptual-threshold), semantic (embeddings "
        "at --semantic-threshold; needs `emb`).")] = "exact,near",
    near_threshold: Annotated[float, typer.Option(
        "--near-threshold", min=0.0, max=1.0, help="near: word n-gram Jaccard at or above which two sentences "
        "are duplicates.")] = 0.8,
    ngram: Annotated[int, typer.Option("--ngram", min=1, max=8, help="near: words per shingle (shorter "
                                       "sentences are one shingle).")] = 2,
    num_perm: Annotated[int, typer.Option("--num-perm", min=16, max=1024, help="near: MinHash permutations.")] = 128,
    perceptual_threshold: Annotated[float, typer.Option(
        "--perceptual-threshold", min=-1.0, max=1.0, help="Cosine at or above which two embeddings are "
        "perceptual (near-identical) duplicates.")] = 0.95,
    semantic_threshold: Annotated[float, typer.Option(
        "--semantic-threshold", min=-1.0, max=1.0, help="Cosine at or above which two embeddings are semantic "
        "duplicates (used by --mode semantic).")] = 0.90,
    cluster_size: Annotated[int, typer.Option(
        "--cluster-size", min=1, help="semantic: mean records per k-means cluster (k = records / this); "
        "records are only compared within clusters (see --probes).")] = 1000,
    probes: Annotated[int, typer.Option(
        "--probes", min=1, help="semantic: compare a record with every record of its nearest cluster that has "
        "that cluster among its N nearest (1 = SemDeDup's one cluster per record, which misses duplicates split "
        "by a cluster boundary).")] = 3,
    tmp_dir: Annotated[Optional[str], typer.Option(
        "--tmp-dir", help="Where the records and embeddings are spilled between the two passes "
        "(default: the system temporary directory).")] = None,
) -> None:
    """Remove duplicate sentences and images; each kind is compared only with its own kind.

    The first record of a group (in input order) is kept; the others are dropped
    with the reason and the id of the kept record (`dup_of`, in --rejects).
    Kept records carry the highest similarity found (`scores.dup_jaccard`,
    `scores.dup_sim`) so a threshold can be re-applied later. See docs/dedup.md.
    """
    from rsyn.stages.dedup import DedupOptions, parse_modes, run_dedup

    run_dedup(run, DedupOptions(modes=parse_modes(mode), near_threshold=near_threshold, ngram=ngram,
                                num_perm=num_perm, perceptual_threshold=perceptual_threshold,
                                semantic_threshold=semantic_threshold, cluster_size=cluster_size,
                                probes=probes, tmp_dir=tmp_dir))
