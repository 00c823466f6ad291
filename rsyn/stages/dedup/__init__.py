"""`rsyn dedup`: exact, near (MinHash LSH) and semantic (embedding) duplicates of sentences and images.

Two passes over the stream, so a record can be a duplicate of a later one and
stdin works:

1. Read every record once: validate it, compute what each mode needs (exact
   keys, shingle sets and LSH band hashes, embeddings spilled to disk), and
   spill the record itself to a zstd temporary file. Only fixed-size numbers
   per record stay in memory (see docs/dedup.md for bytes per million).
2. Decide, mode after mode, each on the survivors of the one before
   (exact -> near -> perceptual/semantic), per kind (images with images,
   sentences with sentences).
3. Re-read the spill in input order: survivors are written with their scores,
   duplicates go to run.drop with their reason, `dup_of` and `similarity`.

The record kept in a group is always the first one in input order, so the
output is the input minus the duplicates, and reruns are byte-identical.
"""

from __future__ import annotations

import base64
import bisect
import binascii
import hashlib
import os
import tempfile
from array import array
from dataclasses import dataclass

import numpy as np
import orjson

from rsyn.command import RsynError, Run
from rsyn.records import EMB_DTYPE
from rsyn.stream import RecordWriter, iter_lines

MODES = ("exact", "near", "perceptual", "semantic")
REASONS = {"exact": "exact_duplicate", "near": "near_duplicate", "perceptual": "perceptual_duplicate",
           "semantic": "semantic_duplicate"}
_REASON_CODE = {name: code for code, name in enumerate(REASONS, start=1)}
_CODE_REASON = {code: REASONS[name] for name, code in _REASON_CODE.items()}
KINDS = ("text", "image")
BATCH = 8192
SCORE_DIGITS = 4  # similarities written to records; f16 embeddings carry about 3 digits


@dataclass(frozen=True)
class DedupOptions:
    modes: tuple[str, ...] = ("exact", "near")
    near_threshold: float = 0.8
    ngram: int = 2
    num_perm: int = 128
    perceptual_threshold: float = 0.95
    semantic_threshold: float = 0.90
    cluster_size: int = 1000
    probes: int = 3
    tmp_dir: str | None = None

    @property
    def embedding_threshold(self) -> float | None:
        if "semantic" in self.modes:
            return self.semantic_threshold
        if "perceptual" in self.modes:
            return self.perceptual_threshold
        return None


def parse_modes(text: str) -> tuple[str, ...]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODES]
    if unknown or not names:
        raise RsynError(f"--mode {text!r}: expected a comma list of {', '.join(MODES)}")
    return tuple(m for m in MODES if m in names)


def run_dedup(run: Run, options: DedupOptions) -> None:
    if options.embedding_threshold is not None and options.semantic_threshold > options.perceptual_threshold:
        raise RsynError(f"--semantic-threshold {options.semantic_threshold} is above --perceptual-threshold "
                        f"{options.perceptual_threshold}: perceptual duplicates are the most similar ones")
    reasons = [REASONS[m] for m in options.modes if m in ("exact", "near")]
    if "semantic" in options.modes:  # semantic drops the perceptual band too, with its own reason
        reasons += [REASONS["perceptual"], REASONS["semantic"]]
    elif "perceptual" in options.modes:
        reasons.append(REASONS["perceptual"])
    run.declare_reasons(reasons)
    with tempfile.TemporaryDirectory(prefix="rsyn-dedup-", dir=options.tmp_dir) as tmp:
        stream = _Collector(run, options, tmp)
        try:
            stream.read()
            decision = _decide(run, stream, options)
            _write(run, stream, decision)
        finally:
            stream.close()


# --------------------------------------------------------------------------- pass 1


class _Collector:
    """Pass 1: validates and spills records; keeps per record only what the modes need."""

    def __init__(self, run: Run, options: DedupOptions, tmp: str):
        self.run = run
        self.options = options
        self.needs_emb = options.embedding_threshold is not None
        self.spill_path = os.path.join(tmp, "records.jsonl.zst")
        self.spill = RecordWriter(self.spill_path, compression="zstd", level=1)
        self.n = 0
        self.kind = bytearray()  # 0 text, 1 image
        self.n_images = 0
        self.files: list[str] = []  # input files, and the index of the first record read from each
        self.file_starts = array("q")
        self.where_line = array("Q")
        self.ids = bytearray()
        self.id_end = array("Q")
        self.text_keys = bytearray()
        self.url_keys = bytearray()
        self.content_rows = array("q")  # image-local positions with a content hash
        self.content_keys = bytearray()
        self._forms: list[str] = []
        self.near = None
        if "near" in options.modes:
            from rsyn.stages.dedup.near import NearIndex

            self.near = NearIndex(options.near_threshold, options.ngram, options.num_perm)
        self.vectors = {}
        self._emb: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
        self._emb_width: dict[str, int] = {}
        self._emb_model: dict[str, object] = {}

    # -- reading
    def read(self) -> None:
        from rsyn.stages.dedup.exact import key_of, match_form

        run = self.run
        exact = "exact" in self.options.modes
        need_forms = exact or self.near is not None
        for record in run.records():
            rid, kind = record.get("id"), record.get("kind")
            if type(rid) is not str or not rid:
                run.error(run.where, "record has no 'id' string", record=record, reason="missing_field")
                continue
            scores = record.get("scores")
            if scores is not None and type(scores) is not dict:
                run.error(run.where, "'scores' is not an object", record=record, reason="bad_field")
                continue
            if kind == "text":
                text = record.get("text")
                if type(text) is not str:
                    run.error(run.where, "text record has no 'text' string", record=record, reason="missing_field")
                    continue
            elif kind == "image":
                url = record.get("url")
                if type(url) is not str or not url.strip():
                    run.error(run.where, "image record has no 'url' string", record=record, reason="missing_field")
                    continue
            else:
                run.error(run.where, f"'kind' is {kind!r}, expected 'text' or 'image'", record=record,
                          reason="bad_kind")
                continue
            vector = self._embedding(record, kind) if self.needs_emb else None
            if vector is False:
                continue
            if kind == "image" and exact:
                content = self._content_hash(record)
                if content is False:
                    continue
                if content:
                    self.content_rows.append(self.n_images)
                    self.content_keys += key_of(b"image-content", content)
                self.url_keys += key_of(b"image-url", url.strip())
            elif kind == "text" and need_forms:
                form = match_form(text)
                if exact:
                    self.text_keys += key_of(b"text", form)
                if self.near is not None:
                    self._forms.append(form)
                    if len(self._forms) >= BATCH:
                        self._flush_forms()
            if vector is not None:
                pending = self._emb[kind]
                pending.append(vector)
                if len(pending) >= BATCH:
                    self._flush_emb(kind)
            self._accept(record, rid, kind)
        self._flush_forms()
        for kind in KINDS:
            self._flush_emb(kind)
        self.spill.close()
        if self.near is not None:
            self.near.finish()

    def _accept(self, record: dict, rid: str, kind: str) -> None:
        run = self.run
        if not self.files or run.where_file != self.files[-1]:
            self.files.append(run.where_file)
            self.file_starts.append(self.n)
        self.where_line.append(run.where_line)
        self.ids += rid.encode("utf-8", "surrogatepass")
        self.id_end.append(len(self.ids))
        if kind == "text":
            self.kind.append(0)
        else:
            self.kind.append(1)
            self.n_images += 1
        self.spill.write(record)
        self.n += 1

    def _content_hash(self, record: dict):
        """The image's sha256: its `sha256` field (img2dataset writes one) or the hash of the file at `path`.

        None when unknown, False after an input error.
        """
        known = record.get("sha256")
        if type(known) is str and known:
            return known.lower()
        path = record.get("path")
        if type(path) is not str or not path:
            return None
        try:
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError as exc:
            self.run.error(self.run.where, f"cannot read image file {path!r}: {exc.strerror or exc}", record=record,
                           reason="unreadable_image")
            return False
        record["sha256"] = digest  # computed once, kept on the record for later stages
        return digest

    def _embedding(self, record: dict, kind: str):
        """The record's embedding as float16 bytes, after checking it; False after an input error."""
        run = self.run
        emb = record.get("emb")
        if type(emb) is not str:
            run.error(run.where, f"{kind} record has no 'emb' (semantic modes need `rsyn embed` first)",
                      record=record, reason="missing_field")
            return False
        try:
            raw = base64.b64decode(emb, validate=True)
        except (binascii.Error, ValueError):
            run.error(run.where, "'emb' is not valid base64", record=record, reason="bad_embedding")
            return False
        width = self._emb_width.setdefault(kind, len(raw))
        if len(raw) != width or width == 0 or width % 2:
            run.error(run.where, f"'emb' has {len(raw) // 2} dimensions, earlier {kind} records have {width // 2}",
                      record=record, reason="bad_embedding")
            return False
        model = record.get("emb_model")
        first_model = self._emb_model.setdefault(kind, model)
        if model != first_model:
            run.error(run.where, f"'emb_model' is {model!r} but earlier {kind} records used {first_model!r}: "
                      "embeddings of different models cannot be compared", record=record, reason="bad_embedding")
            return False
        vector = np.frombuffer(raw, dtype=EMB_DTYPE)
        if not np.isfinite(vector).all() or not vector.any():
            run.error(run.where, "'emb' is zero or not finite", record=record, reason="bad_embedding")
            return False
        return raw

    def _flush_forms(self) -> None:
        if self._forms:
            self.near.add(self._forms)
            self._forms = []

    def _flush_emb(self, kind: str) -> None:
        pending = self._emb[kind]
        if not pending:
            return
        from rsyn.vectors import VectorSpill

        spill = self.vectors.get(kind)
        if spill is None:
            spill = self.vectors[kind] = VectorSpill(directory=self.options.tmp_dir)
        spill.add(np.frombuffer(b"".join(pending), dtype=EMB_DTYPE).reshape(len(pending), -1))
        pending.clear()

    # -- lookups for pass 2
    def record_id(self, index: int) -> str:
        start = self.id_end[index - 1] if index else 0
        return self.ids[start:self.id_end[index]].decode("utf-8", "surrogatepass")

    def where(self, index: int) -> str:
        file = bisect.bisect_right(self.file_starts, index) - 1
        return f"{self.files[file]}:{self.where_line[index]}"

    def close(self) -> None:
        if not self.spill.closed:
            self.spill.abort()
        for spill in self.vectors.values():
            spill.close()


# --------------------------------------------------------------------------- decisions


@dataclass
class _Decision:
    reason: np.ndarray  # int8 code per record, 0 = kept
    dup_of: np.ndarray  # global index of the kept record, -1
    similarity: np.ndarray  # similarity to dup_of (1.0 for exact), nan when kept
    near_best: np.ndarray  # highest exact Jaccard with an LSH candidate, nan when not computed
    semantic_best: np.ndarray  # highest cosine to another record of the cluster, nan when not computed


def _decide(run: Run, stream: _Collector, options: DedupOptions) -> _Decision:
    n = stream.n
    d = _Decision(reason=np.zeros(n, np.int8), dup_of=np.full(n, -1, np.int64),
                  similarity=np.full(n, np.nan, np.float64), near_best=np.full(n, np.nan, np.float64),
                  semantic_best=np.full(n, np.nan, np.float64))
    kind_of = np.frombuffer(bytes(stream.kind), dtype=np.uint8)
    rows = {kind: np.flatnonzero(kind_of == code) for code, kind in enumerate(KINDS)}
    stage: dict = {"modes": list(options.modes)}

    if "exact" in options.modes:
        from rsyn.stages.dedup.exact import first_of_groups, keys_array

        text_first = first_of_groups(len(rows["text"]), [(np.arange(len(rows["text"])), keys_array(stream.text_keys))])
        families = [(np.arange(len(rows["image"])), keys_array(stream.url_keys))]
        if stream.content_rows:
            families.append((np.frombuffer(stream.content_rows, dtype=np.int64), keys_array(stream.content_keys)))
        image_first = first_of_groups(len(rows["image"]), families)
        for kind, first in (("text", text_first), ("image", image_first)):
            dup = np.flatnonzero(first != np.arange(len(first)))
            _mark(d, rows[kind][dup], rows[kind][first[dup]], np.ones(len(dup)), "exact")
        stage["exact"] = {"images_with_content_hash": len(stream.content_rows)}

    if stream.near is not None:
        near = stream.near
        alive = np.flatnonzero(d.reason[rows["text"]] == 0)
        result = near.groups(alive)
        dup = np.flatnonzero(result["keep_as"] != np.arange(len(alive)))
        _mark(d, rows["text"][alive[dup]], rows["text"][alive[result["keep_as"][dup]]], result["to_kept"][dup], "near")
        d.near_best[rows["text"][alive]] = result["best"]
        stage["near"] = {"threshold": near.threshold, "ngram": near.ngram, "num_perm": near.hasher.num_perm,
                         "bands": near.bands, "rows": near.rows, "candidate_pairs": result["candidate_pairs"],
                         "verified_pairs": result["verified_pairs"], "largest_group": result["largest_group"]}

    threshold = options.embedding_threshold
    if threshold is not None:
        from rsyn.stages.dedup.semantic import semantic_groups

        stage["semantic"] = {"threshold": threshold, "perceptual_threshold": options.perceptual_threshold,
                             "device": run.device}
        for kind in KINDS:
            if kind not in stream.vectors:
                continue
            vectors = stream.vectors[kind].finish()
            alive = np.flatnonzero(d.reason[rows[kind]] == 0)
            result = semantic_groups(vectors, alive, threshold, options.cluster_size, probes=options.probes,
                                     seed=run.seed, device=run.device)
            dup = np.flatnonzero(result["keep_as"] != np.arange(len(alive)))
            sims = result["sim"][dup].astype(np.float64)
            perceptual = sims >= options.perceptual_threshold
            kept_global = rows[kind][alive[result["keep_as"][dup]]]
            _mark(d, rows[kind][alive[dup[perceptual]]], kept_global[perceptual], sims[perceptual], "perceptual")
            _mark(d, rows[kind][alive[dup[~perceptual]]], kept_global[~perceptual], sims[~perceptual], "semantic")
            d.semantic_best[rows[kind][alive]] = result["best"]
            stage["semantic"][kind] = {"records": len(alive), "clusters": result["clusters"],
                                       "probes": result["probes"], "largest_cluster": result["largest_cluster"],
                                       "pairs_over_threshold": result["edges"],
                                       "embedding_model": stream._emb_model.get(kind)}
    run.extra.update(stage)
    return d


def _mark(d: _Decision, dropped: np.ndarray, kept: np.ndarray, similarity: np.ndarray, mode: str) -> None:
    d.reason[dropped] = _REASON_CODE[mode]
    d.dup_of[dropped] = kept
    d.similarity[dropped] = similarity


# --------------------------------------------------------------------------- pass 2


def _write(run: Run, stream: _Collector, d: _Decision) -> None:
    run.write(_survivors(run, stream, d))


def _survivors(run: Run, stream: _Collector, d: _Decision):
    loads = orjson.loads
    lines = (line for _, line in iter_lines(stream.spill_path) if line)
    for lo in range(0, stream.n, BATCH):
        hi = min(stream.n, lo + BATCH)
        reasons = d.reason[lo:hi].tolist()
        near_best = np.round(d.near_best[lo:hi], SCORE_DIGITS).tolist()
        semantic_best = np.round(d.semantic_best[lo:hi], SCORE_DIGITS).tolist()
        for offset in range(hi - lo):
            record = loads(next(lines))
            nb, sb = near_best[offset], semantic_best[offset]
            if nb == nb or sb == sb:  # not nan: a score was computed
                scores = record.get("scores")
                if scores is None:
                    scores = record["scores"] = {}
                if nb == nb:
                    scores["dup_jaccard"] = nb
                if sb == sb:
                    scores["dup_sim"] = sb
            code = reasons[offset]
            if code:
                i = lo + offset
                run.drop(record, _CODE_REASON[code], where=stream.where(i), dup_of=stream.record_id(int(d.dup_of[i])),
                         similarity=round(float(d.similarity[i]), SCORE_DIGITS))
            else:
                yield record
