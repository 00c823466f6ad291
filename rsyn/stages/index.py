"""rsyn index: k-means the sentence embeddings into text semantic clusters and build the IVF index.

docs/design.md, step 7. The index is built by four passes, each its own process on a cluster
(`rsyn index collect | train | add | merge`); plain `rsyn index` runs the same four functions in one
process, one after the other:

  collect (per shard of the stream)   part dir: sentences.sqlite (rows local to the part), vectors.f16,
                                      keys.i64 (each sentence's input place), part.json (done marker)
  train (once, on a sample)           train dir: centroids.npy, trained.faiss (the empty IVF index, its
                                      PQ trained), train.json (done marker; the flat/PQ choice)
  add (per range of parts)            add dir: lists.faiss (those parts' vectors, global row ids), add.json
  merge (once)                        the index directory below

The index directory itself (its files, meta.json, how it is opened) is rsyn/index_dir.py.

Rows are numbered in input order (input file, then line), whichever way the stream was split into
parts, so the passes give the same index, byte for byte, as the one-process run. Every directory is
built under a hidden temporary name next to its target and renamed into place, so a killed run never
leaves a directory that looks done; temporaries of dead runs are removed by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from rsyn import __version__
from rsyn.errors import RsynError
from rsyn.index_dir import (
    CENTROIDS,
    IVF,
    META,
    ONDISK_LISTS,
    SENTENCES,
    VECTORS,
    create_sentences,
    file_checksum,
    publish,
    reranked,
    write_json,
)
from rsyn.options.index import IndexAddOptions, IndexMergeOptions, IndexTrainOptions
from rsyn.records import decode_embeddings
from rsyn.stream import STDIO, AtomicDirectory, expand_inputs
from rsyn.vectors import faiss_stdout_silenced, train_kmeans, unit_rows, use_faiss_gpu

if TYPE_CHECKING:
    from rsyn.command import Run

PART_MARKER, PART_VECTORS, PART_KEYS = "part.json", "vectors.f16", "keys.i64"
TRAIN_MARKER, TRAINED = "train.json", "trained.faiss"
ADD_MARKER, ADDED = "add.json", "lists.faiss"
MARKERS = {
    META: "an rsyn index",
    PART_MARKER: "an index collect part",
    TRAIN_MARKER: "an index train directory",
    ADD_MARKER: "an index add directory",
}
PASSES = "rsyn index collect --shard K/N, rsyn index train, rsyn index add --part K/N, rsyn index merge"

# The paper put 0.84B sentences into 2M clusters: about 420 sentences per cluster.
SENTENCES_PER_CLUSTER = 420
# faiss warns below 39 training points per centroid; 64 keeps k-means affordable at scale.
POINTS_PER_CLUSTER = 64
BATCH = 8192  # records decoded per batch while reading
PQ_TRAINING_POINTS = 65536
MIN_PQ_TRAINING_POINTS = 1000
ADD_BATCH = 16384  # vectors read, converted to float32 and added to faiss per batch (32 MiB at 512-d)
# auto: flat lists larger than this become 8-bit scalar codes (re-ranked exactly): scanning a quarter of the bytes
# made whole retrieve commands about twice as fast at 1M x 1024 with the same recall (docs/retrieval.md)
SQ8_FROM_BYTES = 1 << 30
ID_BYTES = 8  # faiss stores one int64 id per vector in the inverted lists
LINE_BITS = 40  # a sentence's input place as one int64: file number << 40 | line number


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
class Budget:
    """The memory budget for the index and where it came from (printed and recorded in meta.json)."""

    bytes: int
    source: str  # "--max-memory 8G" or "auto: half of this machine's 31.2 GiB"

    @classmethod
    def from_option(cls, max_memory: str | None) -> Budget:
        pinned = parse_size(max_memory)
        if pinned is not None:
            return cls(pinned, f"--max-memory {max_memory.strip()}")
        ram = physical_memory()
        return cls(ram // 2, f"auto: half of this machine's {ram / 2**30:.1f} GiB RAM")


@dataclass
class Layout:
    """Which inverted lists fit the memory budget: full vectors, 8-bit scalar codes, or PQ codes of `pq_bytes` bytes."""

    index_type: str  # "ivf_flat", "ivf_sq8" or "ivf_pq"
    pq_bytes: int | None
    index_bytes: int  # estimated resident size of the faiss index


def flat_bytes(count: int, dim: int, clusters: int) -> int:
    return count * (4 * dim + ID_BYTES) + clusters * dim * 4


def sq8_bytes(count: int, dim: int, clusters: int) -> int:
    return count * (dim + ID_BYTES) + clusters * dim * 4


def pq_bytes_options(dim: int) -> list[int]:
    """Code sizes faiss IVFPQ accepts for `dim` (the code size must divide the dimension), largest first."""
    return [m for m in (128, 96, 64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if m <= dim and dim % m == 0]


def choose_layout(count: int, dim: int, clusters: int, *, budget: int, index_type: str, pq_bytes: int | None) -> Layout:
    """auto: flat lists up to SQ8_FROM_BYTES (when they fit `budget`), 8-bit scalar codes above it (when they fit),
    else the largest PQ code that fits. Or the type that was asked for."""
    flat = flat_bytes(count, dim, clusters)
    sq8 = sq8_bytes(count, dim, clusters)
    if index_type == "sq8":
        return Layout("ivf_sq8", None, sq8)
    auto = index_type == "auto" and pq_bytes is None
    if index_type == "flat" or (auto and flat <= min(budget, SQ8_FROM_BYTES)):
        return Layout("ivf_flat", None, flat)
    if auto and sq8 <= budget:
        return Layout("ivf_sq8", None, sq8)

    def pq_size(m: int) -> int:
        return count * (m + ID_BYTES) + clusters * dim * 4

    options = pq_bytes_options(dim)
    if pq_bytes is not None:
        if pq_bytes not in options:
            raise RsynError(
                f"--pq-bytes {pq_bytes}: must divide the dimension {dim}; choose one of {', '.join(map(str, options))}"
            )
        return Layout("ivf_pq", pq_bytes, pq_size(pq_bytes))
    fitting = [m for m in options if pq_size(m) <= budget]
    if not fitting:
        raise RsynError(
            f"--max-memory {budget / 2**30:.2f} GiB is too small: even {options[-1]}-byte PQ codes for "
            f"{count:,} vectors need {pq_size(options[-1]) / 2**30:.2f} GiB"
        )
    return Layout("ivf_pq", fitting[0], pq_size(fitting[0]))


# --------------------------------------------------------------------------- directories


@contextlib.contextmanager
def building_directory(target: Path | str | None) -> Iterator[Path]:
    """An empty hidden directory next to `target`, renamed to `target` when the body ends without error.

    The body writes its done marker last; an older directory of rsyn's index passes at `target` is replaced,
    anything else is refused. Temporaries that killed runs left beside `target` are removed first.
    """
    if target in (None, STDIO):
        raise RsynError("this command writes a directory: give it with -o DIR")
    with AtomicDirectory(target, marker=MARKERS, overwrite=True) as out:  # OutputExists is an RsynError
        yield out.tmp


def _read_marker(directory: Path, marker: str, fmt: str, what: str) -> dict:
    try:
        content = orjson.loads((directory / marker).read_bytes())
    except FileNotFoundError:
        raise RsynError(f"{directory}: not a finished {what} (no {marker}; did its pass finish?)") from None
    except (orjson.JSONDecodeError, OSError) as exc:
        raise RsynError(f"{directory}: {marker} cannot be read ({type(exc).__name__})") from None
    if not isinstance(content, dict) or content.get("format") != fmt:
        raise RsynError(f"{directory}: {marker} does not describe {what}")
    return content


# --------------------------------------------------------------------------- pass 1: collect


PART_FORMAT, TRAIN_FORMAT, ADD_FORMAT = "rsyn-index-part", "rsyn-index-train", "rsyn-index-add"


@dataclass
class Part:
    """A finished collect part: its directory and part.json."""

    path: Path
    info: dict

    @property
    def count(self) -> int:
        return self.info["count"]

    @property
    def identity(self) -> str:
        return self.info["identity"]

    def vectors(self) -> np.ndarray:
        if self.count == 0:
            return np.zeros((0, self.info["dim"]), dtype="<f2")
        return np.memmap(self.path / PART_VECTORS, dtype="<f2", mode="r", shape=(self.count, self.info["dim"]))

    def keys(self) -> np.ndarray:
        if self.count == 0:
            return np.zeros(0, dtype="<i8")
        return np.memmap(self.path / PART_KEYS, dtype="<i8", mode="r", shape=(self.count,))


class PartWriter:
    """Writes a collect part: sentences (SQLite, rows local to the part), float16 vectors, input places."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.count = 0
        self.dim: int | None = None
        self.db = create_sentences(out / SENTENCES)
        self.vectors = open(out / PART_VECTORS, "wb")
        self.keys = open(out / PART_KEYS, "wb")

    def add(self, matrix: np.ndarray, keys: np.ndarray, rows: list[tuple[str, str, str | None]]) -> None:
        """Sentences (id, text, doc) with their vectors and input places (file number << 40 | line)."""
        if not rows:
            return
        self.dim = self.dim or matrix.shape[1]
        self.vectors.write(np.ascontiguousarray(matrix, dtype="<f2").tobytes())
        self.keys.write(np.asarray(keys, dtype="<i8").tobytes())
        self.db.executemany(
            "INSERT INTO sentences VALUES (?, ?, ?, ?)", [(self.count + i, *row) for i, row in enumerate(rows)]
        )
        self.count += len(rows)

    def finish(self, *, model: str | None, inputs: list[str], shard: str | None, ignored: dict, errors: dict) -> dict:
        """Close the files and write part.json, last; return it."""
        self.vectors.close()
        self.keys.close()
        self.db.commit()
        self.db.close()
        keys = np.fromfile(self.out / PART_KEYS, dtype="<i8", count=1), self._last_key()
        info = {
            "format": PART_FORMAT,
            "model": model,
            "dim": self.dim,
            "count": self.count,
            "ignored": ignored,
            "errors": errors,
            "shard": shard,
            "inputs": inputs,
            "first_key": int(keys[0][0]) if self.count else -1,
            "last_key": keys[1],
        }
        # what add and merge check that they were given the same parts as train: content, not path
        info["identity"] = hashlib.blake2b(
            orjson.dumps(info, option=orjson.OPT_SORT_KEYS) + file_checksum(self.out / PART_KEYS).encode(),
            digest_size=8,
        ).hexdigest()
        write_json(self.out / PART_MARKER, info)
        return info

    def _last_key(self) -> int:
        if not self.count:
            return -1
        with open(self.out / PART_KEYS, "rb") as fh:
            fh.seek(-8, os.SEEK_END)
            return int(np.frombuffer(fh.read(8), dtype="<i8")[0])


def collect_part(run: Run, out: Path) -> dict:
    """Read this shard of the sentence stream into `out` (a PartWriter); return part.json, written last."""
    run.declare_reasons(["not_text"])
    inputs = expand_inputs(run.inputs)
    files = {("<stdin>" if path == STDIO else path): i for i, path in enumerate(inputs)}
    writer = PartWriter(out)
    state = {"model": None, "emb_length": None}
    batch: list[tuple] = []  # (id, text, doc, emb, file, line)

    def flush() -> None:
        matrix, kept = _decode_batch(run, batch)
        keys = [(files.setdefault(file, len(files)) << LINE_BITS) | line for *_, file, line in kept]
        writer.add(matrix, np.array(keys, dtype=np.int64), [(sid, text, doc) for sid, text, doc, *_ in kept])
        batch.clear()

    for record in run.records():
        if record.get("kind") != "text":
            run.drop(record, "not_text")
            continue
        problem = _sentence_problem(record, state)
        if problem:
            run.error(run.where, problem[1], record=record, reason=problem[0])
            continue
        doc = record.get("doc")
        batch.append(
            (
                record["id"],
                record["text"],
                doc if doc is None or type(doc) is str else str(doc),
                record["emb"],
                run.where_file,
                run.where_line,
            )
        )
        if len(batch) >= BATCH:
            flush()
    flush()
    return writer.finish(
        model=state["model"],
        inputs=inputs,
        shard=f"{run.shard[0]}/{run.shard[1]}" if run.shard else None,
        ignored={"not_text": run.dropped.get("not_text", 0)},
        errors=dict(run.errors),
    )


def _sentence_problem(record: dict, state: dict) -> tuple[str, str] | None:
    emb, model, sid, text = record.get("emb"), record.get("emb_model"), record.get("id"), record.get("text")
    if type(emb) is not str:
        return "missing_emb", "text record has no embedding 'emb' (run rsyn embed first)"
    if type(model) is not str:
        return "missing_emb_model", "text record has no 'emb_model'"
    if type(sid) is not str or type(text) is not str:
        return "missing_field", "text record needs string fields 'id' and 'text'"
    if state["model"] is None:
        state["model"], state["emb_length"] = model, len(emb)
    elif model != state["model"]:
        return "model_mismatch", (
            f"embedding from model {model!r}, but earlier sentences used "
            f"{state['model']!r}; one index holds one model's embeddings"
        )
    elif len(emb) != state["emb_length"]:
        return "bad_emb", (
            f"embedding length differs from the first sentence's "
            f"({len(emb)} vs {state['emb_length']} base64 characters)"
        )
    return None


def _decode_batch(run: Run, batch: list[tuple]) -> tuple[np.ndarray, list[tuple]]:
    """Decode a batch of embeddings at once; on failure find the bad ones to report them by line."""
    if not batch:
        return np.zeros((0, 0), np.float32), []
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
    run.error(
        f"{file}:{line}",
        message,
        record={"id": sid, "kind": "text", "text": text, "doc": doc, "emb": emb},
        reason=reason,
    )


def open_parts(paths: list[str | Path]) -> list[Part]:
    """Finished collect parts, in the order given; one model and dimension; empty parts allowed."""
    if not paths:
        raise RsynError("give the collect part directories (from rsyn index collect -o DIR) in order")
    parts = [Part(Path(p), _read_marker(Path(p), PART_MARKER, PART_FORMAT, "index collect part")) for p in paths]
    full = [p for p in parts if p.count]
    if not full:
        raise RsynError("no text records with embeddings in the input: nothing to index")
    first = full[0]
    for part in full[1:]:
        if (part.info["model"], part.info["dim"]) != (first.info["model"], first.info["dim"]):
            raise RsynError(
                f"{part.path}: embeddings from model {part.info['model']!r} (dim {part.info['dim']}), "
                f"but {first.path} has {first.info['model']!r} (dim {first.info['dim']}); "
                f"one index holds one model's embeddings"
            )
    if len({p.identity for p in parts}) != len(parts):
        raise RsynError("the same collect part is given twice")
    return parts


# --------------------------------------------------------------------------- rows in input order


def in_input_order(parts: list[Part]) -> bool:
    """True when rows are plain offsets: each part's sentences all come before the next part's.

    Parts that are shards of one stream (the same inputs, --shard K/N) are numbered in input order, and
    record-position shards interleave; parts collected from different inputs are concatenated as given.
    """
    full = [p for p in parts if p.count]
    one_stream = len({orjson.dumps(p.info["inputs"]) for p in full}) == 1 and all(p.info["shard"] for p in full)
    return not one_stream or all(a.info["last_key"] < b.info["first_key"] for a, b in zip(full, full[1:]))


def part_rows(parts: list[Part], p: int) -> np.ndarray:
    """Global rows (input order over all parts) of part p's sentences: an offset when the parts are
    contiguous, else, as with record-position shards, its place among every part's input places."""
    part = parts[p]
    if in_input_order(parts):
        start = sum(q.count for q in parts[:p])
        return np.arange(start, start + part.count, dtype=np.int64)
    keys = np.asarray(part.keys())
    rows = np.arange(part.count, dtype=np.int64)
    for q, other in enumerate(parts):
        if q != p and other.count:
            # two sentences never share an input place, unless a file was given twice: then part order
            rows += np.searchsorted(other.keys(), keys, side="right" if q < p else "left")
    return rows


# --------------------------------------------------------------------------- pass 2: train


def train_index(
    parts: list[Part],
    out: Path,
    *,
    clusters: int | None,
    budget: Budget,
    index_type: str,
    pq_bytes: int | None,
    points_per_cluster: int,
    niter: int,
    seed: int,
    device: str,
    note: Callable[[str], None],
) -> dict:
    """k-means centroids on a seeded sample, the flat/PQ choice, and the empty trained IVF index in `out`."""
    import faiss

    n = sum(p.count for p in parts)
    dim = next(p.info["dim"] for p in parts if p.count)
    model = next(p.info["model"] for p in parts if p.count)
    k = clusters or default_clusters(n)
    if k > n:
        note(f"--clusters {k} is more than the {n} sentences: using {n}")
        k = n
    layout = choose_layout(n, dim, k, budget=budget.bytes, index_type=index_type, pq_bytes=pq_bytes)
    note(
        f"{n:,} sentences of dim {dim}, {k:,} clusters; chose {layout.index_type}"
        + (f" ({layout.pq_bytes}-byte PQ codes, exact re-ranking from {VECTORS})" if layout.pq_bytes else "")
        + (f" (8-bit scalar codes, exact re-ranking from {VECTORS})" if layout.index_type == "ivf_sq8" else "")
        + (
            f" instead of ivf_flat (flat lists ~{flat_bytes(n, dim, k) / 2**30:.2f} GiB, over "
            f"{SQ8_FROM_BYTES / 2**30:.0f} GiB)"
            if layout.index_type == "ivf_sq8" and index_type == "auto"
            else ""
        )
        + f": index ~{layout.index_bytes / 2**30:.2f} GiB, budget {budget.bytes / 2**30:.1f} GiB ({budget.source})"
    )
    timer = _Timer()
    # PQ codebooks (256 codes per sub-vector) want more points than a small k-means does
    wanted = k * points_per_cluster if layout.pq_bytes is None else max(k * points_per_cluster, PQ_TRAINING_POINTS)
    with timer("sample_seconds"):
        sample = training_sample(parts, wanted, seed=seed)
    if len(sample) < 39 * k and k > 1:
        note(f"only {len(sample) / k:.0f} training points per cluster (faiss advises >= 39)")
    with timer("kmeans_seconds"):
        centroids = train_kmeans(
            sample,
            k,
            seed=seed,
            niter=niter,
            device=device,
            max_points_per_centroid=max(points_per_cluster, 1),
            spherical=True,
        )
    np.save(out / CENTROIDS, centroids)

    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    if layout.index_type == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, k, faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True  # the coarse quantizer already holds the k-means centroids
    elif layout.index_type == "ivf_sq8":
        # one byte per dimension (a quarter of float32 to scan), the residual to the list's centroid quantized
        # between per-dimension bounds taken from the sample (deterministic: min and max, no randomness)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, k, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, True
        )
        with timer("sq_train_seconds"):
            index.train(sample)  # trains only the scalar quantizer: the coarse quantizer is already full
    else:
        if len(sample) < MIN_PQ_TRAINING_POINTS:
            raise RsynError(
                f"ivf_pq needs at least {MIN_PQ_TRAINING_POINTS} training vectors, got {len(sample)}: "
                f"use --index-type flat for a corpus this small"
            )
        index = faiss.IndexIVFPQ(quantizer, dim, k, layout.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = int(seed) & 0x7FFFFFFF
        index.do_polysemous_training = False  # only useful for Hamming-distance search, which we do not use
        if len(sample) < 39 * 256:
            note(f"only {len(sample)} vectors to train 256 PQ codes per sub-vector (faiss advises >= 9984)")
        index.pq.cp.min_points_per_centroid = 1  # warned once above; faiss would repeat it per sub-vector
        with timer("pq_train_seconds"):
            index.train(sample)  # trains only the PQ: the quantizer is already full
    faiss.write_index(index, str(out / TRAINED))
    info = {
        "format": TRAIN_FORMAT,
        "model": model,
        "dim": dim,
        "count": n,
        "clusters": k,
        "index_type": layout.index_type,
        "layout": {
            "pq_bytes": layout.pq_bytes,
            "index_bytes_estimate": layout.index_bytes,
            "memory_budget_bytes": budget.bytes,
            "chosen_by": budget.source
            if index_type == "auto" and pq_bytes is None
            else f"--index-type {index_type}" + (f" --pq-bytes {pq_bytes}" if pq_bytes else ""),
        },
        "parameters": {
            "seed": seed,
            "niter": niter,
            "points_per_cluster": points_per_cluster,
            "training_points": len(sample),
            "pq_bytes": layout.pq_bytes,
        },
        "parts": [p.identity for p in parts],
        "centroids_checksum": file_checksum(out / CENTROIDS),
        "seconds": timer.seconds,
    }
    write_json(out / TRAIN_MARKER, info)
    return info


def training_sample(parts: list[Part], size: int, *, seed: int) -> np.ndarray:
    """A seeded random sample of global rows (all rows when the corpus is smaller), as unit float32 rows
    in row order: the same sample whichever way the corpus is split into parts."""
    n = sum(p.count for p in parts)
    dim = next(p.info["dim"] for p in parts if p.count)
    wanted = np.arange(n) if size >= n else np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    sample = np.empty((len(wanted), dim), dtype=np.float32)
    for p, part in enumerate(parts):
        if not part.count:
            continue
        rows = part_rows(parts, p)
        local = np.searchsorted(rows, wanted).clip(max=part.count - 1)
        here = np.flatnonzero(rows[local] == wanted)  # sample positions this part holds
        local = local[here]
        taken = 0
        for start, chunk in row_chunks(part.vectors(), ADD_BATCH):  # one sequential pass, not random reads
            stop = np.searchsorted(local, start + len(chunk))
            sample[here[taken:stop]] = chunk[local[taken:stop] - start]
            taken = stop
    return unit_rows(sample)


def open_trained(path: Path, parts: list[Part]) -> dict:
    info = _read_marker(path, TRAIN_MARKER, TRAIN_FORMAT, "index train directory")
    if info["parts"] != [p.identity for p in parts]:
        raise RsynError(
            f"{path} was trained on other collect parts than the {len(parts)} given "
            f"(give the same part directories, in the same order, to every pass)"
        )
    return info


# --------------------------------------------------------------------------- pass 3: add


def part_range(count: int, part: tuple[int, int] | None) -> range:
    """The K-th of N contiguous ranges of `count` parts (all of them without --part)."""
    k, n = part or (0, 1)
    return range(k * count // n, (k + 1) * count // n)


def add_parts(parts: list[Part], which: range, trained: Path, out: Path, *, device: str) -> dict:
    """The vectors of parts[which] added to the trained index under their global rows, written to `out`."""
    import faiss

    info = open_trained(trained, parts)
    index = faiss.read_index(str(trained / TRAINED))
    gpu = use_faiss_gpu(device)
    target = index_to_gpu(index, device) if gpu else index
    for p in which:
        rows = part_rows(parts, p)
        for start, chunk in row_chunks(parts[p].vectors(), ADD_BATCH):
            target.add_with_ids(unit_rows(chunk), rows[start : start + len(chunk)])
    if gpu:
        index = faiss.index_gpu_to_cpu(target)
    faiss.write_index(index, str(out / ADDED))
    added = {
        "format": ADD_FORMAT,
        "parts": [parts[p].identity for p in which],
        "count": int(index.ntotal),
        "centroids_checksum": info["centroids_checksum"],
    }
    write_json(out / ADD_MARKER, added)
    return added


# --------------------------------------------------------------------------- pass 4: merge


def merge_index(
    parts: list[Part], trained: Path, added: list[Path], out: Path, *, on_disk: bool, note: Callable[[str], None]
) -> dict:
    """The index directory in `out` from the parts' rows, the trained index and the added lists, in input order.

    In RAM the lists are merged into one ivf.faiss (memory: the whole index); --on-disk writes them to
    lists.ivfdata through faiss's on-disk inverted lists (memory: one list at a time). meta.json is last.
    """
    import faiss

    info = open_trained(trained, parts)
    adds = [_read_marker(Path(a), ADD_MARKER, ADD_FORMAT, "index add directory") for a in added]
    covered = [identity for a in adds for identity in a["parts"]]
    if covered != [p.identity for p in parts]:
        raise RsynError(
            f"the add directories cover {len(covered)} parts, not the {len(parts)} collect parts given, "
            f"once each and in order (give every rsyn index add --part K/N output, K = 0..N-1, in order)"
        )
    if any(a["centroids_checksum"] != info["centroids_checksum"] for a in adds):
        raise RsynError(f"an add directory was made with another train directory than {trained}")
    timer = _Timer()
    with timer("lists_seconds"):
        index = faiss.read_index(str(trained / TRAINED))
        if on_disk:
            from faiss.contrib.ondisk import merge_ondisk

            with faiss_stdout_silenced():
                merge_ondisk(index, [str(Path(a) / ADDED) for a in added], str(out / ONDISK_LISTS))
            # ivf.faiss names its lists file: the bare name (not the temporary directory's path) keeps the
            # bytes reproducible; readers look for it next to ivf.faiss (faiss.IO_FLAG_ONDISK_SAME_DIR)
            faiss.downcast_InvertedLists(index.invlists).filename = ONDISK_LISTS
        elif len(added) == 1:  # already the whole index: no second copy to merge into
            index = faiss.read_index(str(Path(added[0]) / ADDED))
        else:
            for a in added:
                index.merge_from(faiss.read_index(str(Path(a) / ADDED)), 0)
        if not in_input_order(parts):
            sort_lists_by_row(index.invlists, index.nlist, index.code_size)
        faiss.write_index(index, str(out / IVF))
    shutil.copyfile(trained / CENTROIDS, out / CENTROIDS)
    with timer("sentences_seconds"):
        merge_sentences(parts, out / SENTENCES)
    if reranked(info["index_type"]):
        with timer("vectors_seconds"):
            merge_vectors(parts, out / VECTORS)

    sizes = np.array([index.invlists.list_size(i) for i in range(index.nlist)], dtype=np.int64)
    ignored: dict[str, int] = {}
    for part in parts:
        for reason, count in part.info["ignored"].items():
            ignored[reason] = ignored.get(reason, 0) + count
    # no times, paths or part counts: the same input and seed give a byte-identical directory
    description = {
        "rsyn_version": __version__,
        "model": info["model"],
        "dim": info["dim"],
        "count": info["count"],
        "clusters": info["clusters"],
        "index_type": info["index_type"],
        "lists": "on_disk" if on_disk else "in_file",
        "metric": "cosine (inner product of unit vectors)",
        "layout": info["layout"],
        "parameters": info["parameters"],
        "cluster_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
            "empty": int((sizes == 0).sum()),
        },
        "ignored": ignored,
    }
    with timer("checksum_seconds"):
        meta = publish(out, description)
    return {**meta, "seconds": {**info["seconds"], **timer.seconds}}


def sort_lists_by_row(invlists, nlist: int, code_size: int) -> None:
    """Order every inverted list by row, as the one-process build adds them: merging record-position
    shards appends one part's entries after another's."""
    import faiss

    for i in range(nlist):
        size = invlists.list_size(i)
        if size < 2:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(i), size).copy()
        if (np.diff(ids) > 0).all():
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(i), size * code_size).copy().reshape(size, code_size)
        order = np.argsort(ids, kind="stable")
        ids, codes = np.ascontiguousarray(ids[order]), np.ascontiguousarray(codes[order])  # alive during the call
        invlists.update_entries(i, 0, size, faiss.swig_ptr(ids), faiss.swig_ptr(codes))


def merge_sentences(parts: list[Part], path: Path) -> None:
    """One SQLite table of every part's sentences under global rows, inserted in row order in one
    transaction (the file's bytes then do not depend on how the corpus was split)."""
    db = create_sentences(path)

    def rows_of(p: int) -> Iterator[tuple]:
        rows = part_rows(parts, p)
        source = sqlite3.connect(f"file:{parts[p].path / SENTENCES}?mode=ro", uri=True)
        try:
            for local, sid, text, doc in source.execute("SELECT row, id, text, doc FROM sentences ORDER BY row"):
                yield int(rows[local]), sid, text, doc
        finally:
            source.close()

    merged = heapq.merge(*(rows_of(p) for p, part in enumerate(parts) if part.count), key=lambda r: r[0])
    db.execute("BEGIN")
    while batch := [row for _, row in zip(range(BATCH), merged)]:
        db.executemany("INSERT INTO sentences VALUES (?, ?, ?, ?)", batch)
    db.commit()
    db.close()


def merge_vectors(parts: list[Part], path: Path) -> None:
    """The float16 vectors of every part as one .npy in row order (for exact re-ranking of PQ candidates)."""
    n = sum(p.count for p in parts)
    dim = next(p.info["dim"] for p in parts if p.count)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f2", "fortran_order": False, "shape": (n, dim)})
        if in_input_order(parts):
            for part in parts:
                for _, chunk in row_chunks(part.vectors(), ADD_BATCH, dtype="<f2"):
                    fh.write(chunk.tobytes())
            return
        rows = [part_rows(parts, p) for p in range(len(parts))]
        for start in range(0, n, ADD_BATCH):
            stop = min(n, start + ADD_BATCH)
            block = np.empty((stop - start, dim), dtype="<f2")
            for part, part_rows_ in zip(parts, rows):
                lo, hi = np.searchsorted(part_rows_, [start, stop])
                if hi > lo:
                    block[part_rows_[lo:hi] - start] = part.vectors()[lo:hi]
            fh.write(block.tobytes())


# --------------------------------------------------------------------------- plain `rsyn index`


def run_index(run: Run, opts: IndexTrainOptions) -> None:
    """The four passes in one process, on the whole stream."""
    if run.shard is not None:
        raise RsynError(
            f"rsyn index builds one index from the whole corpus and takes no --shard; "
            f"to split the work, run the passes: {PASSES}"
        )
    budget = Budget.from_option(opts.max_memory)  # a bad size is refused before the stream is read
    with building_directory(run.output) as building:
        work = building / ".passes"
        for name in ("collect", "train", "add"):
            (work / name).mkdir(parents=True)
        collect_part(run, work / "collect")
        parts = open_parts([work / "collect"])
        _train(run, opts, budget, parts, work / "train")
        start = time.perf_counter()
        add_parts(parts, part_range(1, None), work / "train", work / "add", device=run.faiss_device)
        add_seconds = round(time.perf_counter() - start, 3)
        meta = merge_index(parts, work / "train", [work / "add"], building, on_disk=False, note=run.note)
        shutil.rmtree(work)
    run.extra.update(
        {
            "indexed": meta["count"],
            "clusters": meta["clusters"],
            "index_type": meta["index_type"],
            **meta["seconds"],
            "add_seconds": add_seconds,
        }
    )
    run.count_out(meta["count"])
    run.note(f"{meta['count']:,} sentences in {meta['clusters']:,} clusters ({meta['index_type']}) -> {run.output}")


# --------------------------------------------------------------------------- the pass commands


def run_collect(run: Run) -> None:
    with building_directory(run.output) as building:
        info = collect_part(run, building)
    run.extra.update({"sentences": info["count"], "dim": info["dim"]})
    run.count_out(info["count"])


def _pass_inputs(run: Run, what: str) -> list[Part]:
    if run.shard is not None:
        raise RsynError(f"rsyn index {what} takes no --shard (collect does; add takes --part K/N)")
    return open_parts(run.inputs)


def _train(run: Run, opts: IndexTrainOptions, budget: Budget, parts: list[Part], out: Path) -> dict:
    """The train pass with the command's options: what `rsyn index` and `rsyn index train` both run."""
    return train_index(
        parts,
        out,
        clusters=opts.clusters,
        budget=budget,
        index_type=opts.layout,
        pq_bytes=opts.pq_bytes,
        points_per_cluster=opts.points_per_cluster,
        niter=opts.niter,
        seed=run.seed,
        device=run.faiss_device,
        note=run.note,
    )


def run_train(run: Run, opts: IndexTrainOptions) -> None:
    parts = _pass_inputs(run, "train")
    budget = Budget.from_option(opts.max_memory)
    with building_directory(run.output) as building:
        info = _train(run, opts, budget, parts, building)
    run.extra.update({"clusters": info["clusters"], "index_type": info["index_type"], **info["seconds"]})


def run_add(run: Run, opts: IndexAddOptions) -> None:
    trained, part = opts.trained, opts.part
    parts = _pass_inputs(run, "add")
    which = part_range(len(parts), part)
    with building_directory(run.output) as building:
        info = add_parts(parts, which, Path(trained), building, device=run.faiss_device)
    run.extra.update({"parts": len(which), "vectors": info["count"]})
    run.count_out(info["count"])


def run_merge(run: Run, opts: IndexMergeOptions) -> None:
    trained, added, on_disk = opts.trained, opts.added, opts.on_disk
    parts = _pass_inputs(run, "merge")
    with building_directory(run.output) as building:
        meta = merge_index(parts, Path(trained), [Path(a) for a in added], building, on_disk=on_disk, note=run.note)
    run.extra.update(
        {
            "indexed": meta["count"],
            "clusters": meta["clusters"],
            "index_type": meta["index_type"],
            "lists": meta["lists"],
            **meta["seconds"],
        }
    )
    run.count_out(meta["count"])


# --------------------------------------------------------------------------- helpers


def row_chunks(vectors: np.ndarray, batch: int, dtype=np.float32):
    """(start, rows as `dtype`) in order. A disk-backed matrix is read with plain file reads rather than
    through its memory map, so the pages read do not stay in this process's resident memory."""
    n, dim = vectors.shape
    if not isinstance(vectors, np.memmap) or vectors.filename is None:
        for start in range(0, n, batch):
            yield start, np.ascontiguousarray(vectors[start : start + batch], dtype=dtype)
        return
    row_bytes = dim * vectors.dtype.itemsize
    with open(vectors.filename, "rb") as fh:
        for start in range(0, n, batch):
            count = min(batch, n - start)
            fh.seek(vectors.offset + start * row_bytes)
            rows = np.frombuffer(fh.read(count * row_bytes), dtype=vectors.dtype).reshape(count, dim)
            yield start, rows.astype(dtype)


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
        @contextlib.contextmanager
        def timed():
            start = time.perf_counter()
            yield
            self.seconds[name] = round(time.perf_counter() - start, 3)

        return timed()
