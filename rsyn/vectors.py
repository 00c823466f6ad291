"""Vector work shared by dedup, index, retrieve and balance: faiss k-means, assignment, disk spill.

faiss runs on GPU when the `gpu` extra (faiss-gpu) is installed and a CUDA
device was asked for; otherwise on CPU. Results agree within float tolerance.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from rsyn.records import decode_embeddings


def faiss_gpu_count() -> int:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return get() if get else 0


def use_faiss_gpu(device: str) -> bool:
    """True when `device` is CUDA and this faiss build can use it."""
    return device.startswith("cuda") and faiss_gpu_count() > 0


# From this many clusters on, train_kmeans splits the work in two levels (auto): flat k-means costs
# grow with clusters x sample = clusters^2 x points per cluster; two-level with 2 x clusters^1.5.
TWO_LEVEL_FROM = 4096
COARSE_POINTS_PER_CLUSTER = 256
REFINE_ITERATIONS = 3  # Lloyd iterations over the whole sample after the two levels
REFINE_NPROBE = 8  # coarse cells whose centroids a point is compared with in those iterations


def train_kmeans(
    vectors: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    device: str = "cpu",
    max_points_per_centroid: int = 256,
    spherical: bool = True,
    nredo: int = 1,
    two_level: bool | None = None,
) -> np.ndarray:
    """k-means centroids (k, d) float32 (spherical: unit centroids), deterministic from `seed`.

    Trains on at most k * max_points_per_centroid rows, a seeded random sample. `two_level` (None: auto,
    from TWO_LEVEL_FROM clusters on) first splits the sample into about sqrt(k) coarse clusters, then
    trains each coarse cluster's share of the k centroids as an independent k-means: the sub-problems are
    small, so 2M clusters train where one flat k-means would not.
    """
    n, d = vectors.shape
    k = max(1, min(int(k), n))
    cap = k * max_points_per_centroid
    if n > cap:
        # sample before converting: a float32 copy of a large (memmapped float16) corpus would not fit
        rows = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
        x = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    else:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
    if two_level is None:
        two_level = k >= TWO_LEVEL_FROM
    # On one faiss thread: BLAS products split over a different number of threads round differently, a
    # near-tie then falls to another centroid and every later iteration differs. One thread gives the same
    # centroids on every machine; a run gets its parallelism from the passes (parts), not from threads here.
    with one_faiss_thread():
        if not two_level or k < 4:
            return _flat_kmeans(x, k, seed=seed, niter=niter, device=device, spherical=spherical, nredo=nredo)
        return _two_level_kmeans(x, k, seed=seed, niter=niter, device=device, spherical=spherical, nredo=nredo)


def _flat_kmeans(
    x: np.ndarray, k: int, *, seed: int, niter: int, device: str, spherical: bool, nredo: int
) -> np.ndarray:
    """faiss k-means on all of `x` (the caller sampled it)."""
    import faiss

    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=int(seed) & 0x7FFFFFFF,
        spherical=spherical,
        max_points_per_centroid=max(1, -(-len(x) // k)),
        min_points_per_centroid=1,
        nredo=nredo,
        gpu=use_faiss_gpu(device),
        verbose=False,
    )
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def _two_level_kmeans(
    x: np.ndarray, k: int, *, seed: int, niter: int, device: str, spherical: bool, nredo: int
) -> np.ndarray:
    """sqrt(k) coarse clusters, then each coarse cluster's share of k (by its size) trained on its own points.

    The centroids come out grouped by coarse cluster, in coarse-cluster order.
    """
    coarse_k = max(2, int(round(np.sqrt(k))))
    # the coarse split only routes points to sub-problems: a few hundred points per coarse cluster place it
    cap = coarse_k * COARSE_POINTS_PER_CLUSTER
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=cap, replace=False)) if len(x) > cap else None
    coarse = _flat_kmeans(
        x if rows is None else x[rows],
        coarse_k,
        seed=seed,
        niter=niter,
        device=device,
        spherical=spherical,
        nredo=nredo,
    )
    labels, _ = nearest_centroid(x, coarse, device=device)
    sizes = np.bincount(labels, minlength=coarse_k)
    shares = split_clusters(sizes, k)
    order = np.argsort(labels, kind="stable")  # points of each coarse cluster, in sample order
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for i in range(coarse_k):
        if shares[i] == 0:
            continue
        points = x[order[bounds[i] : bounds[i + 1]]]
        parts.append(
            _flat_kmeans(
                points, int(shares[i]), seed=seed + 1 + i, niter=niter, device=device, spherical=spherical, nredo=nredo
            )
        )
    centroids = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    # a point near a coarse border was clustered with one side only: a few Lloyd iterations over the whole
    # sample move centroids across borders. Each point is compared with the centroids of its nearest
    # coarse cells only (an IVF over the centroids), which keeps an iteration far cheaper than a flat one.
    for _ in range(REFINE_ITERATIONS):
        labels = _nearest_in_cells(x, centroids, coarse, spherical=spherical)
        centroids = _cluster_means(x, labels, centroids, spherical=spherical)
    return centroids


def _nearest_in_cells(x: np.ndarray, centroids: np.ndarray, coarse: np.ndarray, *, spherical: bool) -> np.ndarray:
    """Each row's nearest centroid among those of its REFINE_NPROBE nearest coarse cells, computed cell by
    cell as matrix products (the rows that probe a cell x that cell's centroids), not as a scan per row."""
    nprobe = min(REFINE_NPROBE, len(coarse))
    cells = flat_ip_index(coarse) if spherical else _flat_l2(coarse)
    probes = cells.search(np.ascontiguousarray(x), nprobe)[1]
    centroid_cell = cells.search(np.ascontiguousarray(centroids), 1)[1][:, 0]
    by_cell = np.argsort(centroid_cell, kind="stable")
    cell_bounds = np.searchsorted(centroid_cell[by_cell], np.arange(len(coarse) + 1))
    pair_cells = probes.ravel()
    pairs = np.argsort(pair_cells, kind="stable")
    pair_bounds = np.searchsorted(pair_cells[pairs], np.arange(len(coarse) + 1))
    # for L2, argmin |x - c|^2 = argmax x.c - |c|^2 / 2
    offset = np.zeros(len(centroids), np.float32) if spherical else -0.5 * (centroids**2).sum(axis=1)
    best = np.full(len(x), -np.inf, dtype=np.float32)
    labels = np.zeros(len(x), dtype=np.int64)
    for cell in range(len(coarse)):
        members = by_cell[cell_bounds[cell] : cell_bounds[cell + 1]]
        rows = pairs[pair_bounds[cell] : pair_bounds[cell + 1]] // nprobe
        for start in range(0, len(rows) if len(members) else 0, 16384):  # bounds the (rows x members) block
            part = rows[start : start + 16384]
            scores = x[part] @ centroids[members].T + offset[members]
            top = np.argmax(scores, axis=1)
            value = scores[np.arange(len(part)), top]
            better = value > best[part]  # cells in order, first best kept: deterministic
            best[part[better]] = value[better]
            labels[part[better]] = members[top[better]]
    return labels


def _flat_l2(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _cluster_means(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, *, spherical: bool) -> np.ndarray:
    """The mean of each cluster's rows (unit length if spherical); an empty cluster keeps its centroid.
    The sums are one sparse (clusters x rows) product, each cluster's rows added in row order, so the
    result does not depend on the thread count."""
    from scipy.sparse import csr_matrix

    counts = np.bincount(labels, minlength=len(centroids))
    members = csr_matrix((np.ones(len(x), np.float32), (labels, np.arange(len(x)))), shape=(len(centroids), len(x)))
    sums = np.asarray(members @ x, dtype=np.float32)
    full = counts > 0
    means = centroids.copy()
    means[full] = sums[full] / counts[full, None]
    if spherical:
        means[full] /= np.linalg.norm(means[full], axis=1, keepdims=True)
    return np.ascontiguousarray(means, dtype=np.float32)


def split_clusters(sizes: np.ndarray, k: int) -> np.ndarray:
    """k centroids shared among groups in proportion to their sizes (largest remainders), at most one per
    point, and at least one per non-empty group while k allows."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    k = min(k, total)
    exact = sizes * (k / total)
    shares = np.floor(exact).astype(np.int64)
    if k >= int((sizes > 0).sum()):  # one each can be afforded: every non-empty group gets at least one
        shares = np.minimum(np.maximum(shares, (sizes > 0).astype(np.int64)), sizes)
    # else no minimum: the shares go by size alone, so a large group is never starved for singletons
    # hand out (or take back) the difference one at a time, by remainder: ties go to the lower group number
    remainder = exact - shares
    while shares.sum() < k:
        open_ = shares < sizes
        i = int(np.argmax(np.where(open_, remainder, -np.inf)))
        shares[i] += 1
        remainder[i] -= 1
    while shares.sum() > k:  # the minimums overshot: take back from groups above one, least deserving first
        i = int(np.argmin(np.where(shares > 1, remainder, np.inf)))
        shares[i] -= 1
        remainder[i] += 1
    return shares


def nearest_centroid(
    vectors: np.ndarray, centroids: np.ndarray, *, device: str = "cpu", batch: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, inner products float32) of each vector's nearest centroid, in batches."""
    index = flat_ip_index(centroids, device)
    labels = np.empty(len(vectors), dtype=np.int64)
    sims = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), batch):
        chunk = np.ascontiguousarray(vectors[start : start + batch], dtype=np.float32)
        s, i = index.search(chunk, 1)
        labels[start : start + len(chunk)] = i[:, 0]
        sims[start : start + len(chunk)] = s[:, 0]
    return labels, sims


def flat_ip_index(vectors: np.ndarray, device: str = "cpu"):
    """Exact inner-product index over `vectors`, on GPU when possible."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    if use_faiss_gpu(device):
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, gpu_id(device), index)
    index.add(x)
    return index


def gpu_id(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


class VectorSpill:
    """Append embeddings (as they stream by) to a float16 file on disk; read back as a memmap.

    Memory stays bounded by one batch, not by the corpus: 1M x 512 vectors
    take 1 GiB on disk and are paged in by the OS as faiss reads them.
    """

    def __init__(self, dim: int | None = None, directory: str | os.PathLike | None = None):
        self.dim = dim
        self.count = 0
        self._dir = tempfile.TemporaryDirectory(prefix="rsyn-spill-", dir=directory)
        self.path = Path(self._dir.name) / "vectors.f16"
        self._fh = open(self.path, "wb")
        self._pending: list[str] = []

    def add_encoded(self, emb: str) -> None:
        """Queue one base64 embedding; decoded in batches (the codec is vectorised per batch)."""
        self._pending.append(emb)
        if len(self._pending) >= 8192:
            self._flush()

    def add(self, matrix: np.ndarray) -> None:
        self._flush()
        matrix = np.asarray(matrix)
        self._append(matrix if matrix.dtype == np.float16 else matrix.astype(np.float32))

    def _flush(self) -> None:
        if self._pending:
            matrix = decode_embeddings(self._pending, self.dim)
            self._pending = []
            self._append(matrix)

    def _append(self, matrix: np.ndarray) -> None:
        if matrix.size == 0:
            return
        if self.dim is None:
            self.dim = matrix.shape[1]
        if matrix.shape[1] != self.dim:
            raise ValueError(f"embedding has {matrix.shape[1]} dimensions, expected {self.dim}")
        self._fh.write(matrix.astype("<f2", copy=False).tobytes())
        self.count += len(matrix)

    def finish(self) -> np.ndarray:
        """All vectors as a read-only (n, dim) float16 memmap (empty array when none)."""
        self._flush()
        self._fh.close()
        if self.count == 0:
            return np.zeros((0, self.dim or 0), dtype=np.float16)
        return np.memmap(self.path, dtype="<f2", mode="r", shape=(self.count, self.dim))

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._dir.cleanup()

    def __enter__(self) -> VectorSpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Scale float32 rows to unit length, in place (zero rows stay zero). Embeddings are compared by
    inner product as cosines, and float16 storage leaves norms of 1 +- 1e-3."""
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return matrix


def to_float32(matrix: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """A contiguous float32 copy of rows [start, stop) of a (possibly memmapped float16) matrix."""
    return np.ascontiguousarray(matrix[start:stop], dtype=np.float32)


@contextlib.contextmanager
def faiss_stdout_silenced():
    """Send what faiss's C++ code prints to stdout (on-disk lists print progress there) to /dev/null:
    stdout carries rsyn's record stream. Both Python's and C's buffers are flushed on either side."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def one_faiss_thread():
    """faiss on one thread inside: its BLAS products (k-means assignments, searches) then give the same bits
    whatever the machine's thread count, so k-means near-ties fall the same way and the centroids are the same."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
