"""rsyn index: k-means the sentence embeddings into text semantic clusters and build the IVF index.

DESIGN.md section 1, step 7. An index directory holds:

  centroids.npy      (clusters, dim) float32 unit vectors: the text semantic clusters
  ivf.faiss          a faiss IVF index whose coarse quantizer holds exactly those centroids;
                     its inverted lists hold full vectors (ivf_flat) or PQ codes (ivf_pq)
  vectors.npy        ivf_pq only: the exact float16 vectors, memory-mapped at search time
                     to re-rank the PQ candidates exactly
  sentences.sqlite   sentences(row INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, doc TEXT);
                     `row` is the faiss id (retrieve and caption read it)
  meta.json          written last: the done marker (model, dim, counts, clusters, index type, parameters)

The directory is built under a hidden temporary name next to the target and
renamed into place, so a killed run never leaves a directory that looks done.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from rsyn import __version__
from rsyn.command import Run, RsynError
from rsyn.records import decode_embeddings
from rsyn.stream import STDIO, write_bytes_atomic
from rsyn.vectors import VectorSpill, to_float32, train_kmeans, use_faiss_gpu

FORMAT = "rsyn-index"
FORMAT_VERSION = 1
META, CENTROIDS, IVF, VECTORS, SENTENCES = "meta.json", "centroids.npy", "ivf.faiss", "vectors.npy", "sentences.sqlite"

# The paper put 0.84B sentences into 2M clusters: about 420 sentences per cluster.
SENTENCES_PER_CLUSTER = 420
# faiss warns below 39 training points per centroid; 64 keeps k-means affordable at scale.
POINTS_PER_CLUSTER = 64
BATCH = 8192          # records decoded per batch while reading
PQ_TRAINING_POINTS = 65536
MIN_PQ_TRAINING_POINTS = 1000
ADD_BATCH = 16384     # vectors read, converted to float32 and added to faiss per batch (32 MiB at 512-d)
ID_BYTES = 8          # faiss stores one int64 id per vector in the inverted lists


def default_clusters(count: int) -> int:
    """The paper's cluster size: about 420 sentences per cluster (at least one cluster)."""
    return max(1, round(count / SENTENCES_PER_CLUSTER))


def parse_size(text: str | None) -> int | None:
    """'8G', '512M', '2.5GiB', '1000000' -> bytes; None or 'auto' -> None."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in "KMGT" else s
    try:
        value = float(number) * scale
    except ValueError:
        raise RsynError(f"--max-memory {text!r}: expected a size such as 8G, 512M or auto") from None
    if not value > 0:
        raise RsynError(f"--max-memory {text!r}: must be positive")
    return int(value)


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass
class Layout:
    """Which inverted lists fit the memory budget: full vectors, or PQ codes of `pq_bytes` bytes."""

    index_type: str  # "ivf_flat" or "ivf_pq"
    pq_bytes: int | None
    index_bytes: int  # estimated resident size of the faiss index


def flat_bytes(count: int, dim: int, clusters: int) -> int:
    return count * (4 * dim + ID_BYTES) + clusters * dim * 4


def pq_bytes_options(dim: int) -> list[int]:
    """Code sizes faiss IVFPQ accepts for `dim` (the code size must divide the dimension), largest first."""
    return [m for m in (128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if m <= dim and dim % m == 0]


def choose_layout(count: int, dim: int, clusters: int, *, budget: int, index_type: str,
                  pq_bytes: int | None) -> Layout:
    """Flat lists when they fit `budget`; else the largest PQ code that does (or what was asked)."""
    flat = flat_bytes(count, dim, clusters)
    if index_type == "flat" or (index_type == "auto" and pq_bytes is None and flat <= budget):
        return Layout("ivf_flat", None, flat)

    def pq_size(m: int) -> int:
        return count * (m + ID_BYTES) + clusters * dim * 4

    options = pq_bytes_options(dim)
    if pq_bytes is not None:
        if pq_bytes not in options:
            raise RsynError(f"--pq-bytes {pq_bytes}: must divide the dimension {dim}; "
                            f"choose one of {', '.join(map(str, options))}")
        return Layout("ivf_pq", pq_bytes, pq_size(pq_bytes))
    fitting = [m for m in options if pq_size(m) <= budget]
    if not fitting:
        raise RsynError(f"--max-memory {budget / 2**30:.2f} GiB is too small: even {options[-1]}-byte PQ codes for "
                        f"{count:,} vectors need {pq_size(options[-1]) / 2**30:.2f} GiB")
    return Layout("ivf_pq", fitting[0], pq_size(fitting[0]))


# --------------------------------------------------------------------------- the command


def run_index(run: Run, *, clusters: int | None, max_memory: str | None, index_type: str,
              pq_bytes: int | None, points_per_cluster: int, niter: int) -> None:
    if run.output in (None, STDIO):
        raise RsynError("rsyn index writes a directory: give it with -o DIR")
    target = Path(run.output)
    check_replaceable(target)
    budget = parse_size(max_memory) or physical_memory() // 2
    run.declare_reasons(["not_text"])

    building = target.parent / f".{target.name}.rsyn-tmp-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        with VectorSpill(directory=building) as spill:
            corpus = read_sentences(run, spill, building / SENTENCES)
            if corpus.count == 0:
                raise RsynError("no text records with embeddings in the input: nothing to index")
            vectors = spill.finish()
            meta, timings = build(vectors, building, model=corpus.model, seed=run.seed, device=run.device,
                                  note=run.note, ignored={"not_text": run.dropped.get("not_text", 0)},
                                  clusters=clusters, budget=budget, index_type=index_type, pq_bytes=pq_bytes,
                                  points_per_cluster=points_per_cluster, niter=niter)
        sync_files(building)  # the data must be on disk before meta.json says the index is complete
        write_bytes_atomic(building / META, orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
        publish(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    run.extra.update({"indexed": corpus.count, "clusters": meta["clusters"], "index_type": meta["index_type"], **timings})
    run.count_out(corpus.count)
    run.note(f"{corpus.count:,} sentences in {meta['clusters']:,} clusters ({meta['index_type']}) -> {target}")


def check_replaceable(target: Path) -> None:
    """Refuse to replace anything that is not an rsyn index (or an empty directory)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise RsynError(f"{target}: exists and is not a directory")
    if not (target / META).exists() and any(target.iterdir()):
        raise RsynError(f"{target}: exists and is not an rsyn index directory; refusing to replace it")


def sync_files(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def publish(building: Path, target: Path) -> None:
    """Rename the finished directory into place; an older index there is swapped out, then removed."""
    if target.exists():
        old = target.parent / f".{target.name}.rsyn-old-{os.getpid()}"
        os.replace(target, old)
        os.replace(building, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(building, target)


# --------------------------------------------------------------------------- reading the stream


@dataclass
class Corpus:
    count: int = 0
    model: str | None = None


def read_sentences(run: Run, spill: VectorSpill, sqlite_path: Path) -> Corpus:
    """One pass over the stream: vectors to the disk spill, (row, id, text, doc) to SQLite."""
    corpus = Corpus()
    db = sqlite3.connect(sqlite_path)
    # a build directory is thrown away whole on failure, so no journal is needed
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE sentences(row INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, doc TEXT)")
    batch: list[tuple] = []  # (id, text, doc, emb, file, line)
    emb_length = None
    for record in run.records():
        if record.get("kind") != "text":
            run.drop(record, "not_text")
            continue
        emb, model, sid, text = record.get("emb"), record.get("emb_model"), record.get("id"), record.get("text")
        problem = None
        if type(emb) is not str:
            problem = ("missing_emb", "text record has no embedding 'emb' (run rsyn embed first)")
        elif type(model) is not str:
            problem = ("missing_emb_model", "text record has no 'emb_model'")
        elif type(sid) is not str or type(text) is not str:
            problem = ("missing_field", "text record needs string fields 'id' and 'text'")
        elif corpus.model is None:
            corpus.model, emb_length = model, len(emb)
        elif model != corpus.model:
            problem = ("model_mismatch", f"embedding from model {model!r}, but earlier sentences used "
                                         f"{corpus.model!r}; one index holds one model's embeddings")
        elif len(emb) != emb_length:
            problem = ("bad_emb", f"embedding length differs from the first sentence's "
                                  f"({len(emb)} vs {emb_length} base64 characters)")
        if problem:
            run.error(run.where, problem[1], record=record, reason=problem[0])
            continue
        doc = record.get("doc")
        batch.append((sid, text, doc if doc is None or type(doc) is str else str(doc), emb,
                      run.where_file, run.where_line))
        if len(batch) >= BATCH:
            _flush(run, batch, spill, db, corpus)
    _flush(run, batch, spill, db, corpus)
    db.commit()
    db.close()
    return corpus


def _flush(run: Run, batch: list[tuple], spill: VectorSpill, db: sqlite3.Connection, corpus: Corpus) -> None:
    if not batch:
        return
    matrix, batch = _decode_batch(run, batch)
    if len(batch):
        spill.add(matrix)
        start = corpus.count
        db.executemany("INSERT INTO sentences VALUES (?, ?, ?, ?)",
                       [(start + i, sid, text, doc) for i, (sid, text, doc, *_) in enumerate(batch)])
        corpus.count += len(batch)
    batch.clear()


def _decode_batch(run: Run, batch: list[tuple]) -> tuple[np.ndarray, list[tuple]]:
    """Decode a batch of embeddings at once; on failure find the bad ones to report them by line."""
    try:
        matrix = decode_embeddings([item[3] for item in batch])
    except ValueError:
        good = []
        for item in batch:
            try:
                decode_embeddings([item[3]])
                good.append(item)
            except ValueError as exc:
                _report(run, item, str(exc), "bad_emb")
        batch = good
        matrix = decode_embeddings([item[3] for item in batch]) if batch else np.zeros((0, 0), np.float32)
    if len(batch):
        norms = np.linalg.norm(matrix, axis=1)
        bad = ~(np.isfinite(norms) & (norms > 0.5))
        if bad.any():
            for i in np.flatnonzero(bad):
                _report(run, batch[i], "embedding is zero or not finite (embeddings must be unit vectors)", "bad_emb")
            keep = ~bad
            batch = [item for item, k in zip(batch, keep) if k]
            matrix = matrix[keep]
    return matrix, batch


def _report(run: Run, item: tuple, message: str, reason: str) -> None:
    sid, text, doc, emb, file, line = item
    run.error(f"{file}:{line}", message, record={"id": sid, "kind": "text", "text": text, "doc": doc, "emb": emb},
              reason=reason)


# --------------------------------------------------------------------------- building


def build(vectors: np.ndarray, out: Path, *, model: str, seed: int = 0, device: str = "cpu",
          note: Callable[[str], None] = print, ignored: dict | None = None, clusters: int | None = None,
          budget: int, index_type: str = "auto", pq_bytes: int | None = None,
          points_per_cluster: int = POINTS_PER_CLUSTER, niter: int = 20) -> tuple[dict, dict]:
    """Train the clusters, build the IVF index in `out`; return the metadata (not yet written) and timings.

    The metadata holds no times or paths, so the same input and seed rebuild a byte-identical directory.
    """
    import faiss

    n, dim = vectors.shape
    k = clusters or default_clusters(n)
    if k > n:
        note(f"--clusters {k} is more than the {n} sentences: using {n}")
        k = n
    layout = choose_layout(n, dim, k, budget=budget, index_type=index_type, pq_bytes=pq_bytes)
    note(f"{n:,} sentences of dim {dim}, {k:,} clusters, {layout.index_type}"
         + (f" ({layout.pq_bytes}-byte PQ codes, exact re-ranking from {VECTORS})" if layout.pq_bytes else "")
         + f", index ~{layout.index_bytes / 2**30:.2f} GiB of a {budget / 2**30:.1f} GiB budget")
    gpu = use_faiss_gpu(device)

    timer = _Timer()
    # PQ codebooks (256 codes per sub-vector) want more points than a small k-means does
    wanted = k * points_per_cluster if layout.pq_bytes is None else max(k * points_per_cluster, PQ_TRAINING_POINTS)
    sample = training_sample(vectors, wanted, seed=seed)
    if len(sample) < 39 * k and k > 1:
        note(f"only {len(sample) / k:.0f} training points per cluster (faiss advises >= 39)")
    with timer("kmeans_seconds"):
        centroids = train_kmeans(sample, k, seed=seed, niter=niter, device=device,
                                 max_points_per_centroid=max(points_per_cluster, 1), spherical=True)
    np.save(out / CENTROIDS, centroids)

    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    if layout.index_type == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, k, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True  # the coarse quantizer already holds the k-means centroids
    else:
        if len(sample) < MIN_PQ_TRAINING_POINTS:
            raise RsynError(f"ivf_pq needs at least {MIN_PQ_TRAINING_POINTS} training vectors, got {len(sample)}: "
                            f"use --index-type flat for a corpus this small")
        index = faiss.IndexIVFPQ(quantizer, dim, k, layout.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = int(seed) & 0x7FFFFFFF
        index.do_polysemous_training = False  # only useful for Hamming-distance search, which we do not use
        if len(sample) < 39 * 256:
            note(f"only {len(sample)} vectors to train 256 PQ codes per sub-vector (faiss advises >= 9984)")
        index.pq.cp.min_points_per_centroid = 1  # warned once above; faiss would repeat it per sub-vector
        with timer("pq_train_seconds"):
            index.train(sample)  # trains only the PQ: the quantizer is already full
    del sample

    with timer("add_seconds"):
        target = index_to_gpu(index, device) if gpu else index
        for _, chunk in row_chunks(vectors, ADD_BATCH):
            target.add(unit_rows(chunk))
        if gpu:
            index = faiss.index_gpu_to_cpu(target)
    faiss.write_index(index, str(out / IVF))
    if layout.index_type == "ivf_pq":
        with timer("vectors_seconds"):
            copy_to_npy(vectors, out / VECTORS)

    sizes = np.array([index.invlists.list_size(i) for i in range(k)], dtype=np.int64)
    files = {name: (out / name).stat().st_size for name in (IVF, CENTROIDS, SENTENCES, VECTORS)
             if (out / name).exists()}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "rsyn_version": __version__,
        "model": model,
        "dim": dim,
        "count": n,
        "clusters": k,
        "index_type": layout.index_type,
        "metric": "cosine (inner product of unit vectors)",
        "files": files,
        "parameters": {
            "seed": seed,
            "niter": niter,
            "points_per_cluster": points_per_cluster,
            "training_points": min(n, wanted),
            "pq_bytes": layout.pq_bytes,
            "max_memory_bytes": budget,
            "index_bytes_estimate": layout.index_bytes,
        },
        "cluster_sizes": {"min": int(sizes.min()), "median": float(np.median(sizes)), "max": int(sizes.max()),
                          "empty": int((sizes == 0).sum())},
        "ignored": ignored or {},
    }, timer.seconds


def training_sample(vectors: np.ndarray, size: int, *, seed: int) -> np.ndarray:
    """A seeded random sample of rows (all rows when the corpus is smaller), as float32."""
    n = len(vectors)
    if size >= n:
        return unit_rows(to_float32(vectors))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    sample = np.empty((size, vectors.shape[1]), dtype=np.float32)
    taken = 0
    for start, chunk in row_chunks(vectors, ADD_BATCH):  # one sequential pass, not random reads
        stop = np.searchsorted(rows, start + len(chunk))
        sample[taken:stop] = chunk[rows[taken:stop] - start]
        taken = stop
    return unit_rows(sample)


def row_chunks(vectors: np.ndarray, batch: int):
    """(start, float32 rows) in order. A disk-backed matrix is read with plain file reads rather than
    through its memory map, so the pages read do not stay in this process's resident memory."""
    n, dim = vectors.shape
    if not isinstance(vectors, np.memmap) or vectors.filename is None:
        for start in range(0, n, batch):
            yield start, to_float32(vectors, start, start + batch)
        return
    row_bytes = dim * vectors.dtype.itemsize
    with open(vectors.filename, "rb") as fh:
        for start in range(0, n, batch):
            count = min(batch, n - start)
            fh.seek(vectors.offset + start * row_bytes)
            rows = np.frombuffer(fh.read(count * row_bytes), dtype=vectors.dtype).reshape(count, dim)
            yield start, rows.astype(np.float32)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Re-normalise float32 rows in place: float16 storage leaves norms of 1 +- 1e-3, and the
    index should score exact cosines."""
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


def copy_to_npy(vectors: np.ndarray, path: Path) -> None:
    """The float16 vectors as a .npy file for re-ranking (written with file writes, not a memory map)."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f2", "fortran_order": False, "shape": vectors.shape})
        for _, chunk in row_chunks(vectors, ADD_BATCH):
            fh.write(chunk.astype("<f2").tobytes())


def index_to_gpu(index, device: str):
    """The index on the GPU of `device`. float16 lookup tables let large PQ codes fit the GPU's shared memory."""
    import faiss

    from rsyn.vectors import gpu_id

    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16LookupTables = True
    gpu_index = faiss.index_cpu_to_gpu(resources, gpu_id(device), index, options)
    gpu_index.referenced_objects = [resources]
    return gpu_index


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        import contextlib
        import time

        @contextlib.contextmanager
        def timed():
            start = time.perf_counter()
            yield
            self.seconds[name] = round(time.perf_counter() - start, 3)

        return timed()
