"""rsyn retrieve: hierarchical retrieval of the realistic texts of each image (docs/design.md, step 8).

For each image embedding: the `nprobe` nearest text semantic clusters first
(inter-cluster, over the k-means centroids), then the nearest sentences inside
them (intra-cluster). This is exactly a faiss IVF search whose coarse
quantizer holds the centroids. With PQ or 8-bit scalar (SQ8) lists the candidates are re-scored
exactly from the float16 vectors on disk, so every score is a true cosine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsyn.errors import first_line
from rsyn.index_dir import IVF, SENTENCES, VECTORS, check_files, open_sentences, read_meta, reranked, unusable
from rsyn.options.retrieve import RetrieveOptions
from rsyn.records import decode_embeddings
from rsyn.vectors import faiss_stdout_silenced, unit_rows, use_faiss_gpu

if TYPE_CHECKING:
    from rsyn.command import Run

BATCH = 4096  # images searched per faiss call
SCORE_DECIMALS = 5  # float16 embeddings carry about 3 significant digits; 5 keeps ties visible
DISTINCT_POOL = 4  # with --distinct, look at this many candidates per requested text
# float32 inner products of unit vectors stay within a few ulps of [-1, 1]; anything past this is damage
COSINE_TOLERANCE = 1 + 1e-4
# candidates per query re-scored exactly from vectors.npy, by index type: PQ codes rank coarsely, 8-bit scalar
# codes nearly as float32 does (docs/retrieval.md measures both)
RERANK = {"ivf_pq": 200, "ivf_sq8": 16}
CHUNK = 256  # queries whose candidate vectors are gathered at once (re-ranking, --distinct)


class IndexDirectory:
    """An index directory opened for search; refuses one that is incomplete or corrupt with one line.

    The inverted lists are memory-mapped, not read into this process: several retrieve processes on one
    node share one copy of the index through the page cache. Unless `verify` is off, every file's
    checksum in meta.json is checked first (one sequential read, which also warms that cache).
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", verify: bool = True) -> None:
        import faiss

        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.model: str = self.meta["model"]
        self.dim: int = self.meta["dim"]
        self.count: int = self.meta["count"]
        self.index_type: str = self.meta["index_type"]
        check_files(self.path, self.meta, verify=verify)
        # an in-file index is mapped where its lists lie in ivf.faiss; on-disk lists lie in lists.ivfdata
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR if self.meta.get("lists") == "on_disk" else faiss.IO_FLAG_MMAP
        try:
            with faiss_stdout_silenced():  # it prints where it found the on-disk lists
                index = faiss.read_index(str(self.path / IVF), flags)
        except RuntimeError as exc:
            self._corrupt(f"{IVF} cannot be read by faiss ({first_line(exc)})")
        if not isinstance(index, faiss.IndexIVF):
            self._corrupt(f"{IVF} holds a {type(index).__name__}, not an IVF index")
        if index.ntotal != self.count or index.d != self.dim or index.nlist != self.meta["clusters"]:
            self._corrupt(
                f"{IVF} holds {index.ntotal} vectors of dim {index.d} in {index.nlist} lists, "
                f"meta.json says {self.count} of dim {self.dim} in {self.meta['clusters']}"
            )
        self.cpu_index = index
        self.index = index
        if use_faiss_gpu(device):
            from rsyn.stages.index import index_to_gpu

            self.index = index_to_gpu(index, device)
        self.vectors = None
        if reranked(self.index_type):
            try:
                self.vectors = np.load(self.path / VECTORS, mmap_mode="r")
            except (ValueError, OSError) as exc:
                self._corrupt(f"{VECTORS} cannot be read ({first_line(exc)})")
            if self.vectors.shape != (self.count, self.dim):
                self._corrupt(f"{VECTORS} has shape {self.vectors.shape}, expected {(self.count, self.dim)}")
        self.db = open_sentences(self.path, self.count)

    def _corrupt(self, message: str):
        raise unusable(self.path, message)

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int, *, nprobe: int, rerank: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the k best sentences per query, best first; rows are -1 where fewer exist.

        Scores are exact cosines: ivf_flat lists hold the vectors themselves; ivf_pq and ivf_sq8 candidates
        (max(k, rerank) of them; `rerank` None: the index type's RERANK) are re-scored from the float16
        vectors on disk.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = min(nprobe, self.meta["clusters"])
        if rerank is None:
            rerank = RERANK.get(self.index_type, 0)
        pool = max(k, rerank) if self.vectors is not None else k
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if self.index is self.cpu_index:
            scores, rows = self.index.search(queries, pool, params=params)
        else:
            faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)
            scores, rows = self.index.search(queries, pool)
        if self.vectors is not None:
            scores, rows = self._rescore(queries, rows, k)
        found = scores[rows >= 0]
        if found.size and not (np.abs(found) <= COSINE_TOLERANCE).all():  # NaN fails too
            self._corrupt(f"{IVF} gives scores outside [-1, 1], which no cosine can be: the index is damaged")
        return scores, rows

    def _rescore(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        exact = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, len(rows), CHUNK):  # bounds the (queries, candidates, dim) block in memory
            part = slice(start, start + CHUNK)
            exact[part] = np.einsum("qd,qkd->qk", queries[part], self.sentence_vectors(rows[part]))
        exact[rows < 0] = -np.inf
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)

    def sentence_vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of `rows` (any shape; -1 gives zeros), read in row order for locality."""
        flat = rows.reshape(-1)
        unique, inverse = np.unique(flat, return_inverse=True)
        valid = unique >= 0
        table = np.zeros((len(unique), self.dim), dtype=np.float32)
        if self.vectors is not None:
            table[valid] = unit_rows(np.asarray(self.vectors[unique[valid]], dtype=np.float32))
        else:
            if not getattr(self, "_direct_map", False):
                self.cpu_index.make_direct_map()
                self._direct_map = True
            table[valid] = self.cpu_index.reconstruct_batch(unique[valid])
        return table[inverse].reshape(*rows.shape, self.dim)

    def sentences(self, rows: np.ndarray) -> dict[int, tuple[str, str]]:
        """row -> (id, text) for the given faiss rows."""
        wanted = np.unique(rows[rows >= 0]).tolist()
        found: dict[int, tuple[str, str]] = {}
        for start in range(0, len(wanted), 30000):  # below SQLite's bound on query parameters
            chunk = wanted[start : start + 30000]
            marks = ",".join("?" * len(chunk))
            for row, sid, text in self.db.execute(f"SELECT row, id, text FROM sentences WHERE row IN ({marks})", chunk):
                found[row] = (sid, text)
        if len(found) != len(wanted):
            self._corrupt(f"{SENTENCES} lacks rows that {IVF} returns")
        return found

    def close(self) -> None:
        self.db.close()


def distinct_choice(
    scores: np.ndarray, rows: np.ndarray, vectors: np.ndarray, k: int, max_similarity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy, best first: skip a candidate whose cosine to a text already taken is >= max_similarity."""
    pair = np.einsum("qid,qjd->qij", vectors, vectors)  # candidate-to-candidate cosines per query
    out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(rows), k), -1, dtype=np.int64)
    for q in range(len(rows)):
        taken: list[int] = []
        for j in range(rows.shape[1]):
            if rows[q, j] < 0:
                break
            if all(rows[q, t] != rows[q, j] and pair[q, j, t] < max_similarity for t in taken):
                taken.append(j)
                if len(taken) == k:
                    break
        out_rows[q, : len(taken)] = rows[q, taken]
        out_scores[q, : len(taken)] = scores[q, taken]
    return out_scores, out_rows


# --------------------------------------------------------------------------- the command


def run_retrieve(run: Run, opts: RetrieveOptions) -> None:
    index_dir, k, nprobe, rerank, distinct = opts.index_dir, opts.k, opts.nprobe, opts.rerank, opts.distinct
    verify = opts.verify

    index = IndexDirectory(index_dir, device=run.faiss_device, verify=verify)
    run.note(
        f"index {index_dir}: {index.count:,} sentences in {index.meta['clusters']:,} clusters "
        f"({index.index_type}), model {index.model}, nprobe {min(nprobe, index.meta['clusters'])}"
    )
    run.extra.update({"nprobe": nprobe, "k": k, "images": 0, "passed_through": 0})
    pending: list[dict | None] = []  # every record in input order; images wait for their batch's search
    queries: list[tuple[int, str, str]] = []  # (position in pending, emb, where)

    def flush() -> None:
        _search_batch(run, index, pending, queries, k=k, nprobe=nprobe, rerank=rerank, distinct=distinct)
        run.write(r for r in pending if r is not None)
        pending.clear()
        queries.clear()

    try:
        for record in run.records():
            if record.get("kind") == "image" and _usable_image(run, record, index, index_dir):
                queries.append((len(pending), record["emb"], run.where))
            elif record.get("kind") == "image":
                continue  # reported (or counted and logged with --on-error skip)
            else:
                run.extra["passed_through"] += 1
            pending.append(record)
            # a long run of passed-through records must not pile up behind a batch of images
            if len(queries) >= BATCH or len(pending) >= 4 * BATCH:
                flush()
        flush()
    finally:
        index.close()


def _usable_image(run: Run, record: dict, index: IndexDirectory, index_dir: str) -> bool:
    emb, model = record.get("emb"), record.get("emb_model")
    if type(emb) is not str or type(model) is not str:
        run.error(
            run.where,
            "image record has no embedding 'emb' with its 'emb_model' (run rsyn embed first)",
            record=record,
            reason="missing_emb",
        )
        return False
    if model != index.model:
        run.error(
            run.where,
            f"image embedding from model {model!r}, but the index {index_dir} was built "
            f"with {index.model!r}: embed both with the same model",
            record=record,
            reason="model_mismatch",
        )
        return False
    return True


def _search_batch(
    run: Run,
    index: IndexDirectory,
    pending: list,
    queries: list,
    *,
    k: int,
    nprobe: int,
    rerank: int | None,
    distinct: float | None,
) -> None:
    if not queries:
        return
    matrix, queries = _decode_queries(run, index, pending, queries)
    if not queries:
        return
    pool = k * DISTINCT_POOL if distinct is not None else k
    scores, rows = index.search(matrix, pool, nprobe=nprobe, rerank=rerank)
    if distinct is not None:
        chosen = [
            distinct_choice(
                scores[i : i + CHUNK], rows[i : i + CHUNK], index.sentence_vectors(rows[i : i + CHUNK]), k, distinct
            )
            for i in range(0, len(rows), CHUNK)
        ]
        scores, rows = np.concatenate([c[0] for c in chosen]), np.concatenate([c[1] for c in chosen])
    found = index.sentences(rows)
    rounded = np.round(scores.astype(np.float64), SCORE_DECIMALS).tolist()
    for (position, _, _), q_rows, q_scores in zip(queries, rows.tolist(), rounded):
        pending[position]["texts"] = [
            {"id": found[r][0], "text": found[r][1], "score": s} for r, s in zip(q_rows, q_scores) if r >= 0
        ]
    run.extra["images"] += len(queries)


def _decode_queries(run: Run, index: IndexDirectory, pending: list, queries: list) -> tuple[np.ndarray, list]:
    """Decode the batch's embeddings at once; report bad ones (by place) and leave them out of the output."""
    try:
        matrix = decode_embeddings([q[1] for q in queries], index.dim)
    except ValueError:
        good = []
        for q in queries:
            try:
                decode_embeddings([q[1]], index.dim)
                good.append(q)
            except ValueError as exc:
                _reject(run, pending, q, f"bad image embedding: {exc}")
        queries = good
        matrix = decode_embeddings([q[1] for q in queries], index.dim) if queries else np.zeros((0, index.dim))
    norms = np.linalg.norm(matrix, axis=1)
    usable = np.isfinite(norms) & (norms > 0.5)
    if not usable.all():
        for i in np.flatnonzero(~usable):
            _reject(run, pending, queries[i], "image embedding is zero or not finite (embeddings are unit vectors)")
        queries = [q for q, ok in zip(queries, usable) if ok]
        matrix, norms = matrix[usable], norms[usable]
    # float16 rounding leaves norms of 1 +- 1e-3; re-normalise so scores are exact cosines
    return matrix / norms[:, None], queries


def _reject(run: Run, pending: list, query: tuple, message: str) -> None:
    position, _, where = query
    run.error(where, message, record=pending[position], reason="bad_emb")
    pending[position] = None
