"""Pass `scan` (per input shard): validate each record, compute what the modes need, write one scan part.

Kept per record, as .npy files of the part (see work.py for the layout):
order key, kind, id; exact keys (128-bit); near shingle sets and LSH band
hashes; float16 embeddings. The records themselves are spilled as zstd JSONL
so that `filter` re-reads them from here (stdin works, and a computed
`sha256` is not computed twice).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from array import array
from typing import TYPE_CHECKING

import numpy as np

from rsyn.errors import RsynError
from rsyn.localfiles import LocalFileError, allowed_root, read_local_file
from rsyn.records import EMB_DTYPE
from rsyn.stages.dedup.work import ROW_BITS, Part
from rsyn.stream import STDIO, RecordWriter, StreamError, expand_inputs

if TYPE_CHECKING:
    from rsyn.command import Run

KINDS = ("text", "image")
BATCH = 8192
RECORDS = "records.jsonl.zst"


class _FileIndex:
    """The index of the input file a record came from, in the expanded input list (shared by all shards)."""

    def __init__(self, run: Run):
        try:  # (not run.input_paths(): it would announce the matched files a second time)
            paths = expand_inputs(run.inputs)
        except StreamError as exc:
            raise RsynError(str(exc)) from None
        self.names = ["<stdin>" if p == STDIO else p for p in paths]
        twice = sorted({n for n in self.names if self.names.count(n) > 1})
        if twice:  # its records would have no place of their own in the input order
            raise RsynError(f"{twice[0]}: input listed twice (a glob and a path, or two overlapping globs?)")
        self.index = {name: i for i, name in enumerate(self.names)}

    def of(self, name: str) -> int:
        index = self.index.get(name)
        if index is None:  # Run names files as expand_inputs does; guard against that changing
            raise RsynError(f"{name}: a record's input file is not in the expanded input list")
        return index


def scan(run: Run, options, part: Part, shard: tuple[int, int]) -> dict:
    """Read this shard's records into `part`; returns the part's info (also written to its DONE)."""
    from rsyn.stages.dedup.exact import key_of, match_form

    modes = options.modes
    exact, needs_emb = "exact" in modes, options.embedding_threshold is not None
    near = None
    if "near" in modes:
        from rsyn.stages.dedup.near import NearIndex

        near = NearIndex(options.near_threshold, options.ngram, options.num_perm)
    need_forms = exact or near is not None
    root = allowed_root(options.path_root)
    files = _FileIndex(run)
    spill = RecordWriter(str(part.file(RECORDS)), compression="zstd", level=1)
    order, kinds, id_bytes, id_end = array("q"), bytearray(), bytearray(), array("q")
    text_keys, url_keys, content_rows, content_keys = bytearray(), bytearray(), array("q"), bytearray()
    forms: list[str] = []
    emb: dict[str, list[bytes]] = {k: [] for k in KINDS}
    emb_rows: dict[str, array] = {k: array("q") for k in KINDS}
    emb_width: dict[str, int] = {}
    emb_model: dict[str, object] = {}
    n = 0
    try:
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
                run.error(
                    run.where, f"'kind' is {kind!r}, expected 'text' or 'image'", record=record, reason="bad_kind"
                )
                continue
            vector = _embedding(run, record, kind, emb_width, emb_model) if needs_emb else None
            if vector is False:
                continue
            if kind == "image" and exact:
                content = _content_hash(run, record, root, options.max_bytes)
                if content is False:
                    continue
                if content:
                    content_rows.append(n)
                    content_keys += key_of(b"image-content", content)
                url_keys += key_of(b"image-url", url.strip())
            elif kind == "text" and need_forms:
                form = match_form(text)
                if exact:
                    text_keys += key_of(b"text", form)
                if near is not None:
                    forms.append(form)
                    if len(forms) >= BATCH:
                        near.add(forms)
                        forms = []
            if vector is not None:
                emb[kind].append(vector)
                emb_rows[kind].append(n)
            order.append((files.of(run.where_file) << ROW_BITS) | run.where_line)
            kinds.append(0 if kind == "text" else 1)
            id_bytes += rid.encode("utf-8", "surrogatepass")
            id_end.append(len(id_bytes))
            spill.write(record)
            n += 1
        spill.close()
    except BaseException:
        spill.abort()
        raise
    kind_array = np.frombuffer(bytes(kinds), dtype=np.uint8)
    if near is not None:
        if forms:
            near.add(forms)
        near.finish()
        part.save("near_values", near.values)
        # offsets by record row (images have empty sets): a pass reads the sets of a few rows without
        # mapping which row is which sentence
        sizes = np.zeros(n, dtype=np.int64)
        sizes[kind_array == 0] = np.diff(near.offsets)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        part.save("near_offsets", offsets)
        part.save("near_bands", near.band_table)  # (bands, sentences)
    part.save("order", np.frombuffer(order, dtype=np.int64))
    part.save("kind", kind_array)
    part.save("id_bytes", np.frombuffer(bytes(id_bytes), dtype=np.uint8))
    part.save("id_end", np.frombuffer(id_end, dtype=np.int64))
    if exact:
        from rsyn.stages.dedup.exact import KEY_DTYPE

        part.save("text_keys", np.frombuffer(bytes(text_keys), dtype=KEY_DTYPE))
        part.save("url_keys", np.frombuffer(bytes(url_keys), dtype=KEY_DTYPE))
        part.save("content_rows", np.frombuffer(content_rows, dtype=np.int64))
        part.save("content_keys", np.frombuffer(bytes(content_keys), dtype=KEY_DTYPE))
    for kind in KINDS:
        if emb_rows[kind]:
            matrix = np.frombuffer(b"".join(emb[kind]), dtype=EMB_DTYPE).reshape(len(emb_rows[kind]), -1)
            emb[kind] = []
            part.save(f"emb-{kind}", matrix)
            part.save(f"emb-{kind}-rows", np.frombuffer(emb_rows[kind], dtype=np.int64))
    digest = hashlib.blake2b(bytes(kinds), digest_size=16)  # what was read: a rescan of other data differs
    for data in (order, id_bytes, text_keys, url_keys, content_keys):
        digest.update(memoryview(data).cast("B"))
    return {
        "shard": list(shard),
        "options": options.recorded(run.seed),
        "files": files.names,
        "records": n,
        "digest": digest.hexdigest(),
        "texts": int((kind_array == 0).sum()),
        "images": int((kind_array == 1).sum()),
        "images_with_content_hash": len(content_rows),
        "embedding_model": {k: emb_model[k] for k in KINDS if k in emb_model},
        "embedding_dim": {k: emb_width[k] // 2 for k in KINDS if k in emb_width},
    }


def _content_hash(run: Run, record: dict, root, max_bytes: int):
    """The image's sha256: its `sha256` field (img2dataset writes one) or the hash of the file at `path`.

    None when unknown, False after an input error. The file is read through
    the shared safe reader: inside --path-root, regular files only, at most
    --max-bytes.
    """
    known = record.get("sha256")
    if type(known) is str and known:
        return known.lower()
    path = record.get("path")
    if type(path) is not str or not path:
        return None
    try:
        data = read_local_file(path, root=root, max_bytes=max_bytes)
    except LocalFileError as exc:
        run.error(run.where, f"cannot read image file: {exc.message}", record=record, reason=exc.reason)
        return False
    digest = hashlib.sha256(data).hexdigest()
    record["sha256"] = digest  # computed once, kept on the record for later stages
    return digest


def _embedding(run: Run, record: dict, kind: str, widths: dict, models: dict):
    """The record's embedding as float16 bytes, after checking it; False after an input error."""
    emb = record.get("emb")
    if type(emb) is not str:
        run.error(
            run.where,
            f"{kind} record has no 'emb' (semantic modes need `rsyn embed` first)",
            record=record,
            reason="missing_field",
        )
        return False
    try:
        raw = base64.b64decode(emb, validate=True)
    except (binascii.Error, ValueError):
        run.error(run.where, "'emb' is not valid base64", record=record, reason="bad_embedding")
        return False
    width = widths.setdefault(kind, len(raw))
    if len(raw) != width or width == 0 or width % 2:
        run.error(
            run.where,
            f"'emb' has {len(raw) // 2} dimensions, earlier {kind} records have {width // 2}",
            record=record,
            reason="bad_embedding",
        )
        return False
    model = record.get("emb_model")
    first_model = models.setdefault(kind, model)
    if model != first_model:
        run.error(
            run.where,
            f"'emb_model' is {model!r} but earlier {kind} records used {first_model!r}: "
            "embeddings of different models cannot be compared",
            record=record,
            reason="bad_embedding",
        )
        return False
    vector = np.frombuffer(raw, dtype=EMB_DTYPE)
    if not np.isfinite(vector).all() or not vector.any():
        run.error(run.where, "'emb' is zero or not finite", record=record, reason="bad_embedding")
        return False
    return raw
