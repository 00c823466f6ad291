"""Semantic (and perceptual) duplicates on embeddings: faiss k-means, threshold edges inside clusters,
then keep-first over the edges.

SemDeDup (Abbas et al. 2023) compares records only within their k-means
cluster, which turns the n^2 all-pairs problem into sum of cluster size^2.
With one cluster per record, duplicates that straddle a cluster boundary are
never compared; in weakly clustered high-dimensional embeddings that is a
large share of them (bin/bench_dedup.py measures it). So every record is also
compared with the records whose *second* nearest centroid (up to `probes`)
is its own cluster, the same idea as probing several lists of an IVF index.

Which records go: records are taken in input order and a record is dropped
when its cosine similarity to an already *kept* record is at or above the
threshold. Comparing with kept records only (not with every earlier record,
and not grouping by union-find as the paper does) is what stops transitive
chains: with union-find at cosine 0.9, a ~ b ~ c ~ ... links records that are
far apart in a dense region and keeps one of thousands; here every dropped
record is within the threshold of the record named in its `dup_of`. The
result is the lexicographically first maximal independent set of the
threshold graph, computed in vectorised rounds over the edge list.

Similarity products run in row blocks (at most 64 MiB each) on the GPU
(torch) when the run has one; k-means on the GPU when faiss has GPU support.
"""

from __future__ import annotations

import math

import numpy as np

SIM_BYTES = 1 << 26  # one block of the similarity matrix: 64 MiB of float32
ASSIGN_BATCH = 65536
SAMPLE_PER_CENTROID = 64  # k-means trains on this many points per centroid: a partition for dedup needs no finer centroids
KMEANS_ITERATIONS = 10


def cluster_assignments(vectors, rows: np.ndarray, cluster_size: int, probes: int, *, seed: int,
                        device: str) -> tuple[np.ndarray, int]:
    """(len(rows), probes) nearest k-means clusters of each row, nearest first; k = ceil(len(rows) / cluster_size)."""
    m = len(rows)
    k = max(1, math.ceil(m / max(1, cluster_size)))
    if k == 1:
        return np.zeros((m, 1), dtype=np.int64), 1
    from rsyn.vectors import flat_ip_index, train_kmeans

    rng = np.random.default_rng(seed)
    n_train = min(m, k * SAMPLE_PER_CENTROID)
    sample = np.sort(rng.choice(m, size=n_train, replace=False)) if n_train < m else np.arange(m)
    centroids = train_kmeans(np.asarray(vectors[rows[sample]], dtype=np.float32), k, seed=seed, device=device,
                             niter=KMEANS_ITERATIONS, max_points_per_centroid=SAMPLE_PER_CENTROID)
    index = flat_ip_index(centroids, device)
    probes = max(1, min(probes, len(centroids)))
    labels = np.empty((m, probes), dtype=np.int64)
    for start in range(0, m, ASSIGN_BATCH):
        chunk = np.ascontiguousarray(vectors[rows[start:start + ASSIGN_BATCH]], dtype=np.float32)
        labels[start:start + len(chunk)] = index.search(chunk, probes)[1]
    return labels, len(centroids)


class _Products:
    """Cosine products of query rows with a cluster's rows: torch on a CUDA device, numpy (BLAS) on CPU."""

    def __init__(self, device: str):
        self.device = device if device.startswith("cuda") else None

    def __call__(self, queries: np.ndarray, database: np.ndarray):
        if self.device is None:
            for lo in range(0, len(queries), self._block(len(database))):
                yield lo, queries[lo:lo + self._block(len(database))] @ database.T
            return
        import torch

        db = torch.from_numpy(database).to(self.device)
        q = torch.from_numpy(queries).to(self.device)
        for lo in range(0, len(queries), self._block(len(database))):
            yield lo, (q[lo:lo + self._block(len(database))] @ db.T).cpu().numpy()

    @staticmethod
    def _block(width: int) -> int:
        return int(max(16, min(8192, SIM_BYTES // (4 * max(width, 1)))))


def _unit_rows(vectors, rows: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # float16 storage leaves norms a hair off 1
    return x


def threshold_edges(vectors, rows: np.ndarray, labels: np.ndarray, threshold: float, device: str):
    """Pairs (a < b, positions into rows) with cosine >= threshold, their cosine, and each row's highest
    cosine with any record it was compared with (-1 when none).

    A record is compared with every record of its nearest cluster and with the
    records that have that cluster among their `probes` nearest.
    """
    m, probes = labels.shape
    best = np.full(m, -1.0, dtype=np.float32)
    found_a, found_b, found_sim = [], [], []
    primary = labels[:, 0]
    member_pos = np.repeat(np.arange(m), probes)
    member_cluster = labels.ravel()
    by_cluster = np.lexsort((member_pos, member_cluster))
    member_pos, member_cluster = member_pos[by_cluster], member_cluster[by_cluster]
    members_start = np.searchsorted(member_cluster, np.arange(int(labels.max()) + 2))
    queries_by_cluster = np.lexsort((np.arange(m), primary))
    query_start = np.searchsorted(primary[queries_by_cluster], np.arange(int(labels.max()) + 2))
    products = _Products(device)
    for cluster in range(len(members_start) - 1):
        queries = queries_by_cluster[query_start[cluster]:query_start[cluster + 1]]
        database = member_pos[members_start[cluster]:members_start[cluster + 1]]
        if len(queries) == 0 or len(database) < 2:
            continue
        xq, xd = _unit_rows(vectors, rows[queries]), _unit_rows(vectors, rows[database])
        for lo, sims in products(xq, xd):
            q = queries[lo:lo + len(sims)]
            sims[q[:, None] == database[None, :]] = -2.0  # a record is not its own duplicate
            best[q] = np.maximum(best[q], sims.max(axis=1))
            qi, di = np.nonzero(sims >= threshold)
            if len(qi):
                a, b = q[qi], database[di]
                found_a.append(np.minimum(a, b))
                found_b.append(np.maximum(a, b))
                found_sim.append(sims[qi, di])
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), best
    a, b, sim = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_sim)
    _, first = np.unique(a * m + b, return_index=True)  # a pair seen from both sides or in two clusters
    a, b, sim = a[first], b[first], sim[first]
    np.maximum.at(best, a, sim)
    np.maximum.at(best, b, sim)
    return a, b, sim, best


def keep_first(m: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kept mask of the lexicographically first maximal independent set of the graph (a < b edges).

    Record b is dropped as soon as one earlier neighbour a is kept, and kept as
    soon as no earlier neighbour is undecided. Every round settles at least the
    first undecided record, and in practice a whole wave of them.
    """
    undecided, kept = np.ones(m, dtype=bool), np.zeros(m, dtype=bool)
    while True:
        live = undecided[b]
        a, b = a[live], b[live]  # edges into settled records are done
        blocked = np.zeros(m, dtype=bool)
        blocked[b[undecided[a]]] = True
        free = undecided & ~blocked
        kept |= free
        undecided &= ~free
        hit = b[kept[a]]
        undecided[hit] = False
        if not undecided.any():
            return kept


def semantic_groups(vectors, rows: np.ndarray, threshold: float, cluster_size: int, *, probes: int = 3,
                    seed: int, device: str) -> dict:
    """Semantic dedup of `rows` (ascending row numbers into `vectors`, a (n, d) float16 matrix).

    Returns arrays over `rows`: `keep_as` (position of the kept record it
    duplicates; itself when kept), `sim` (cosine to that record, nan when
    kept), `best` (highest cosine to a record it was compared with), and counts.
    """
    m = len(rows)
    if m == 0:
        return {"keep_as": np.zeros(0, np.int64), "sim": np.zeros(0, np.float32), "best": np.zeros(0, np.float32),
                "clusters": 0, "probes": 0, "largest_cluster": 0, "edges": 0}
    labels, k = cluster_assignments(vectors, rows, cluster_size, probes, seed=seed, device=device)
    a, b, sim, best = threshold_edges(vectors, rows, labels, threshold, device)
    kept = keep_first(m, a, b)
    keep_as = np.arange(m, dtype=np.int64)
    to_kept = np.full(m, np.nan, dtype=np.float32)
    # each dropped record's most similar kept earlier neighbour
    link = kept[a] & ~kept[b]
    la, lb, ls = a[link], b[link], sim[link]
    order = np.lexsort((la, -ls, lb))
    la, lb, ls = la[order], lb[order], ls[order]
    first = np.ones(len(lb), dtype=bool)
    first[1:] = lb[1:] != lb[:-1]
    keep_as[lb[first]] = la[first]
    to_kept[lb[first]] = ls[first]
    sizes = np.bincount(labels[:, 0], minlength=k)
    return {"keep_as": keep_as, "sim": to_kept, "best": best, "clusters": k, "probes": labels.shape[1],
            "largest_cluster": int(sizes.max()), "edges": int(len(a))}
