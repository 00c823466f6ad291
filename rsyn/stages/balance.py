"""Semantic balance sampling (docs/design.md, step 10), as five passes.

1. sim = cosine(image `emb`, `syn_emb`); keep pairs whose sim lies in a closed
   window [LO, HI] (paper: 0.51..0.61, valid for EVA02-CLIP E/14-plus only).
2. k-means (faiss) of the image embeddings of the pairs in the window.
3. Keep at most t pairs per cluster (all of a smaller cluster): MetaCLIP's
   balancing applied to clusters. t is given, or derived from a target size.

The passes (docs/balance_pack.md), each writing a directory with `done.json` last:

- scan (per shard): validates records, computes sim (stored as an integer
  code: sim rounded to 4 decimals x 10^4), two hash keys per record, its
  place (file, line), and spills the image embedding (float16). Everything
  is appended to column files as it streams by; memory is one batch. A
  histogram of the sim codes makes `--sim-range auto` exact when merged.
- plan (once): the window from the merged histograms, the training sample
  (the rows with the smallest training key, at most a fixed number), k-means
  (two-level for many clusters) and, from CELLS_FROM clusters on, cells of the
  centroids for assign.
- assign (per shard): the nearest centroid of every row in the window (exact,
  or among the centroids of the row's nearest cells).
- cap (once): the cut-off t (given, or from `--target`) and, per full
  cluster, the sort key of its t-th member.
- filter (per shard): the survivors in input order with `sim` and `cluster`
  spliced onto their JSON line; the drops to --rejects.

`rsyn balance` is the composition of the same functions over one shard, in
one process, in a temporary directory.

Every random choice is keyed by a hash of (seed, record id), never by a
position, and every decision is a pure function of per-record values (ties
broken by file name and line), so a split run equals the one-process run.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from rsyn.errors import RsynError
from rsyn.options.balance import BalanceOptions
from rsyn.records import decode_embeddings
from rsyn.stream import STDIO, RecordWriter, StreamError, expand_inputs, iter_line_blocks, write_bytes_atomic

if TYPE_CHECKING:
    from rsyn.command import Run

PAPER_MODEL = "EVA02-E-14-plus"
PAPER_WINDOW = (0.51, 0.61)
# The paper's window kept 168M of 198M pairs (84.8%). `--sim-range auto` keeps
# the same share, cutting equal tails: the 7.5% and 92.5% quantiles.
AUTO_QUANTILES = (0.075, 0.925)
# Paper: 168M images into 1M clusters. Default number of clusters = images / this.
PAPER_IMAGES_PER_CLUSTER = 168
# sim is stored (and compared with the window) rounded to this many decimals,
# so re-applying a window to the stored value reproduces the decision. The
# float16 embeddings carry about 3 significant digits anyway. Rounded sims take
# 2 * 10^4 + 1 values: a histogram with one bin per value is exact.
SIM_DECIMALS = 4
SIM_SCALE = 10**SIM_DECIMALS
HIST_BINS = 2 * SIM_SCALE + 1
# Default k-means training sample: faiss's 256 points per cluster, at most
# KMEANS_SAMPLE_MAX in all (so the cost of training stops growing with the
# corpus; the cap was chosen by measuring k-means quality, docs/balance_pack.md), but never fewer than
# KMEANS_MIN_PER_CLUSTER per cluster.
KMEANS_POINTS_PER_CLUSTER = 256
KMEANS_SAMPLE_MAX = 1 << 18
KMEANS_MIN_PER_CLUSTER = 8
# From this many clusters on, plan trains two-level k-means (rsyn.vectors.train_kmeans): on the capped sample
# it is cheaper than flat k-means and no worse (measured: docs/balance_pack.md).
KMEANS_TWO_LEVEL_FROM = 256
# Nearest centroid: faiss proposes this many candidates, which are re-scored exactly (float64).
CANDIDATES = 4
# From this many clusters on, assign searches the nearest centroid among the centroids of the CELL_PROBES
# nearest of about sqrt(k) cells (CellSearch): per image 17 x sqrt(k) comparisons instead of k. Chosen by
# measurement: below it the exact search is faster (docs/balance_pack.md, benchmarks/balance_kmeans_assign.py).
CELLS_FROM = 2048
CELL_PROBES = 16
COARSE, CELL_OF = "cells.npy", "cell_of.npy"  # plan files of the cell search
BATCH = 4096  # records per scan batch
ROWS = 16384  # rows per chunk in assign / filter / plan

REASONS = ["not_image", "sim_below_window", "sim_above_window", "over_cluster_cap"]
_KEEP, _BELOW, _ABOVE, _CAPPED = 0, 1, 2, 3

# column files of a scan directory: name -> dtype (the vectors file holds `dim` float16 per row)
COLUMNS = {"sim": "<i2", "keep_key": "<u8", "train_key": "<u8", "file": "<i4", "line": "<i8"}
VECTORS = "vectors.f16"
RECORDS = "records.jsonl.zst"
DONE = "done.json"
PASSES = "scan, plan, assign, cap, filter"


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SimRange:
    """The similarity window: fixed bounds, quantiles of the observed sims, or unset (paper default)."""

    lo: float | None = None
    hi: float | None = None
    quantiles: tuple[float, float] | None = None

    @property
    def is_auto(self) -> bool:
        return self.quantiles is not None

    @property
    def is_unset(self) -> bool:
        return self.lo is None and self.quantiles is None


def parse_sim_range(value: str | None) -> SimRange:
    """Parse --sim-range: `LO,HI`, `LO..HI`, `auto` or `auto:QLO,QHI`. The command line also takes
    `--sim-range LO HI` (two words, as the paper states it) and hands it over as `LO,HI` (opt(words=2))."""
    if value is None:
        return SimRange()
    text = value.strip().lower()
    if text.startswith("auto"):
        quantiles = AUTO_QUANTILES
        if text != "auto":
            if not text.startswith("auto:"):
                raise RsynError(f"--sim-range {value!r}: expected LO HI, LO,HI, auto or auto:QLO,QHI")
            quantiles = _two_numbers(text[5:], value)
        qlo, qhi = quantiles
        if not 0.0 <= qlo < qhi <= 1.0:
            raise RsynError(f"--sim-range {value!r}: need 0 <= QLO < QHI <= 1")
        return SimRange(quantiles=(qlo, qhi))
    for sep in ("..", ","):
        if sep in text:
            lo, hi = _two_numbers(text.replace("..", ","), value)
            break
    else:
        _number(text, value)
        raise RsynError(f"--sim-range {value}: give the upper bound too (--sim-range LO HI, or LO,HI)")
    if not -1.0 <= lo <= hi <= 1.0:
        raise RsynError(f"--sim-range {lo} {hi}: need -1 <= LO <= HI <= 1")
    return SimRange(lo=lo, hi=hi)


def _number(text: str, original: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise RsynError(f"--sim-range {original!r}: {text!r} is not a number") from None
    if not math.isfinite(x):
        raise RsynError(f"--sim-range {original!r}: bounds must be finite")
    return x


def _two_numbers(text: str, original: str) -> tuple[float, float]:
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise RsynError(f"--sim-range {original!r}: expected two numbers")
    return _number(parts[0].strip(), original), _number(parts[1].strip(), original)


def is_paper_model(emb_model: str | None) -> bool:
    return bool(emb_model) and PAPER_MODEL.lower() in emb_model.lower()


def _paper_window_refusal(model: str | None) -> RsynError:
    lo, hi = PAPER_WINDOW
    q_lo, q_hi = AUTO_QUANTILES
    return RsynError(
        f"--sim-range: the paper's window {lo}..{hi} holds for {PAPER_MODEL} only, these embeddings "
        f"are from {model!r}; give --sim-range LO HI, or --sim-range auto (the observed "
        f"{q_lo:.1%}..{q_hi:.1%} quantiles)"
    )


def default_kmeans_sample(k: int) -> int:
    """256 points per cluster, capped at KMEANS_SAMPLE_MAX, but at least KMEANS_MIN_PER_CLUSTER per cluster."""
    return min(KMEANS_POINTS_PER_CLUSTER * k, max(KMEANS_SAMPLE_MAX, KMEANS_MIN_PER_CLUSTER * k))


# --------------------------------------------------------------------------- pass directories


class PassDir:
    """A finished pass directory: its `done.json` (written last) and its files."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.path = Path(path)
        try:
            self.meta = orjson.loads((self.path / DONE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            raise RsynError(f"{path}: not a finished `rsyn balance {kind}` directory (no readable {DONE})") from None
        if not isinstance(self.meta, dict) or self.meta.get("pass") != kind:
            raise RsynError(
                f"{path}: not an `rsyn balance {kind}` directory ({DONE} says "
                f"{self.meta.get('pass') if isinstance(self.meta, dict) else None!r})"
            )

    def file(self, name: str) -> str:
        return str(self.path / name)

    def column(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return read_rows(self.file(name), COLUMNS[name], start, self.meta["count"] if stop is None else stop)


def read_rows(path: str, dtype: str, start: int, stop: int, width: int = 1) -> np.ndarray:
    """Rows [start, stop) of a raw column file, read (not memory-mapped: the pages stay out of our RSS)."""
    item = np.dtype(dtype).itemsize * width
    count = max(0, stop - start)
    if count == 0:
        return np.zeros((0, width) if width > 1 else 0, dtype=dtype)
    data = np.fromfile(path, dtype=dtype, count=count * width, offset=start * item)
    if len(data) != count * width:
        raise RsynError(f"{path}: shorter than its {DONE} says")
    return data.reshape(-1, width) if width > 1 else data


def _write_done(directory: Path, meta: dict) -> None:
    write_bytes_atomic(directory / DONE, orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def _save_npy(path: Path | str, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------- scan


class _Scan:
    """Validates image records, computes sim codes and keys, appends them and the embeddings to column files."""

    def __init__(self, run: Run, out: Path, window: SimRange | None, spill_records: bool):
        self.run = run
        self.out = out
        self.window = window
        self.columns = {name: open(out / name, "wb") for name in COLUMNS}
        self.vectors = open(out / VECTORS, "wb")
        self.records = RecordWriter(str(out / RECORDS), compression="zstd", level=1) if spill_records else None
        self.dim: int | None = None
        self.count = 0
        self.hist = np.zeros(HIST_BINS, dtype=np.int64)
        self.emb_model: str | None = None
        self._model_where = ""
        self.files: list[str] = []
        self._file_index: dict[str, int] = {}
        self._pending: list[tuple[dict, int, int]] = []
        self._seed_key = (run.seed & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")

    def read(self) -> None:
        run = self.run
        for record in run.records():
            if record.get("kind") != "image":
                run.drop(record, "not_image")
                continue
            problem = self._check(record)
            if problem:
                reason, message = problem
                run.error(run.where, message, record=record, reason=reason)
                continue
            self._pending.append((record, self._file_number(run.where_file), run.where_line))
            if len(self._pending) >= BATCH:
                self._flush()
        self._flush()

    def close(self) -> None:
        for fh in [*self.columns.values(), self.vectors]:
            fh.close()
        if self.records is not None:
            self.records.close()

    def abort(self) -> None:
        for fh in [*self.columns.values(), self.vectors]:
            fh.close()
        if self.records is not None and not self.records.closed:
            self.records.abort()

    def _file_number(self, name: str) -> int:
        number = self._file_index.get(name)
        if number is None:
            number = self._file_index[name] = len(self.files)
            self.files.append(name)
        return number

    def _check(self, record: dict) -> tuple[str, str] | None:
        """(reason, message) when the record cannot be balanced, else None."""
        if not isinstance(record.get("id"), str) or not record["id"]:
            return "missing_field", "image record has no `id`"
        if not isinstance(record.get("emb"), str):
            return "missing_field", "image record has no `emb` (run `rsyn embed` first)"
        if not isinstance(record.get("syn_emb"), str):
            return "missing_field", (
                "image record has no `syn_emb` (run `rsyn embed --text-field syn_text --emb-field syn_emb`)"
            )
        model = record.get("emb_model")
        syn_model = record.get("syn_emb_model", model)
        if syn_model != model:
            return "model_mismatch", f"`syn_emb` is from {syn_model!r} but `emb` from {model!r}: cosine needs one model"
        if model is not None and not isinstance(model, str):
            return "model_mismatch", "`emb_model` is not a string"
        if self.emb_model is None:
            self.emb_model = model
            self._model_where = self.run.where
            if self.window is not None and self.window.is_unset and not is_paper_model(model):
                raise _paper_window_refusal(model)
        elif model != self.emb_model:
            return "model_mismatch", (
                f"embeddings from {model!r}, but {self._model_where} has {self.emb_model!r}: one model per run"
            )
        return None

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        images, syns, batch = self._decode(batch)
        if not batch:
            return
        codes = sim_codes(images, syns)
        bad = codes == np.iinfo(np.int16).min
        if bad.any():
            for i in np.flatnonzero(bad):
                record, f, line = batch[i]
                self.run.error(
                    f"{self.files[f]}:{line}", "embedding is zero or not finite", record=record, reason="bad_embedding"
                )
            good = ~bad
            images, codes = images[good], codes[good]
            batch = [b for b, ok in zip(batch, good) if ok]
            if not batch:
                return
        digest = hashlib.blake2b
        key = self._seed_key
        keys = np.frombuffer(
            b"".join(
                digest(r["id"].encode("utf-8", "surrogatepass"), digest_size=16, key=key).digest() for r, _, _ in batch
            ),
            dtype="<u8",
        ).reshape(-1, 2)
        places = np.array([(f, line) for _, f, line in batch], dtype=np.int64).reshape(-1, 2)
        np.add.at(self.hist, codes.astype(np.int64) + SIM_SCALE, 1)
        self.columns["sim"].write(codes.astype("<i2").tobytes())
        self.columns["keep_key"].write(np.ascontiguousarray(keys[:, 0]).tobytes())
        self.columns["train_key"].write(np.ascontiguousarray(keys[:, 1]).tobytes())
        self.columns["file"].write(places[:, 0].astype("<i4").tobytes())
        self.columns["line"].write(places[:, 1].astype("<i8").tobytes())
        self.vectors.write(images.astype("<f2").tobytes())
        self.count += len(batch)
        if self.records is not None:
            self.records.write_many(r for r, _, _ in batch)

    def _decode(self, batch):
        """(image matrix, syn matrix, records) of a batch; a record whose embeddings do not decode is an error."""
        dim = self.dim
        try:
            images = decode_embeddings([r["emb"] for r, _, _ in batch], dim)
            syns = decode_embeddings([r["syn_emb"] for r, _, _ in batch], images.shape[1])
            self.dim = images.shape[1]
            return images, syns, batch
        except ValueError:
            pass  # find the culprits one by one (rare)
        good, image_rows, syn_rows = [], [], []
        for item in batch:
            record, f, line = item
            try:
                image = decode_embeddings([record["emb"]], dim)
                syn = decode_embeddings([record["syn_emb"]], image.shape[1])
            except ValueError as exc:
                self.run.error(
                    f"{self.files[f]}:{line}", f"bad `emb`/`syn_emb`: {exc}", record=record, reason="bad_embedding"
                )
                continue
            dim = self.dim = dim or image.shape[1]
            good.append(item)
            image_rows.append(image)
            syn_rows.append(syn)
        if not good:
            return None, None, []
        return np.concatenate(image_rows), np.concatenate(syn_rows), good


def sim_codes(images: np.ndarray, syns: np.ndarray) -> np.ndarray:
    """round(cosine * 10^4) per row as int16 (int16 min for a zero or non-finite embedding).

    Computed in float64 row by row (elementwise products, then a reduction
    along the row), so a row's value does not depend on the other rows of its
    batch: a split run computes the same codes.
    """
    x = images.astype(np.float64)
    y = syns.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        sims = (x * y).sum(axis=1) / (np.sqrt((x * x).sum(axis=1)) * np.sqrt((y * y).sum(axis=1)))
    bad = ~np.isfinite(sims)
    codes = np.rint(np.clip(np.where(bad, 0.0, sims), -1.0, 1.0) * SIM_SCALE).astype(np.int16)
    codes[bad] = np.iinfo(np.int16).min
    return codes


def code_values(codes: np.ndarray) -> np.ndarray:
    """The sims the codes stand for: exactly np.round(sim, SIM_DECIMALS)."""
    return codes.astype(np.float64) / SIM_SCALE


def scan_pass(run: Run, out: Path, *, window: SimRange | None = None) -> dict:
    """Scan this shard's records into `out` (an existing empty directory); returns its done.json."""
    try:
        paths = expand_inputs(run.inputs)
    except StreamError as exc:
        raise RsynError(str(exc)) from None
    # filter finds records again by (file, line): only distinct regular files can be read twice
    regular = [p for p in paths if _is_regular_file(p)]
    spill_records = len(set(regular)) < len(paths)
    scan = _Scan(run, out, window, spill_records)
    try:
        scan.read()
    except BaseException:
        scan.abort()
        raise
    scan.close()
    files = [
        {
            "name": name,
            "path": os.path.abspath(name) if name != "<stdin>" else None,
            "identity": None if spill_records else _file_identity(name),
        }
        for name in scan.files
    ]
    _save_npy(out / "hist.npy", scan.hist)
    meta = {
        "pass": "scan",
        "count": scan.count,
        "dim": scan.dim,
        "emb_model": scan.emb_model,
        "seed": run.seed,
        "files": files,
        "records": RECORDS if spill_records else None,
        "shard": f"{run.shard[0]}/{run.shard[1]}" if run.shard else None,
    }
    _write_done(out, meta)
    return meta


# --------------------------------------------------------------------------- plan


def quantile_position(n: int, q: float) -> int:
    """The 0-based position in sorted order that np.quantile(..., method="inverted_cdf") picks.

    The same float64 arithmetic as numpy's: index = n*q - 1, taken as is when
    integral, rounded up otherwise, clipped at 0 (tested against np.quantile).
    """
    index = n * q - 1.0
    previous = math.floor(index)
    position = previous if index - previous == 0 else previous + 1
    return min(max(int(position), 0), n - 1)


def hist_value_at(cumulative: np.ndarray, position: int) -> int:
    """The code at 0-based `position` of the sorted codes that `cumulative` (a cumsum of the histogram) counts."""
    return int(np.searchsorted(cumulative, position, side="right")) - SIM_SCALE


def window_bounds(window: SimRange, hist: np.ndarray) -> tuple[float, float, str]:
    """(lo, hi, how they were chosen) from the histogram of sim codes."""
    n = int(hist.sum())
    if n == 0:
        return -1.0, 1.0, "no image records"
    if window.is_auto:
        q_lo, q_hi = window.quantiles
        cumulative = np.cumsum(hist)
        # inverted-CDF quantiles pick observed values, so the bounds are sims that exist and print exactly
        lo, hi = (
            float(code_values(np.array(hist_value_at(cumulative, quantile_position(n, q))))) for q in (q_lo, q_hi)
        )
        return lo, hi, f"auto: quantiles {q_lo}..{q_hi} of the observed sims"
    if window.is_unset:
        return (*PAPER_WINDOW, f"paper default for {PAPER_MODEL}")
    return window.lo, window.hi, "given"


def window_table(lo: float, hi: float) -> np.ndarray:
    """Status (_KEEP, _BELOW, _ABOVE) of every sim code, indexed by code + SIM_SCALE."""
    values = code_values(np.arange(-SIM_SCALE, SIM_SCALE + 1))
    table = np.full(HIST_BINS, _KEEP, dtype=np.int8)
    table[values < lo] = _BELOW
    table[values > hi] = _ABOVE
    return table


def hist_quantiles(hist: np.ndarray) -> dict:
    """Summary quantiles (linear interpolation, as np.quantile's default) of the sims a histogram counts."""
    n = int(hist.sum())
    if n == 0:
        return {}
    cumulative = np.cumsum(hist)
    out = {}
    for name, q in zip(["min", "p05", "p25", "p50", "p75", "p95", "max"], [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]):
        index = (n - 1) * q
        below = math.floor(index)
        a = hist_value_at(cumulative, below) / SIM_SCALE
        b = hist_value_at(cumulative, min(below + 1, n - 1)) / SIM_SCALE
        out[name] = round(a + (b - a) * (index - below), SIM_DECIMALS)
    return out


def _file_ranks(names: list[str], ranked: dict[str, int]) -> np.ndarray:
    return np.array([ranked[name] for name in names], dtype=np.int64)


def _smallest(order_columns: list[np.ndarray], payload: list[np.ndarray], count: int):
    """The `count` rows with the smallest (order_columns[0], [1], ...) and their payload, in that order."""
    order = np.lexsort(order_columns[::-1])[:count]
    return [c[order] for c in order_columns], [p[order] for p in payload]


def _training_sample(scans: list[PassDir], table: np.ndarray, ranked: dict[str, int], cap: int) -> np.ndarray:
    """Up to `cap` in-window rows with the smallest (train key, file, line), in that order, as float32.

    Memory: the candidates (at most 2 x cap + one chunk) and the sample itself.
    """
    keys = [np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)]
    where = [np.zeros(0, np.int64), np.zeros(0, np.int64)]  # (scan number, row)
    for s, scan in enumerate(scans):
        ranks = _file_ranks([f["name"] for f in scan.meta["files"]], ranked)
        for start in range(0, scan.meta["count"], ROWS * 16):
            stop = min(start + ROWS * 16, scan.meta["count"])
            inside = np.flatnonzero(table[scan.column("sim", start, stop).astype(np.int64) + SIM_SCALE] == _KEEP)
            chunk = [
                scan.column("train_key", start, stop)[inside],
                ranks[scan.column("file", start, stop)[inside]],
                scan.column("line", start, stop)[inside],
            ]
            keys = [np.concatenate(pair) for pair in zip(keys, chunk)]
            where = [np.concatenate((where[0], np.full(len(inside), s))), np.concatenate((where[1], inside + start))]
            if len(keys[0]) > 2 * cap:
                keys, where = _smallest(keys, where, cap)
    keys, where = _smallest(keys, where, cap)
    dim = next((scan.meta["dim"] for scan in scans if scan.meta["dim"]), 0)
    sample = np.empty((len(where[0]), dim), dtype=np.float32)
    for s, scan in enumerate(scans):
        mine = np.flatnonzero(where[0] == s)
        if len(mine):
            _read_vectors(scan, where[1][mine], sample, mine)
    return sample


def _read_vectors(scan: PassDir, rows: np.ndarray, out: np.ndarray, into: np.ndarray) -> None:
    """out[into[i]] = the float32 vector of rows[i] (any order), one pread per row; no second copy of the sample."""
    size = scan.meta["dim"] * 2
    fd = os.open(scan.file(VECTORS), os.O_RDONLY)
    try:
        for i in np.argsort(rows, kind="stable").tolist():
            out[into[i]] = np.frombuffer(os.pread(fd, size, int(rows[i]) * size), dtype="<f2")
    finally:
        os.close(fd)


def plan_pass(
    run: Run,
    scans: list[PassDir],
    out: Path,
    *,
    window: SimRange,
    clusters: int | None = None,
    kmeans_iters: int = 20,
    kmeans_sample: int | None = None,
    centroids_path: str | None = None,
    save_centroids: str | None = None,
) -> dict:
    """Window, training sample and centroids from the scans; writes `out` and returns its done.json."""
    from rsyn.vectors import one_faiss_thread, train_kmeans

    models = {scan.meta["emb_model"] for scan in scans if scan.meta["count"]}
    dims = {scan.meta["dim"] for scan in scans if scan.meta["count"]}
    seeds = {scan.meta["seed"] for scan in scans}
    if len(models) > 1:
        raise RsynError(
            f"the scans hold embeddings of several models ({', '.join(map(repr, sorted(models)))}): one model per run"
        )
    if len(dims) > 1:
        raise RsynError(f"the scans hold embeddings of several dimensions ({sorted(dims)})")
    if len(seeds) > 1 or (seeds and run.seed not in seeds):
        raise RsynError(
            f"--seed {run.seed}: the scans were made with seed(s) {sorted(seeds)}; give every pass the same --seed"
        )
    model = models.pop() if models else None
    dim = dims.pop() if dims else None
    if window.is_unset and model is not None and not is_paper_model(model):
        raise _paper_window_refusal(model)
    hist = np.zeros(HIST_BINS, dtype=np.int64)
    for scan in scans:
        hist += np.load(scan.file("hist.npy"), allow_pickle=False)
    lo, hi, how = window_bounds(window, hist)
    table = window_table(lo, hi)
    in_window = int(hist[table == _KEEP].sum())
    # ties between equal keys (records sharing an id) are broken by file name, then line
    names = sorted({f["name"] for scan in scans for f in scan.meta["files"]})
    ranked = {name: i for i, name in enumerate(names)}
    meta = {
        "pass": "plan",
        "scans": [str(scan.path.resolve()) for scan in scans],
        "emb_model": model,
        "dim": dim,
        "seed": run.seed,
        "files": names,
        "images": int(hist.sum()),
        "in_window": in_window,
        "sim_window": {"lo": lo, "hi": hi, "chosen": how},
        "sim_quantiles": hist_quantiles(hist),
        "clusters": 0,
        "kmeans": None,
        "assign": {"search": "exact"},
        "seconds": {},
    }
    centroids = np.zeros((0, dim or 0), dtype=np.float32)
    if in_window:
        if centroids_path:
            centroids = _load_centroids(centroids_path, dim)
            meta["kmeans"] = {"centroids_from": centroids_path}
        else:
            k = min(clusters if clusters else max(1, round(in_window / PAPER_IMAGES_PER_CLUSTER)), in_window)
            cap = kmeans_sample or default_kmeans_sample(k)
            clock = time.perf_counter()
            sample = _training_sample(scans, table, ranked, cap)
            meta["seconds"]["sample"] = round(time.perf_counter() - clock, 3)
            run.note(f"k-means: {k} clusters from {len(sample):,} of {in_window:,} image embeddings")
            clock = time.perf_counter()
            with one_faiss_thread():  # the same centroids whatever the thread count (docs/balance_pack.md)
                centroids = train_kmeans(
                    sample,
                    k,
                    seed=run.seed,
                    niter=kmeans_iters,
                    device=run.faiss_device,
                    max_points_per_centroid=max(256, math.ceil(len(sample) / k)),
                    two_level=k >= KMEANS_TWO_LEVEL_FROM,
                )
            meta["seconds"]["kmeans"] = round(time.perf_counter() - clock, 3)
            meta["kmeans"] = {
                "train_points": len(sample),
                "iterations": kmeans_iters,
                "two_level": k >= KMEANS_TWO_LEVEL_FROM,
            }
            del sample
        meta["clusters"] = len(centroids)
        if save_centroids:
            _save_npy(save_centroids, centroids)
        if len(centroids) >= CELLS_FROM:
            clock = time.perf_counter()
            with one_faiss_thread():
                coarse, cell_of = build_cells(centroids, run.seed)
            _save_npy(out / COARSE, coarse)
            _save_npy(out / CELL_OF, cell_of)
            meta["seconds"]["cells"] = round(time.perf_counter() - clock, 3)
            meta["assign"] = {
                "search": "cells",
                "cells": len(coarse),
                "probes": CELL_PROBES,
            }
    _save_npy(out / "centroids.npy", centroids)
    _write_done(out, meta)
    return meta


def _load_centroids(path: str, dim: int) -> np.ndarray:
    try:
        centroids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RsynError(f"--centroids {path}: cannot read a .npy matrix: {exc}") from None
    if centroids.ndim != 2 or centroids.shape[1] != dim or len(centroids) == 0:
        raise RsynError(f"--centroids {path}: shape {centroids.shape}, expected (k, {dim})")
    if not np.isfinite(centroids).all():
        raise RsynError(f"--centroids {path}: values are not all finite")
    return np.ascontiguousarray(centroids, dtype=np.float32)


# --------------------------------------------------------------------------- assign


class NearestCentroid:
    """The exact nearest centroid (highest inner product, lowest index on ties), whatever the batch.

    faiss proposes CANDIDATES centroids per row in float32 (its kernels, and so
    its last bits, depend on the batch); they are re-scored in float64 row by
    row. When float32 rounding could have hidden a better centroid (the last
    candidate scores within twice the error bound of the first) the row is
    scored against every centroid. So a row gets the same label in a split run
    as in the one-process run.
    """

    def __init__(self, centroids: np.ndarray, device: str):
        from rsyn.vectors import flat_ip_index

        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)  # float32 -> float64 is exact, per use
        self.k, self.dim = centroids.shape
        self.index = flat_ip_index(self.centroids, device)
        self.error = float32_error(self.dim, _largest_norm(self.centroids))

    def labels(self, x: np.ndarray) -> np.ndarray:
        m = min(CANDIDATES, self.k)
        approx, candidates = self.index.search(np.ascontiguousarray(x, dtype=np.float32), m)
        candidates = np.sort(candidates, axis=1)  # ascending index: argmax then picks the lowest on ties
        labels = np.empty(len(x), dtype=np.int64)
        for start in range(0, len(x), 1024):  # float64 in slices: memory stays a few MiB
            rows = slice(start, start + 1024)
            x64 = x[rows].astype(np.float64)
            scores = (x64[:, None, :] * self.centroids[candidates[rows]].astype(np.float64)).sum(axis=2)
            labels[rows] = candidates[rows][np.arange(len(scores)), np.argmax(scores, axis=1)]
            if m < self.k:
                norms = np.sqrt((x64 * x64).sum(axis=1))
                block = approx[rows]
                for i in np.flatnonzero(block[:, m - 1] >= block[:, 0] - 2 * self.error * norms):
                    labels[start + i] = self._exhaustive(x64[i])
        return labels

    def _exhaustive(self, row: np.ndarray) -> int:
        best, label = -np.inf, -1
        for start in range(0, self.k, 4096):
            scores = (row[None, :] * self.centroids[start : start + 4096].astype(np.float64)).sum(axis=1)
            j = int(np.argmax(scores))
            if scores[j] > best:
                best, label = scores[j], start + j
        return label


def float32_error(dim: int, largest_norm: float) -> float:
    """A bound on |float32 dot product - exact| per unit of |x|, for vectors of norm <= largest_norm.

    gamma_d * |x| * |c| holds for any summation order (BLAS or SIMD); doubled for the float64 side and margin.
    """
    return 2.0 * dim * 2.0**-24 / (1 - dim * 2.0**-24) * largest_norm


def _largest_norm(vectors: np.ndarray) -> float:
    return max(
        (
            float(np.sqrt((vectors[i : i + 4096].astype(np.float64) ** 2).sum(axis=1)).max())
            for i in range(0, len(vectors), 4096)
        ),
        default=0.0,
    )


def _row_dots(x: np.ndarray, rows: np.ndarray, vectors: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """float64 x[rows[i]] . vectors[columns[i]] for each i, each one computed on its own (batch-independent)."""
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), 4096):  # memory: a few MiB
        part = slice(start, start + 4096)
        out[part] = (x[rows[part]].astype(np.float64) * vectors[columns[part]].astype(np.float64)).sum(axis=1)
    return out


def build_cells(centroids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell centroids, cell of each centroid): about sqrt(k) cells, a spherical k-means of the centroids.

    Built once, in plan, and read by every assign: all shards search the same cells.
    """
    from rsyn.vectors import nearest_centroid, train_kmeans

    k = len(centroids)
    cells = max(1, round(math.sqrt(k)))
    coarse = train_kmeans(centroids, cells, seed=seed, max_points_per_centroid=max(256, -(-k // cells)))
    cell_of, _ = nearest_centroid(centroids, coarse)
    return coarse, cell_of.astype(np.int32)


class CellSearch:
    """The nearest centroid among the centroids of the CELL_PROBES nearest cells (approximate, deterministic).

    Both levels are float32 matrix products (BLAS: fast, but their last bits depend on the batch), made
    exact where rounding could matter: the probed cells are the CELL_PROBES best cells in exact arithmetic
    (float64 for the rows where float32 cannot tell the last probed cell from the next one), and the label
    is the float64 argmax (lowest index on ties) over every probed centroid that float32 cannot rule out.
    So a row's label is a function of the row alone: the same in a split run as in the one-process run. It
    is the exact nearest centroid unless that one lies outside the probed cells (docs/balance_pack.md gives
    the measured agreement).
    """

    def __init__(self, centroids: np.ndarray, coarse: np.ndarray, cell_of: np.ndarray):
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.coarse = np.ascontiguousarray(coarse, dtype=np.float32)
        self.k, self.dim = centroids.shape
        self.probes = min(CELL_PROBES, len(coarse))
        order = np.argsort(cell_of, kind="stable")
        self.members = np.split(order, np.cumsum(np.bincount(cell_of, minlength=len(coarse)))[:-1])
        self.fine_error = float32_error(self.dim, _largest_norm(self.centroids))
        self.coarse_error = float32_error(self.dim, _largest_norm(self.coarse))

    def labels(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        norms = np.sqrt(_row_dots(x, np.arange(len(x)), x, np.arange(len(x))))
        probes = self._probes(x, norms)
        # fine level, cell by cell: the rows that probe a cell x that cell's centroids, as one matrix product
        n = len(x)
        best = np.full(n, -np.inf, dtype=np.float32)
        margin = (2 * self.fine_error * norms).astype(np.float32)
        found_rows, found_members, found_scores = (
            [np.zeros(0, np.int64)],
            [np.zeros(0, np.int64)],
            [np.zeros(0, np.float32)],
        )
        pair_cells = probes.ravel()
        pairs = np.argsort(pair_cells, kind="stable")
        bounds = np.searchsorted(pair_cells[pairs], np.arange(len(self.coarse) + 1))
        for cell, members in enumerate(self.members):
            rows = pairs[bounds[cell] : bounds[cell + 1]] // self.probes
            if not len(rows) or not len(members):
                continue
            scores = x[rows] @ self.centroids[members].T
            best[rows] = np.maximum(best[rows], scores.max(axis=1))
            # keep what could still be the best: a superset of the final candidates (best only grows)
            r, m = np.nonzero(scores >= (best[rows] - margin[rows])[:, None])
            found_rows.append(rows[r])
            found_members.append(members[m])
            found_scores.append(scores[r, m])
        rows, members, scores = (np.concatenate(part) for part in (found_rows, found_members, found_scores))
        keep = scores >= best[rows] - margin[rows]
        rows, members = rows[keep], members[keep]
        exact = _row_dots(x, rows, self.centroids, members)
        order = np.lexsort((members, -exact, rows))  # per row: highest float64 score, then lowest index
        first = order[np.concatenate(([True], rows[order][1:] != rows[order][:-1]))]
        labels = np.full(n, -1, dtype=np.int64)
        labels[rows[first]] = members[first]
        for i in np.flatnonzero(labels < 0):  # every probed cell empty (k-means left a cell without centroids)
            exact = _row_dots(x, np.full(self.k, i), self.centroids, np.arange(self.k))
            labels[i] = int(np.argmax(exact))
        return labels

    def _probes(self, x: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """(n, CELL_PROBES) the cells with the highest exact scores (lowest index on ties), per row."""
        p, cells = self.probes, len(self.coarse)
        if p == cells:
            return np.tile(np.arange(cells), (len(x), 1))
        scores = x @ self.coarse.T
        probes = np.argpartition(-scores, p - 1, axis=1)[:, :p]
        # unambiguous when every other cell scores below the p-th by more than twice the float32 error
        pth = np.take_along_axis(scores, probes, axis=1).min(axis=1)
        near = (scores >= (pth - 2 * self.coarse_error * norms)[:, None]).sum(axis=1)
        unsure = np.flatnonzero(near > p)  # a few %: decide in float64 (each score on its own)
        if len(unsure):
            exact = _row_dots(x, np.repeat(unsure, cells), self.coarse, np.tile(np.arange(cells), len(unsure)))
            probes[unsure] = np.argsort(-exact.reshape(len(unsure), cells), axis=1, kind="stable")[:, :p]
        return probes


def centroid_search(plan: PassDir, centroids: np.ndarray, device: str) -> NearestCentroid | CellSearch:
    """The nearest-centroid search the plan chose (`assign` in its done.json)."""
    if plan.meta.get("assign", {}).get("search") == "cells":
        return CellSearch(centroids, np.load(plan.file(COARSE), allow_pickle=False), np.load(plan.file(CELL_OF)))
    return NearestCentroid(centroids, device)


def assign_pass(run: Run, scan: PassDir, plan: PassDir, out: Path) -> dict:
    """Label every in-window row of `scan` with its nearest centroid (-1 outside the window)."""
    if str(scan.path.resolve()) not in plan.meta["scans"]:
        raise RsynError(f"{scan.path}: this scan is not one of the scans the plan {plan.path} was made from")
    table = window_table(plan.meta["sim_window"]["lo"], plan.meta["sim_window"]["hi"])
    k = plan.meta["clusters"]
    centroids = np.load(plan.file("centroids.npy"), allow_pickle=False)
    sizes = np.zeros(k, dtype=np.int64)
    count = scan.meta["count"]
    nearest = centroid_search(plan, centroids, run.faiss_device) if k else None
    with open(out / "labels.i4", "wb") as fh:
        for start in range(0, count, ROWS):
            stop = min(start + ROWS, count)
            labels = np.full(stop - start, -1, dtype=np.int64)
            inside = np.flatnonzero(table[scan.column("sim", start, stop).astype(np.int64) + SIM_SCALE] == _KEEP)
            if len(inside) and nearest is not None:
                vectors = read_rows(scan.file(VECTORS), "<f2", start, stop, scan.meta["dim"])[inside]
                labels[inside] = nearest.labels(vectors.astype(np.float32))
                sizes += np.bincount(labels[inside], minlength=k)
            fh.write(labels.astype("<i4").tobytes())
    _save_npy(out / "sizes.npy", sizes)
    meta = {
        "pass": "assign",
        "scan": str(scan.path.resolve()),
        "plan": str(plan.path.resolve()),
        "count": count,
        "clusters": k,
        "in_window": int(sizes.sum()),
    }
    _write_done(out, meta)
    return meta


# --------------------------------------------------------------------------- cap


def cap_for_target(sizes: np.ndarray, target: int) -> int:
    """The largest t with sum(min(size, t)) <= target: the total closest to target without exceeding it."""
    s = np.sort(sizes[sizes > 0])
    if len(s) == 0 or s.sum() <= target:
        return int(s[-1]) if len(s) else 0
    below = np.concatenate(([0], np.cumsum(s)))  # below[j] = sum of the j smallest sizes

    def total(t: int) -> int:
        j = int(np.searchsorted(s, t, side="left"))  # clusters smaller than t keep all
        return int(below[j]) + t * (len(s) - j)

    lo, hi = 0, int(s[-1])  # total(lo) <= target < total(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def rank_in_cluster(labels: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Rank (0 = first kept) of every member inside its cluster, by ascending key."""
    order = np.lexsort((keys, labels))
    sizes = np.bincount(labels, minlength=k)
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[order] = np.arange(len(labels)) - first[labels[order]]
    return ranks


def size_distribution(sizes: np.ndarray) -> dict:
    """Figure 9 of the paper in numbers: how unequal the cluster sizes are."""
    s = np.sort(sizes[sizes > 0]).astype(np.float64)
    if len(s) == 0:
        return {
            "images": 0,
            "clusters": 0,
            "largest": 0,
            "max_share": 0.0,
            "gini": 0.0,
            "singletons": 0,
            "median": 0.0,
            "mean": 0.0,
            "size_counts": {},
        }
    n, total = len(s), s.sum()
    gini = float(2.0 * np.dot(np.arange(1, n + 1), s) / (n * total) - (n + 1) / n)
    values, counts = np.unique(s.astype(np.int64), return_counts=True)
    return {
        "images": int(total),
        "clusters": int(n),
        "largest": int(s[-1]),
        "max_share": round(float(s[-1] / total), 6),
        "gini": round(max(gini, 0.0), 6),
        "singletons": int((s == 1).sum()),
        "median": float(np.median(s)),
        "mean": round(float(total / n), 3),
        # cluster size -> number of clusters of that size: the whole distribution, compact at any scale
        "size_counts": {str(v): int(c) for v, c in zip(values, counts)},
    }


def _first_per_cluster(columns: list[np.ndarray], t: int) -> list[np.ndarray]:
    """The rows of (label, key, file rank, line) that are among the t smallest (key, rank, line) of their cluster."""
    label, key, rank, line = columns
    order = np.lexsort((line, rank, key, label))
    label = label[order]
    starts = np.flatnonzero(np.concatenate(([True], label[1:] != label[:-1])))
    position = np.arange(len(label)) - np.repeat(starts, np.diff(np.append(starts, len(label))))
    keep = order[position < t]
    return [c[keep] for c in columns]


def cap_pass(run: Run, assigns: list[PassDir], out: Path, *, per_cluster: int | None, target: int | None) -> dict:
    """The cut-off t and, per full cluster, the (key, file, line) of its t-th member; writes `out`."""
    if (per_cluster is None) == (target is None):
        raise RsynError("give exactly one of --per-cluster T (paper: 20, 35, 180) or --target N")
    plans = {a.meta["plan"] for a in assigns}
    if len(plans) != 1:
        raise RsynError("the assign directories come from different plans" if plans else "no assign directory given")
    plan = PassDir(plans.pop(), "plan")
    scans = [a.meta["scan"] for a in assigns]
    if len(set(scans)) != len(scans) or set(scans) != set(plan.meta["scans"]):
        raise RsynError(f"cap needs exactly one assign directory per scan of the plan ({len(plan.meta['scans'])})")
    k = plan.meta["clusters"]
    sizes = np.zeros(k, dtype=np.int64)
    for a in assigns:
        sizes += np.load(a.file("sizes.npy"), allow_pickle=False)
    meta = {
        "pass": "cap",
        "plan": str(plan.path.resolve()),
        "assigns": [str(a.path.resolve()) for a in assigns],
        "clusters": k,
        "target": target,
    }
    if k == 0 or sizes.sum() == 0:
        t = 0
    elif target is not None:
        t = cap_for_target(sizes, target)
        if t == 0:
            raise RsynError(
                f"--target {target} is below the number of non-empty clusters "
                f"({int((sizes > 0).sum())}): ask for fewer --clusters or a larger target"
            )
    else:
        t = per_cluster
    full = sizes > t
    cut = [np.zeros(k, np.uint64), np.zeros(k, np.int64), np.zeros(k, np.int64)]
    if full.any():
        ranked = {name: i for i, name in enumerate(plan.meta["files"])}
        bound = int(np.minimum(sizes, t).sum())  # members that can still be kept
        held = [np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)]
        for a in assigns:
            scan = PassDir(a.meta["scan"], "scan")
            ranks = _file_ranks([f["name"] for f in scan.meta["files"]], ranked)
            for start in range(0, scan.meta["count"], ROWS * 16):
                stop = min(start + ROWS * 16, scan.meta["count"])
                labels = read_rows(a.file("labels.i4"), "<i4", start, stop).astype(np.int64)
                rows = np.flatnonzero(labels >= 0)
                rows = rows[full[labels[rows]]]
                chunk = [
                    labels[rows],
                    scan.column("keep_key", start, stop)[rows],
                    ranks[scan.column("file", start, stop)[rows]],
                    scan.column("line", start, stop)[rows],
                ]
                held = [np.concatenate(pair) for pair in zip(held, chunk)]
                if len(held[0]) > 2 * bound + ROWS:
                    held = _first_per_cluster(held, t)
        label, key, rank, line = _first_per_cluster(held, t)
        last = np.flatnonzero(np.append(label[1:] != label[:-1], True))  # the t-th member of each full cluster
        cut[0][label[last]], cut[1][label[last]], cut[2][label[last]] = key[last], rank[last], line[last]
    _save_npy(out / "full.npy", full)
    for name, column in zip(("cut_key", "cut_file", "cut_line"), cut):
        _save_npy(out / f"{name}.npy", column)
    meta.update(
        {"per_cluster": int(t), "before": size_distribution(sizes), "after": size_distribution(np.minimum(sizes, t))}
    )
    _write_done(out, meta)
    return meta


# --------------------------------------------------------------------------- filter


def _is_regular_file(path: str) -> bool:
    return path != STDIO and stat.S_ISREG(os.stat(path).st_mode)


def _file_identity(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _scan_lines(scan: PassDir):
    """The raw JSON line of every record the scan accepted, in scan order.

    From the record spill when there is one, otherwise from the input files
    again, picking the accepted lines by (file, line number), block by block.
    """
    if scan.meta["records"]:
        for _, lines in iter_line_blocks(scan.file(scan.meta["records"])):
            yield from lines
        return
    for f in scan.meta["files"]:
        try:
            changed = _file_identity(f["path"]) != f["identity"]
        except OSError:
            changed = True
        if changed:
            raise RsynError(f"{f['name']}: changed since `rsyn balance scan` read it")
    # the scan numbered files in the order it read them, one after the other, each file's lines ascending:
    # one walk through the (file, line) columns, read in chunks, picks the lines out of the files' blocks
    count = scan.meta["count"]
    current, blocks, first, block = -1, None, 0, []
    for start in range(0, count, ROWS * 16):
        stop = min(start + ROWS * 16, count)
        for number, lineno in zip(scan.column("file", start, stop).tolist(), scan.column("line", start, stop).tolist()):
            if number != current:
                if blocks is not None:
                    blocks.close()
                current, blocks, first, block = number, iter_line_blocks(scan.meta["files"][number]["path"]), 0, []
            while lineno >= first + len(block):
                step = next(blocks, None)
                if step is None:
                    raise RsynError(
                        f"{scan.meta['files'][number]['name']}: shorter than when `rsyn balance scan` read it"
                    )
                first, block = step
            yield block[lineno - first]
    if blocks is not None:
        blocks.close()


def _with_sim_and_cluster(line: bytes, sim: float, cluster: int) -> bytes:
    """The record's JSON with sim and cluster set, spliced onto the line when it is safe."""
    line = line.rstrip()
    if line.endswith(b"}") and b'"sim"' not in line and b'"cluster"' not in line:
        return b'%s,"sim":%s,"cluster":%d}' % (line[:-1], orjson.dumps(sim), cluster)
    record = orjson.loads(line)  # a re-run (the fields exist already) or an unusual layout
    record["sim"], record["cluster"] = sim, cluster
    return orjson.dumps(record)


def filter_status(scan: PassDir, plan: PassDir, assign: PassDir, cap: PassDir) -> np.ndarray:
    """The status (int8: kept, below or above the window, over the cap) of every row of the scan.

    Computed in chunks: one byte per row is all filter holds for the whole shard.
    """
    table = window_table(plan.meta["sim_window"]["lo"], plan.meta["sim_window"]["hi"])
    full = np.load(cap.file("full.npy"), allow_pickle=False)
    cut_key, cut_file, cut_line = (np.load(cap.file(f"{name}.npy")) for name in ("cut_key", "cut_file", "cut_line"))
    ranked = {name: i for i, name in enumerate(plan.meta["files"])}
    ranks = _file_ranks([f["name"] for f in scan.meta["files"]], ranked)
    count = scan.meta["count"]
    status = np.empty(count, dtype=np.int8)
    for start in range(0, count, ROWS * 16):
        stop = min(start + ROWS * 16, count)
        status[start:stop] = table[scan.column("sim", start, stop).astype(np.int64) + SIM_SCALE]
        labels = read_rows(assign.file("labels.i4"), "<i4", start, stop).astype(np.int64)
        rows = np.flatnonzero(labels >= 0)
        rows = rows[full[labels[rows]]]
        if len(rows):
            cluster = labels[rows]
            key = scan.column("keep_key", start, stop)[rows]
            rank = ranks[scan.column("file", start, stop)[rows]]
            line = scan.column("line", start, stop)[rows]
            ck, cr, cl = cut_key[cluster], cut_file[cluster], cut_line[cluster]
            after = (key > ck) | ((key == ck) & ((rank > cr) | ((rank == cr) & (line > cl))))
            status[start + rows[after]] = _CAPPED
    return status


def filter_pass(run: Run, assign: PassDir, cap: PassDir) -> None:
    """Write the survivors with sim and cluster added, in input order; count (and log) the drops."""
    if str(assign.path.resolve()) not in cap.meta["assigns"]:
        raise RsynError(f"{assign.path}: not one of the assign directories the cap {cap.path} was made from")
    scan = PassDir(assign.meta["scan"], "scan")
    plan = PassDir(assign.meta["plan"], "plan")
    status = filter_status(scan, plan, assign, cap)
    fragment = orjson.Fragment
    log_drops = run.logs_rejects
    reason_of = {_BELOW: "sim_below_window", _ABOVE: "sim_above_window", _CAPPED: "over_cluster_cap"}
    if not log_drops:  # count without reading the dropped records again
        for code, reason in reason_of.items():
            run.count_dropped(reason, int((status == code).sum()))
    files = [f["name"] for f in scan.meta["files"]]

    def survivors():
        lines = _scan_lines(scan)
        for start in range(0, len(status), ROWS):  # the other columns, as Python objects, one chunk at a time
            stop = min(start + ROWS, len(status))
            status_list = status[start:stop].tolist()
            sim_list = code_values(scan.column("sim", start, stop)).tolist()
            label_list = read_rows(assign.file("labels.i4"), "<i4", start, stop).tolist()
            file_of, line_of = scan.column("file", start, stop), scan.column("line", start, stop)
            for j, line in zip(range(stop - start), lines):
                code = status_list[j]
                if code == _KEEP:
                    yield fragment(_with_sim_and_cluster(line, sim_list[j], label_list[j]))
                elif log_drops:
                    details = {"sim": sim_list[j]}
                    if label_list[j] >= 0:
                        details["cluster"] = label_list[j]
                    run.drop(
                        orjson.loads(line),
                        reason_of[code],
                        where=f"{files[file_of[j]]}:{line_of[j]}",
                        **details,
                    )

    run.write(survivors())


# --------------------------------------------------------------------------- the one-process composition


def run_balance(run: Run, opts: BalanceOptions) -> None:
    sim_range, clusters, per_cluster, target = opts.sim_range, opts.clusters, opts.per_cluster, opts.target
    kmeans_iters, kmeans_sample, centroids_path = opts.kmeans_iters, opts.kmeans_sample, opts.centroids
    save_centroids, spill_dir = opts.save_centroids, opts.tmp_dir
    if run.shard is not None:
        raise RsynError(
            f"--shard: `rsyn balance` balances the whole corpus at once; to split it, run its passes "
            f"({PASSES}: `rsyn balance scan --shard K/N ...`, see docs/balance_pack.md)"
        )
    if (per_cluster is None) == (target is None):
        raise RsynError("give exactly one of --per-cluster T (paper: 20, 35, 180) or --target N")
    window = parse_sim_range(sim_range)
    run.declare_reasons(REASONS)
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="rsyn-balance-", dir=spill_dir) as work:
        dirs = {name: Path(work) / name for name in ("scan", "plan", "assign", "cap")}
        for path in dirs.values():
            path.mkdir()
        clock = time.perf_counter()
        scan_pass(run, dirs["scan"], window=window)
        seconds["scan"] = time.perf_counter() - clock
        scan = PassDir(dirs["scan"], "scan")
        clock = time.perf_counter()
        plan_meta = plan_pass(
            run,
            [scan],
            dirs["plan"],
            window=window,
            clusters=clusters,
            kmeans_iters=kmeans_iters,
            kmeans_sample=kmeans_sample,
            centroids_path=centroids_path,
            save_centroids=save_centroids,
        )
        seconds["plan"] = time.perf_counter() - clock
        plan = PassDir(dirs["plan"], "plan")
        clock = time.perf_counter()
        assign_pass(run, scan, plan, dirs["assign"])
        seconds["assign"] = time.perf_counter() - clock
        clock = time.perf_counter()
        cap_meta = cap_pass(
            run, [PassDir(dirs["assign"], "assign")], dirs["cap"], per_cluster=per_cluster, target=target
        )
        seconds["cap"] = time.perf_counter() - clock
        clock = time.perf_counter()
        filter_pass(run, PassDir(dirs["assign"], "assign"), PassDir(dirs["cap"], "cap"))
        seconds["filter"] = time.perf_counter() - clock
    run.extra.update(stage_summary(plan_meta, cap_meta))
    run.extra["phase_seconds"] = {name: round(value, 3) for name, value in seconds.items()}
    note_summary(run, run.extra)


def stage_summary(plan: dict | None, cap: dict | None) -> dict:
    """The numbers --stats shows under `stage` (the plan's and the cap's)."""
    stage = {}
    if plan is not None:
        stage.update(
            {"sim_window": plan["sim_window"], "sim_quantiles": plan["sim_quantiles"], "emb_model": plan["emb_model"]}
        )
        if plan["kmeans"]:
            stage["kmeans"] = plan["kmeans"]
        stage["assign"] = plan.get("assign", {"search": "exact"})
        stage["clusters"] = plan["clusters"]
    if cap is not None:
        stage.update(
            {
                "clusters": cap["clusters"],
                "per_cluster": cap["per_cluster"],
                "target": cap["target"],
                "before": cap["before"],
                "after": cap["after"],
            }
        )
    return stage


def note_summary(run: Run, stage: dict) -> None:
    if "sim_window" in stage:
        w = stage["sim_window"]
        run.note(f"sim window {w['lo']}..{w['hi']} ({w['chosen']})")
    if stage.get("clusters") and "before" in stage:
        b, a = stage["before"], stage["after"]
        run.note(
            f"{stage['clusters']} clusters, at most {stage['per_cluster']} per cluster; "
            f"before: max share {b['max_share']:.2%}, Gini {b['gini']:.3f}, {b['singletons']} singletons; "
            f"after: max share {a['max_share']:.2%}, Gini {a['gini']:.3f}, {a['singletons']} singletons"
        )
