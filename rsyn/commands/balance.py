from typing import Annotated, Optional

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command


@rsyn_command(app, "balance", "Keep image/syn_text pairs in the similarity window; cap each image cluster.")
def balance(
    run: Run,
    sim_range: Annotated[Optional[str], typer.Option(
        "--sim-range", metavar="LO HI|auto",
        help="Keep pairs with LO <= cosine(image, syn_text) <= HI (also LO,HI). Default: the paper's 0.51 0.61, "
             "only for EVA02-E-14-plus embeddings; any other model needs a range or 'auto' (the 7.5%..92.5% "
             "quantiles of the observed sims, the 85% share the paper kept; auto:QLO,QHI for others).")] = None,
    clusters: Annotated[Optional[int], typer.Option(
        "--clusters", min=1, help="k-means clusters of the image embeddings. Default: images in the window / 168 "
                                  "(the paper: 168M images, 1M clusters).")] = None,
    per_cluster: Annotated[Optional[int], typer.Option(
        "--per-cluster", min=1, metavar="T",
        help="Keep at most T pairs per cluster, all of a smaller one (paper: 20, 35, 180 for 15M, 30M, 100M).")] = None,
    target: Annotated[Optional[int], typer.Option(
        "--target", min=1, metavar="N",
        help="Instead of T: the largest T whose total output does not exceed N.")] = None,
    kmeans_iters: Annotated[int, typer.Option("--kmeans-iters", min=1, help="k-means iterations.")] = 20,
    kmeans_sample: Annotated[Optional[int], typer.Option(
        "--kmeans-sample", min=1, help="Train k-means on at most this many embeddings (default 256 per cluster), "
                                       "picked by a hash of (seed, id).")] = None,
    centroids: Annotated[Optional[str], typer.Option(
        "--centroids", metavar="NPY", help="Use these centroids (k x d .npy) instead of k-means, e.g. the same "
                                           "clusters for every shard.")] = None,
    save_centroids: Annotated[Optional[str], typer.Option(
        "--save-centroids", metavar="NPY", help="Write the centroids used to this .npy file.")] = None,
    spill_dir: Annotated[Optional[str], typer.Option(
        "--spill-dir", metavar="DIR", help="Where the spill goes (default: $TMPDIR): 2 bytes per embedding "
                                           "dimension per image, plus a zstd copy of stdin or pipe input.")] = None,
) -> None:
    """Semantic balance sampling (RealSyn step 10).

    Computes sim = cosine(image emb, syn_emb) and keeps the pairs inside the --sim-range window; clusters their
    image embeddings with faiss k-means (on the GPU with faiss-gpu and a CUDA device) and keeps at most T pairs per
    cluster. Which pairs a full cluster keeps is drawn from a hash of (--seed, record id): the same for any input
    order or split. Reads its input twice (files directly, stdin and pipes through a disk spill) with the
    embeddings in a float16 spill file, so memory stays small. Survivors gain `sim` and
    `cluster`; non-image records are dropped (counted as not_image). The summary gives the cluster-size
    distribution before and after (max share, Gini, singletons).
    """
    from rsyn.stages.balance import run_balance

    run_balance(run, sim_range=sim_range, clusters=clusters, per_cluster=per_cluster, target=target,
                kmeans_iters=kmeans_iters, kmeans_sample=kmeans_sample, centroids_path=centroids,
                save_centroids=save_centroids, spill_dir=spill_dir)
