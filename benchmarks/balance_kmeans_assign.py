#!/usr/bin/env python
"""The two approximations of `rsyn balance` at scale, each against the exact reference, in one run (issue 18).

    .venv/bin/python benchmarks/balance_kmeans_assign.py [--sample] [--assign] [--dim 512]

--sample: the capped k-means training sample. For each k, balance's k-means (rsyn.vectors.train_kmeans, as
plan calls it: flat below 4,096 clusters, two-level from there) trained on S points for several S, against
flat k-means on the full 256 points per cluster (faiss's default, the old default of balance). Quality is
the k-means objective on held-out points: the mean of 1 - cos(point, nearest centroid), exact (flat search),
so lower is better; the table gives its increase over the reference, and the training CPU seconds.
--two-level adds, below 4,096 clusters, the same samples through two-level k-means.

--assign: the nearest-centroid search. For each k, CPU microseconds per image of the exact search
(NearestCentroid: faiss flat + float64 re-scoring) and of the search through cells (CellSearch: an IVF over
the centroids, CELL_PROBES cells, float64 re-scoring), and the share of images that get the same label.

Data: the points of benchmarks/balance_vs_bare.py (unit vectors around 2,000 Zipf-sized true clusters,
noise 0.6 per coordinate), so clusters beyond 2,000 split true clusters and many images lie near borders.
CPU = this process's user + system time (time.process_time) around each step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rsyn.stages.balance import CELL_PROBES, CellSearch, NearestCentroid, build_cells  # noqa: E402
from rsyn.vectors import nearest_centroid, train_kmeans  # noqa: E402


def make_points(n: int, dim: int, seed: int, true_clusters: int = 2000) -> np.ndarray:
    centres = np.random.default_rng(0).standard_normal((true_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, true_clusters + 1) ** 1.1
    weights /= weights.sum()
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        x = centres[rng.choice(true_clusters, m, p=weights)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out.astype(np.float16).astype(np.float32)  # as balance reads them from its float16 spill


def objective(points: np.ndarray, centroids: np.ndarray) -> float:
    _, sims = nearest_centroid(points, centroids)
    return float(np.mean(1.0 - sims.astype(np.float64)))


def cpu() -> float:
    return time.process_time()


def sample_table(
    dim: int, clusters: list[int], sizes: list[int], held_out: int, niter: int, two_level_too: bool
) -> None:
    pool_size = max(max(sizes), 256 * max(clusters))
    pool = make_points(pool_size, dim, seed=10)
    test = make_points(held_out, dim, seed=11)
    print(f"\nk-means training sample: {dim}-d, {held_out:,} held-out points, {niter} iterations")
    print(f"{'k':>6} {'sample S':>9} {'S/k':>6} {'kind':>9} {'train CPU s':>12} {'objective':>10} {'vs full':>8}")
    for k in clusters:
        clock = cpu()
        reference = train_kmeans(pool[: 256 * k], k, seed=0, niter=niter, two_level=False)
        ref_cpu = cpu() - clock
        ref = objective(test, reference)
        print(f"{k:6,} {256 * k:9,} {256:6} {'flat':>9} {ref_cpu:12.1f} {ref:10.5f} {1.0:8.4f}", flush=True)
        for s in sizes:
            if s >= 256 * k:
                continue
            # as plan_pass calls it (auto: two-level from 4,096 clusters), and forced two-level
            for two_level in [None] + ([True] if two_level_too and k < 4096 else []):
                clock = cpu()
                centroids = train_kmeans(
                    pool[:s], k, seed=0, niter=niter, max_points_per_centroid=max(256, -(-s // k)), two_level=two_level
                )
                spent = cpu() - clock
                kind = "two-level" if k >= 4096 or two_level else "flat"
                value = objective(test, centroids)
                print(
                    f"{k:6,} {s:9,} {s / k:6.1f} {kind:>9} {spent:12.1f} {value:10.5f} {value / ref:8.4f}", flush=True
                )


def assign_table(dim: int, clusters: list[int], images: int) -> None:
    train = make_points(65_536, dim, seed=20)
    x = make_points(images, dim, seed=21)
    print(f"\nnearest centroid: {dim}-d, {images:,} images, {CELL_PROBES} probed cells")
    print(f"{'k':>7} {'cells':>6} {'exact us/img':>13} {'cells us/img':>13} {'speed-up':>9} {'agreement':>10}")
    for k in clusters:
        centroids = train_kmeans(train, k, seed=0, niter=4, max_points_per_centroid=max(256, -(-len(train) // k)))
        clock = cpu()
        exact = np.concatenate(
            [NearestCentroid(centroids, "cpu").labels(x[i : i + 16384]) for i in range(0, images, 16384)]
        )
        exact_cpu = cpu() - clock
        clock = cpu()
        search = CellSearch(centroids, *build_cells(centroids, seed=0))
        build = cpu() - clock
        clock = cpu()
        labels = np.concatenate([search.labels(x[i : i + 16384]) for i in range(0, images, 16384)])
        cells_cpu = cpu() - clock
        print(
            f"{k:7,} {len(search.coarse):6} {exact_cpu / images * 1e6:13.1f} {cells_cpu / images * 1e6:13.1f} "
            f"{exact_cpu / cells_cpu:9.2f} {np.mean(labels == exact):10.5f}   (cells built in {build:.1f}s)",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", action="store_true")
    p.add_argument("--assign", action="store_true")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--sample-clusters", default="1024,2048")
    p.add_argument("--sample-sizes", default="16384,32768,65536,131072")
    p.add_argument("--held-out", type=int, default=50_000)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--two-level", action="store_true", help="also two-level k-means below 4,096 clusters")
    p.add_argument("--assign-clusters", default="512,1024,2048,4096,8192,16384")
    p.add_argument("--images", type=int, default=50_000)
    args = p.parse_args()
    if not (args.sample or args.assign):
        args.sample = args.assign = True
    if args.assign:
        assign_table(args.dim, [int(k) for k in args.assign_clusters.split(",")], args.images)
    if args.sample:
        sample_table(
            args.dim,
            [int(k) for k in args.sample_clusters.split(",")],
            [int(s) for s in args.sample_sizes.split(",")],
            args.held_out,
            args.niter,
            args.two_level,
        )


if __name__ == "__main__":
    main()
