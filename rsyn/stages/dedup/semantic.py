"""Semantic (and perceptual) duplicates on embeddings: faiss k-means, then a greedy pass inside each cluster.

SemDeDup (Abbas et al. 2023) compares records only within their k-means
cluster, which turns the n^2 all-pairs problem into sum of cluster size^2.

Inside a cluster the records are visited in input order and a record is
dropped when its cosine similarity to an already *kept* record is at or above
the threshold; otherwise it is kept. Comparing with kept records only (not
with every earlier record, and not grouping by union-find as the paper does)
is what stops transitive chains: with union-find at cosine 0.9, a ->b ->c ->...
links records that are far apart in a dense region and keeps one of
thousands; here every dropped record is within the threshold of the record
named in its `dup_of`. The result is the lexicographically first maximal
independent set of the threshold graph, so it does not depend on batch sizes.

The work is done in row blocks (block x cluster similarity matrices) so memory
stays bounded for large clusters; the matrix products run on the GPU (torch)
when the run has one, k-means on the GPU when faiss has GPU support.
"""

from __future__ import annotations

import math

import numpy as np

SIM_BYTES = 1 << 26  # one block of the similarity matrix: 64 MiB of float32
ASSIGN_BATCH = 65536
SAMPLE_PER_CENTROID = 64  # k-means trains on this many points per centroid: a partition for dedup needs no finer centroids
KMEANS_ITERATIONS = 10


def cluster_labels(vectors, rows: np.ndarray, cluster_size: int, *, seed: int, device: str) -> tuple[np.ndarray, int]:
    """k-means label of each row (k = ceil(len(rows) / cluster_size)); one cluster when that is 1."""
    m = len(rows)
    k = max(1, math.ceil(m / max(1, cluster_size)))
    if k == 1:
        return np.zeros(m, dtype=np.int64), 1
    from rsyn.vectors import flat_ip_index, train_kmeans

    rng = np.random.default_rng(seed)
    n_train = min(m, k * SAMPLE_PER_CENTROID)
    sample = np.sort(rng.choice(m, size=n_train, replace=False)) if n_train < m else np.arange(m)
    centroids = train_kmeans(np.asarray(vectors[rows[sample]], dtype=np.float32), k, seed=seed, device=device,
                             niter=KMEANS_ITERATIONS,
                             max_points_per_centroid=SAMPLE_PER_CENTROID)
    index = flat_ip_index(centroids, device)
    labels = np.empty(m, dtype=np.int64)
    for start in range(0, m, ASSIGN_BATCH):
        chunk = np.ascontiguousarray(vectors[rows[start:start + ASSIGN_BATCH]], dtype=np.float32)
        labels[start:start + len(chunk)] = index.search(chunk, 1)[1][:, 0]
    return labels, len(centroids)


def _keep_first_independent(edges: np.ndarray, undecided: np.ndarray) -> np.ndarray:
    """Resolve one block: edges[i, j] (j before i) at or above the threshold; returns the kept mask.

    A record is dropped once an earlier neighbour is kept, kept once no earlier
    neighbour is undecided; each round settles at least the first undecided
    record, and records without edges settle in the first round.
    """
    kept = np.zeros(len(undecided), dtype=bool)
    undecided = undecided.copy()
    while undecided.any():
        hit = undecided & (edges & kept[None, :]).any(axis=1)
        undecided &= ~hit
        free = undecided & ~(edges & undecided[None, :]).any(axis=1)
        kept |= free
        undecided &= ~free
    return kept


class _Similarity:
    """Block x cluster cosine products: torch on a CUDA device, numpy (BLAS) on CPU."""

    def __init__(self, x: np.ndarray, device: str):
        self.x = x
        self.gpu = None
        if device.startswith("cuda"):
            import torch

            self.gpu = torch.from_numpy(x).to(device)

    def block(self, lo: int, hi: int) -> np.ndarray:
        if self.gpu is None:
            return self.x[lo:hi] @ self.x.T
        return (self.gpu[lo:hi] @ self.gpu.T).cpu().numpy()


def dedup_cluster(x: np.ndarray, threshold: float, device: str = "cpu"):
    """Greedy keep-first dedup of one cluster's unit vectors `x` ((c, d) float32, in input order).

    Returns arrays over the c records: kept (bool), dup_of (position of the
    kept record it duplicates, -1 when kept), sim_to_kept (nan when kept),
    best (highest cosine to any other record of the cluster; -1 in a cluster of one).
    """
    c = x.shape[0]
    kept = np.zeros(c, dtype=bool)
    dup_of = np.full(c, -1, dtype=np.int64)
    sim_to_kept = np.full(c, np.nan, dtype=np.float32)
    best = np.full(c, -1.0, dtype=np.float32)
    block = int(max(16, min(4096, SIM_BYTES // (4 * max(c, 1)))))
    columns = np.arange(c)
    products = _Similarity(x, device)
    for lo in range(0, c, block):
        hi = min(c, lo + block)
        rows = np.arange(lo, hi)
        sims = products.block(lo, hi)  # (b, c)
        sims[rows - lo, rows] = -2.0  # a record is not its own duplicate
        if c > 1:
            best[lo:hi] = sims.max(axis=1)
        dominated = ((sims[:, :lo] >= threshold) & kept[None, :lo]).any(axis=1)
        earlier = columns[None, :hi] < rows[:, None]
        inside = (sims[:, lo:hi] >= threshold) & earlier[:, lo:]
        kept[lo:hi] = _keep_first_independent(inside, ~dominated)
        dropped = np.flatnonzero(~kept[lo:hi])
        if len(dropped):
            # the kept record each dropped one duplicates: its most similar kept, earlier record
            candidates = np.where(kept[None, :hi] & earlier[dropped], sims[dropped, :hi], -3.0)
            dup_of[lo + dropped] = candidates.argmax(axis=1)
            sim_to_kept[lo + dropped] = candidates.max(axis=1)
    return kept, dup_of, sim_to_kept, best


def semantic_groups(vectors, rows: np.ndarray, threshold: float, cluster_size: int, *, seed: int,
                    device: str) -> dict:
    """Semantic dedup of `rows` (ascending row numbers into `vectors`, a (n, d) float16 memmap).

    Returns arrays over `rows`: `keep_as` (position of the kept record it
    duplicates; itself when kept), `sim` (cosine to that record, nan when kept),
    `best` (highest cosine to another record of its cluster), `cluster`.
    """
    m = len(rows)
    labels, k = cluster_labels(vectors, rows, cluster_size, seed=seed, device=device)
    keep_as = np.arange(m, dtype=np.int64)
    sim = np.full(m, np.nan, dtype=np.float32)
    best = np.full(m, -1.0, dtype=np.float32)
    order = np.lexsort((np.arange(m), labels))  # cluster by cluster, input order inside
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    sizes = []
    for members in np.split(order, bounds) if m else []:
        sizes.append(len(members))
        x = np.ascontiguousarray(vectors[rows[members]], dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)  # f16 storage leaves norms a hair off 1
        kept, dup_of, to_kept, top = dedup_cluster(x, threshold, device)
        dropped = ~kept
        keep_as[members[dropped]] = members[dup_of[dropped]]
        sim[members[dropped]] = to_kept[dropped]
        best[members] = top
    return {"keep_as": keep_as, "sim": sim, "best": best, "cluster": labels, "clusters": k,
            "largest_cluster": max(sizes) if sizes else 0}
