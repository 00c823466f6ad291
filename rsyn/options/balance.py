"""Options of `rsyn balance` and its passes (rsyn.stages.balance), declared once, in the groups the passes share."""

from dataclasses import dataclass
from typing import Annotated

from rsyn.options import opt


@dataclass
class WindowOptions:
    """The similarity window: `rsyn balance` and `rsyn balance plan`."""

    sim_range: Annotated[
        str | None,
        opt(
            "--sim-range",
            metavar="LO HI|auto",
            words=2,
            help="Keep pairs with LO <= cosine(image, syn_text) <= HI (also LO,HI). Default: the paper's 0.51 0.61, "
            "only for EVA02-E-14-plus embeddings; any other model needs a range or 'auto' (the 7.5%..92.5% "
            "quantiles of the observed sims, the 85% share the paper kept; auto:QLO,QHI for others).",
        ),
    ] = None


@dataclass
class ClusterOptions:
    """The image clusters (k-means): `rsyn balance` and `rsyn balance plan`."""

    clusters: Annotated[
        int | None,
        opt(
            "--clusters",
            min=1,
            help="k-means clusters of the image embeddings. Default: images in the window / 168 "
            "(the paper: 168M images, 1M clusters).",
        ),
    ] = None
    kmeans_iters: Annotated[int, opt("--kmeans-iters", min=1, help="k-means iterations.")] = 20
    kmeans_sample: Annotated[
        int | None,
        opt(
            "--kmeans-sample",
            min=1,
            help="Train k-means on at most this many embeddings, those with the smallest hash of "
            "(seed, id). Default: 256 per cluster, at most 65,536 in all but at least 8 per "
            "cluster.",
        ),
    ] = None
    centroids: Annotated[
        str | None, opt("--centroids", metavar="NPY", help="Use these centroids (k x d .npy) instead of k-means.")
    ] = None
    save_centroids: Annotated[
        str | None, opt("--save-centroids", metavar="NPY", help="Write the centroids used to this .npy file.")
    ] = None


@dataclass
class CapOptions:
    """The per-cluster cut-off: `rsyn balance` and `rsyn balance cap`."""

    per_cluster: Annotated[
        int | None,
        opt(
            "--per-cluster",
            min=1,
            metavar="T",
            help="Keep at most T pairs per cluster, all of a smaller one (paper: 20, 35, 180 for 15M, 30M, 100M).",
        ),
    ] = None
    target: Annotated[
        int | None,
        opt("--target", min=1, metavar="N", help="Instead of T: the largest T whose total output does not exceed N."),
    ] = None


@dataclass
class BalancePlanOptions(ClusterOptions, WindowOptions):
    """`rsyn balance plan`."""


@dataclass
class SpillOptions:
    tmp_dir: Annotated[
        str | None,
        opt(
            "--tmp-dir",
            metavar="DIR",
            aliases=("--spill-dir",),
            help="Where the passes' files go (default: $TMPDIR): 2 bytes per embedding "
            "dimension plus ~34 bytes per image, plus a zstd copy of stdin or pipe "
            "input.",
        ),
    ] = None


@dataclass
class BalanceOptions(SpillOptions, CapOptions, ClusterOptions, WindowOptions):
    """`rsyn balance`: every pass's options, in one process."""


@dataclass(kw_only=True)
class AssignOptions:
    plan_dir: Annotated[str, opt("--plan", metavar="DIR", help="The plan directory.")]


@dataclass(kw_only=True)
class FilterOptions:
    cap_dir: Annotated[str, opt("--cap", metavar="DIR", help="The cap directory.")]
