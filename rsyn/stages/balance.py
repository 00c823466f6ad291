"""Semantic balance sampling (DESIGN.md section 1, step 10).

1. sim = cosine(image `emb`, `syn_emb`); keep pairs whose sim lies in a closed
   window [LO, HI] (paper: 0.51..0.61, valid for EVA02-CLIP E/14-plus only).
2. k-means (faiss) of the image embeddings of the pairs in the window.
3. Keep at most t pairs per cluster (all of a smaller cluster): MetaCLIP's
   balancing applied to clusters. t is given, or derived from a target size.

Two passes over any input, stdin included: pass 1 validates each record,
computes its sim, spills its image embedding (float16 memmap,
rsyn.vectors.VectorSpill) to a temporary directory, and keeps ~40 bytes per
record in memory; stdin and pipes are also copied to the spill (zstd JSONL),
regular files are simply read again. The decisions are made on numpy
arrays; pass 2 writes the survivors in input order with `sim` and `cluster`
spliced onto their JSON line (no re-serialisation).

Every random choice is keyed by a hash of (seed, record id), never by a
position: the k-means training sample and which records a full cluster keeps
are the same whatever the input order or the way the input was split into
files.
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

import numpy as np
import orjson

from rsyn.command import RsynError, Run
from rsyn.records import decode_embeddings
from rsyn.stream import STDIO, RecordWriter, StreamError, expand_inputs, iter_line_blocks, write_bytes_atomic
from rsyn.vectors import VectorSpill, flat_ip_index, to_float32, train_kmeans

PAPER_MODEL = "EVA02-E-14-plus"
PAPER_WINDOW = (0.51, 0.61)
# The paper's window kept 168M of 198M pairs (84.8%). `--sim-range auto` keeps
# the same share, cutting equal tails: the 7.5% and 92.5% quantiles.
AUTO_QUANTILES = (0.075, 0.925)
# Paper: 168M images into 1M clusters. Default number of clusters = images / this.
PAPER_IMAGES_PER_CLUSTER = 168
# sim is stored (and compared with the window) rounded to this many decimals,
# so re-applying a window to the stored value reproduces the decision. The
# float16 embeddings carry about 3 significant digits anyway.
SIM_DECIMALS = 4
BATCH = 4096

REASONS = ["not_image", "sim_below_window", "sim_above_window", "over_cluster_cap"]
_KEEP, _BELOW, _ABOVE, _CAPPED = 0, 1, 2, 3


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


def parse_sim_range(value: str | None, inputs: list[str]) -> tuple[SimRange, list[str]]:
    """Parse --sim-range; returns the window and the inputs left.

    Accepts `LO HI` (two words, as the paper states it), `LO,HI`, `LO..HI`,
    `auto` or `auto:QLO,QHI`. A command-line option takes a fixed number of
    words, so for `--sim-range LO HI` the parser hands HI over as an input
    file; it is taken back here: a word that reads as a number and names no
    existing file can never be an input.
    """
    if value is None:
        return SimRange(), inputs
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
        return SimRange(quantiles=(qlo, qhi)), inputs
    for sep in ("..", ","):
        if sep in text:
            lo, hi = _two_numbers(text.replace("..", ","), value)
            break
    else:
        lo = _number(text, value)
        numeric = [i for i, item in enumerate(inputs) if _is_number(item) and not os.path.exists(item)]
        if len(numeric) != 1:
            raise RsynError(f"--sim-range {value}: give the upper bound too (--sim-range LO HI, or LO,HI)")
        hi = float(inputs[numeric[0]])
        inputs = inputs[:numeric[0]] + inputs[numeric[0] + 1:]
    if not -1.0 <= lo <= hi <= 1.0:
        raise RsynError(f"--sim-range {lo} {hi}: need -1 <= LO <= HI <= 1")
    return SimRange(lo=lo, hi=hi), inputs


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


# --------------------------------------------------------------------------- pass 1


class _FirstPass:
    """Validates image records, computes sim, spills records and image embeddings to disk."""

    def __init__(self, run: Run, window: SimRange, spill_dir: str | None, spill_records: bool):
        self.run = run
        self.window = window
        self._tmp = tempfile.TemporaryDirectory(prefix="rsyn-balance-", dir=spill_dir)
        # Regular files are simply read again in pass 2; stdin and pipes are copied here.
        self.records_path = str(Path(self._tmp.name) / "records.jsonl.zst") if spill_records else None
        self._records = RecordWriter(self.records_path, compression="zstd", level=1) if spill_records else None
        self.vectors = VectorSpill(directory=self._tmp.name)
        self.emb_model: str | None = None
        self._model_where = ""
        self.files: list[str] = []
        self._file_index: dict[str, int] = {}
        self._pending: list[tuple[dict, int, int]] = []
        self._sims: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._places: list[np.ndarray] = []
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
        if self._records is not None:
            self._records.close()

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
            return "missing_field", ("image record has no `syn_emb` "
                                     "(run `rsyn embed --text-field syn_text --emb-field syn_emb`)")
        model = record.get("emb_model")
        syn_model = record.get("syn_emb_model", model)
        if syn_model != model:
            return "model_mismatch", f"`syn_emb` is from {syn_model!r} but `emb` from {model!r}: cosine needs one model"
        if self.emb_model is None:
            self.emb_model = model
            self._model_where = self.run.where
            if self.window.is_unset and not is_paper_model(model):
                lo, hi = PAPER_WINDOW
                q_lo, q_hi = AUTO_QUANTILES
                raise RsynError(
                    f"--sim-range: the paper's window {lo}..{hi} holds for {PAPER_MODEL} only, these embeddings "
                    f"are from {model!r}; give --sim-range LO HI, or --sim-range auto (the observed "
                    f"{q_lo:.1%}..{q_hi:.1%} quantiles)")
        elif model != self.emb_model:
            return "model_mismatch", (f"embeddings from {model!r}, but {self._model_where} has {self.emb_model!r}: "
                                      "one model per run")
        return None

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        images, syns, batch = self._decode(batch)
        if not batch:
            return
        norms = np.linalg.norm(images, axis=1) * np.linalg.norm(syns, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            sims = np.einsum("ij,ij->i", images, syns) / norms
        bad = ~np.isfinite(sims)
        if bad.any():
            for i in np.flatnonzero(bad):
                record, f, line = batch[i]
                self.run.error(f"{self.files[f]}:{line}", "embedding is zero or not finite", record=record,
                               reason="bad_embedding")
            good = ~bad
            images, sims = images[good], sims[good]
            batch = [b for b, ok in zip(batch, good) if ok]
        digest = hashlib.blake2b
        key = self._seed_key
        self._keys.append(np.frombuffer(b"".join(digest(r["id"].encode("utf-8", "surrogatepass"), digest_size=16,
                                                         key=key).digest() for r, _, _ in batch),
                                        dtype="<u8").reshape(-1, 2))
        self._sims.append(np.round(np.clip(sims.astype(np.float64), -1.0, 1.0), SIM_DECIMALS))
        self._places.append(np.array([(f, line) for _, f, line in batch], dtype=np.int64).reshape(-1, 2))
        self.vectors.add(images)
        if self._records is not None:
            self._records.write_many(r for r, _, _ in batch)

    def _decode(self, batch):
        """(image matrix, syn matrix, records) of a batch; a record whose embeddings do not decode is an error."""
        dim = self.vectors.dim
        try:
            images = decode_embeddings([r["emb"] for r, _, _ in batch], dim)
            syns = decode_embeddings([r["syn_emb"] for r, _, _ in batch], images.shape[1])
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
                self.run.error(f"{self.files[f]}:{line}", f"bad `emb`/`syn_emb`: {exc}", record=record,
                               reason="bad_embedding")
                continue
            dim = dim or image.shape[1]
            good.append(item)
            image_rows.append(image)
            syn_rows.append(syn)
        if not good:
            return None, None, []
        return np.concatenate(image_rows), np.concatenate(syn_rows), good

    def arrays(self):
        """(sims float64, keep keys uint64, train keys uint64, places (n, 2) int64)."""
        if not self._sims:
            empty = np.zeros(0, dtype=np.uint64)
            return np.zeros(0), empty, empty, np.zeros((0, 2), dtype=np.int64)
        keys = np.concatenate(self._keys)
        return np.concatenate(self._sims), keys[:, 0].copy(), keys[:, 1].copy(), np.concatenate(self._places)

    def close(self) -> None:
        if self._records is not None and not self._records.closed:
            self._records.abort()
        self.vectors.close()
        self._tmp.cleanup()


# --------------------------------------------------------------------------- decisions


def window_bounds(window: SimRange, sims: np.ndarray) -> tuple[float, float, str]:
    """(lo, hi, how they were chosen)."""
    if len(sims) == 0:
        return -1.0, 1.0, "no image records"
    if window.is_auto:
        q_lo, q_hi = window.quantiles
        # inverted_cdf picks observed values, so the bounds are sims that exist and print exactly
        lo, hi = (float(x) for x in np.quantile(sims, [q_lo, q_hi], method="inverted_cdf"))
        return lo, hi, f"auto: quantiles {q_lo}..{q_hi} of the observed sims"
    if window.is_unset:
        return (*PAPER_WINDOW, f"paper default for {PAPER_MODEL}")
    return window.lo, window.hi, "given"


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
        return {"images": 0, "clusters": 0, "largest": 0, "max_share": 0.0, "gini": 0.0, "singletons": 0,
                "median": 0.0, "mean": 0.0, "size_counts": {}}
    n, total = len(s), s.sum()
    gini = float(2.0 * np.dot(np.arange(1, n + 1), s) / (n * total) - (n + 1) / n)
    values, counts = np.unique(s.astype(np.int64), return_counts=True)
    return {"images": int(total), "clusters": int(n), "largest": int(s[-1]),
            "max_share": round(float(s[-1] / total), 6), "gini": round(max(gini, 0.0), 6),
            "singletons": int((s == 1).sum()), "median": float(np.median(s)), "mean": round(float(total / n), 3),
            # cluster size -> number of clusters of that size: the whole distribution, compact at any scale
            "size_counts": {str(v): int(c) for v, c in zip(values, counts)}}


def _training_sample(vectors: np.ndarray, rows: np.ndarray, train_keys: np.ndarray, cap: int) -> np.ndarray:
    """Up to `cap` rows, chosen and ordered by their hash key, so faiss sees the same matrix for any input order."""
    chosen = rows[np.argsort(train_keys[rows], kind="stable")[:cap]]
    ascending = np.sort(chosen)  # read the memmap front to back
    gathered = to_float32(vectors[ascending]) if len(ascending) else np.zeros((0, vectors.shape[1]), np.float32)
    return np.ascontiguousarray(gathered[np.searchsorted(ascending, chosen)])


def _assign(vectors: np.ndarray, rows: np.ndarray, centroids: np.ndarray, device: str, batch: int = 65536):
    index = flat_ip_index(centroids, device)
    labels = np.empty(len(rows), dtype=np.int64)
    for start in range(0, len(rows), batch):
        chunk = to_float32(vectors[rows[start:start + batch]])
        _, nearest = index.search(chunk, 1)
        labels[start:start + len(chunk)] = nearest[:, 0]
    return labels


def _load_centroids(path: str, dim: int) -> np.ndarray:
    try:
        centroids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RsynError(f"--centroids {path}: cannot read a .npy matrix: {exc}") from None
    if centroids.ndim != 2 or centroids.shape[1] != dim or len(centroids) == 0:
        raise RsynError(f"--centroids {path}: shape {centroids.shape}, expected (k, {dim})")
    return np.ascontiguousarray(centroids, dtype=np.float32)


# --------------------------------------------------------------------------- the stage


def run_balance(run: Run, *, sim_range: str | None = None, clusters: int | None = None,
                per_cluster: int | None = None, target: int | None = None, kmeans_iters: int = 20,
                kmeans_sample: int | None = None, centroids_path: str | None = None,
                save_centroids: str | None = None, spill_dir: str | None = None) -> None:
    if (per_cluster is None) == (target is None):
        raise RsynError("give exactly one of --per-cluster T (paper: 20, 35, 180) or --target N")
    window, run.inputs = parse_sim_range(sim_range, run.inputs)
    run.declare_reasons(REASONS)

    try:
        paths = expand_inputs(run.inputs)
    except StreamError as exc:
        raise RsynError(str(exc)) from None
    # pass 2 finds records again by (file, line): only distinct regular files can be read twice
    rereadable = {path: _file_identity(path) for path in paths if _is_regular_file(path)}
    first = _FirstPass(run, window, spill_dir, spill_records=len(rereadable) < len(paths))
    clock = time.perf_counter()
    try:
        first.read()
        seconds = {"pass1": time.perf_counter() - clock}
        sims, keep_keys, train_keys, places = first.arrays()
        vectors = first.vectors.finish()
        status, labels, stage = _decide(run, window, sims, keep_keys, train_keys, vectors, clusters=clusters,
                                        per_cluster=per_cluster, target=target, kmeans_iters=kmeans_iters,
                                        kmeans_sample=kmeans_sample, centroids_path=centroids_path,
                                        save_centroids=save_centroids, seconds=seconds)
        stage["emb_model"] = first.emb_model
        if first.records_path is None:
            for path, identity in rereadable.items():
                if _file_identity(path) != identity:
                    raise RsynError(f"{path}: changed while balance was reading it")
        clock = time.perf_counter()
        _second_pass(run, first, status, labels, sims, places)
        seconds["pass2"] = time.perf_counter() - clock
        stage["phase_seconds"] = {name: round(value, 3) for name, value in seconds.items()}
        run.extra.update(stage)
    finally:
        first.close()
    _note_summary(run, stage)


def _decide(run, window, sims, keep_keys, train_keys, vectors, *, clusters, per_cluster, target, kmeans_iters,
            kmeans_sample, centroids_path, save_centroids, seconds):
    n = len(sims)
    lo, hi, how = window_bounds(window, sims)
    status = np.full(n, _KEEP, dtype=np.int8)
    status[sims < lo] = _BELOW
    status[sims > hi] = _ABOVE
    rows = np.flatnonzero(status == _KEEP)
    labels = np.full(n, -1, dtype=np.int64)
    stage = {"sim_window": {"lo": lo, "hi": hi, "chosen": how},
             "sim_quantiles": _quantiles(sims)}
    if len(rows) == 0:
        stage.update({"clusters": 0, "per_cluster": 0, "before": size_distribution(np.zeros(0)),
                      "after": size_distribution(np.zeros(0))})
        return status, labels, stage

    device = run.device
    if centroids_path:
        centroids = _load_centroids(centroids_path, vectors.shape[1])
        k = len(centroids)
        stage["kmeans"] = {"centroids_from": centroids_path}
    else:
        k = clusters if clusters else max(1, round(len(rows) / PAPER_IMAGES_PER_CLUSTER))
        k = min(k, len(rows))
        cap = kmeans_sample or k * 256
        clock = time.perf_counter()
        sample = _training_sample(vectors, rows, train_keys, cap)
        run.note(f"k-means: {k} clusters from {len(sample):,} of {len(rows):,} image embeddings")
        centroids = train_kmeans(sample, k, seed=run.seed, niter=kmeans_iters, device=device,
                                 max_points_per_centroid=max(256, math.ceil(len(sample) / k)))
        seconds["kmeans"] = time.perf_counter() - clock
        stage["kmeans"] = {"train_points": len(sample), "iterations": kmeans_iters}
    if save_centroids:
        write_bytes_atomic(save_centroids, _npy_bytes(centroids))

    clock = time.perf_counter()
    window_labels = _assign(vectors, rows, centroids, device)
    seconds["assign"] = time.perf_counter() - clock
    sizes = np.bincount(window_labels, minlength=k)
    if target is not None:
        t = cap_for_target(sizes, target)
        if t == 0:
            raise RsynError(f"--target {target} is below the number of non-empty clusters "
                            f"({int((sizes > 0).sum())}): ask for fewer --clusters or a larger target")
    else:
        t = per_cluster
    ranks = rank_in_cluster(window_labels, keep_keys[rows], k)
    status[rows[ranks >= t]] = _CAPPED
    labels[rows] = window_labels
    kept_sizes = np.minimum(sizes, t)
    stage.update({"clusters": int(k), "per_cluster": int(t), "target": target,
                  "before": size_distribution(sizes), "after": size_distribution(kept_sizes)})
    return status, labels, stage


def _quantiles(sims: np.ndarray) -> dict:
    if len(sims) == 0:
        return {}
    qs = np.quantile(sims, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    return dict(zip(["min", "p05", "p25", "p50", "p75", "p95", "max"], (round(float(q), SIM_DECIMALS) for q in qs)))


def _npy_bytes(matrix: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, matrix, allow_pickle=False)
    return buf.getvalue()


def _is_regular_file(path: str) -> bool:
    return path != STDIO and stat.S_ISREG(os.stat(path).st_mode)


def _file_identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _pass_two_lines(first: _FirstPass, places: np.ndarray):
    """The raw JSON line of every record pass 1 accepted, in the same order.

    From the spill when there is one, otherwise from the input files again,
    picking the accepted lines by (file, line number), block by block.
    """
    if first.records_path is not None:
        for _, lines in iter_line_blocks(first.records_path):
            yield from lines
        return
    for number, path in enumerate(first.files):
        wanted = places[places[:, 0] == number, 1]  # ascending: pass 1 read them in this order
        j = 0
        for start, lines in iter_line_blocks(path):
            stop = start + len(lines)
            end = int(np.searchsorted(wanted, stop, side="left"))
            for lineno in wanted[j:end].tolist():
                yield lines[lineno - start]
            j = end
            if j == len(wanted):
                break


def _with_sim_and_cluster(line: bytes, sim: float, cluster: int) -> bytes:
    """The record's JSON with sim and cluster set, spliced onto the line when it is safe."""
    line = line.rstrip()
    if line.endswith(b"}") and b'"sim"' not in line and b'"cluster"' not in line:
        return b'%s,"sim":%s,"cluster":%d}' % (line[:-1], orjson.dumps(sim), cluster)
    record = orjson.loads(line)  # a re-run (the fields exist already) or an unusual layout
    record["sim"], record["cluster"] = sim, cluster
    return orjson.dumps(record)


def _second_pass(run: Run, first: _FirstPass, status, labels, sims, places) -> None:
    """Write the survivors with sim and cluster added, in input order; log drops when asked."""
    fragment = orjson.Fragment
    log_drops = bool(run.rejects_path)
    reason_of = {_BELOW: "sim_below_window", _ABOVE: "sim_above_window", _CAPPED: "over_cluster_cap"}
    if not log_drops:  # count without reading the dropped records again
        for code, reason in reason_of.items():
            run.dropped[reason] += int((status == code).sum())
    status_list, sim_list, label_list = status.tolist(), sims.tolist(), labels.tolist()

    def survivors():
        for i, line in enumerate(_pass_two_lines(first, places)):
            code = status_list[i]
            if code == _KEEP:
                yield fragment(_with_sim_and_cluster(line, sim_list[i], label_list[i]))
            elif log_drops:
                file_number, lineno = places[i]
                details = {"sim": sim_list[i]}
                if label_list[i] >= 0:
                    details["cluster"] = label_list[i]
                run.drop(orjson.loads(line), reason_of[code], where=f"{first.files[file_number]}:{lineno}",
                         **details)

    run.write(survivors())


def _note_summary(run: Run, stage: dict) -> None:
    w = stage["sim_window"]
    run.note(f"sim window {w['lo']}..{w['hi']} ({w['chosen']})")
    if stage.get("clusters"):
        b, a = stage["before"], stage["after"]
        run.note(f"{stage['clusters']} clusters, at most {stage['per_cluster']} per cluster; "
                 f"before: max share {b['max_share']:.2%}, Gini {b['gini']:.3f}, {b['singletons']} singletons; "
                 f"after: max share {a['max_share']:.2%}, Gini {a['gini']:.3f}, {a['singletons']} singletons")
