"""Vector work shared by dedup, index, retrieve and balance: faiss k-means, assignment, disk spill.

faiss runs on GPU when the `gpu` extra (faiss-gpu) is installed and a CUDA
device was asked for; otherwise on CPU. Results agree within float tolerance.
"""

from __future__ import annotations

import os
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


def train_kmeans(vectors: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, device: str = "cpu",
                 max_points_per_centroid: int = 256, spherical: bool = True, nredo: int = 1) -> np.ndarray:
    """k-means centroids (k, d) float32 of unit vectors (spherical: centroids re-normalised).

    faiss samples at most k * max_points_per_centroid training points itself,
    deterministically from `seed`.
    """
    import faiss

    n, d = vectors.shape
    k = max(1, min(int(k), n))
    cap = k * max_points_per_centroid
    if n > cap:
        # sample before converting: a float32 copy of a large (memmapped float16) corpus would not fit
        rows = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
        x = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    else:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed) & 0x7FFFFFFF, spherical=spherical,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1,
                      nredo=nredo, gpu=use_faiss_gpu(device), verbose=False)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray, *, device: str = "cpu",
                     batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, inner products float32) of each vector's nearest centroid, in batches."""
    index = flat_ip_index(centroids, device)
    labels = np.empty(len(vectors), dtype=np.int64)
    sims = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), batch):
        chunk = np.ascontiguousarray(vectors[start:start + batch], dtype=np.float32)
        s, i = index.search(chunk, 1)
        labels[start:start + len(chunk)] = i[:, 0]
        sims[start:start + len(chunk)] = s[:, 0]
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


def to_float32(matrix: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """A contiguous float32 copy of rows [start, stop) of a (possibly memmapped float16) matrix."""
    return np.ascontiguousarray(matrix[start:stop], dtype=np.float32)
