#!/usr/bin/env python
"""Two-level k-means (rsyn.vectors.train_kmeans, two_level=True) against flat faiss k-means, in one run.

Both train on the same seeded sample (clusters x points per cluster rows, as rsyn index samples) of
synthetic CLIP-like unit vectors (Zipf-sized topics with sub-topics, a shared direction), with the same
iterations; the objective is the mean squared distance of held-out and training points to their nearest
centroid (2 - 2 cos for unit vectors), so lower is better. Prints a table with the time ratio.

Issue's size: benchmarks/kmeans_two_level.py --n 1000000 --dim 512 --clusters 4096
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rsyn.vectors import nearest_centroid, train_kmeans  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_data(n: int, dim: int, topics: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = unit(rng.normal(size=dim))
    centers = unit(0.6 * common + unit(rng.normal(size=(topics, dim)))).astype(np.float32)
    subs = unit(centers[:, None, :] + 0.8 * unit(rng.normal(size=(topics, 8, dim)))).reshape(-1, dim)
    subs = subs.astype(np.float32)
    weights = 1.0 / np.arange(1, topics + 1) ** 1.1
    weights /= weights.sum()
    sigma = rng.uniform(0.6, 1.15, size=len(subs)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        sub = rng.choice(topics, size=m, p=weights) * 8 + rng.integers(0, 8, m)
        noise = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
        out[start : start + m] = unit(subs[sub] + sigma[sub][:, None] * noise)
    return out


def objective(points: np.ndarray, centroids: np.ndarray) -> float:
    _, sims = nearest_centroid(points, centroids)
    return float(np.mean(2 - 2 * sims.astype(np.float64)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--points-per-cluster", type=int, default=64, help="as rsyn index (--kmeans-points-per-cluster)")
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--eval", type=int, default=100_000, help="held-out points the objective is also measured on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import faiss

    print(
        f"# kmeans_two_level: {args.n:,} x {args.dim}-d into {args.clusters:,} clusters, "
        f"{args.points_per_cluster} points per cluster, {args.niter} iterations; faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    t = time.perf_counter()
    data = make_data(args.n + args.eval, args.dim, max(10, args.n // 1000), args.seed)
    corpus, held_out = data[: args.n], data[args.n :]
    print(f"# data in {time.perf_counter() - t:.1f}s", flush=True)
    cap = args.clusters * args.points_per_cluster
    train_rows = np.sort(np.random.default_rng(args.seed).choice(args.n, size=min(cap, args.n), replace=False))
    sample = corpus[train_rows]

    results = {}
    for name, two_level in (("two-level", True), ("flat", False)):
        t = time.perf_counter()
        centroids = train_kmeans(
            corpus,
            args.clusters,
            seed=args.seed,
            niter=args.niter,
            max_points_per_centroid=args.points_per_cluster,
            two_level=two_level,
        )
        seconds = time.perf_counter() - t
        results[name] = (seconds, objective(sample, centroids), objective(held_out, centroids))
        print(f"# {name}: {seconds:.1f}s", flush=True)

    flat = results["flat"]
    print()
    print(
        "| k-means | seconds | time vs flat | objective (training sample) | vs flat | objective (held out) | vs flat |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (seconds, train_obj, held_obj) in results.items():
        print(
            f"| {name} | {seconds:.1f} | {seconds / flat[0]:.3f}x | {train_obj:.5f} | {train_obj / flat[1] - 1:+.2%} "
            f"| {held_obj:.5f} | {held_obj / flat[2] - 1:+.2%} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
