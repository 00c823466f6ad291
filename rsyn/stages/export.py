"""`rsyn export`: records -> the files that clip-retrieval, autofaiss and img2dataset users feed to their tools.

-o DIR gets (N = 0, 1, ... per --rows-per-shard rows; rows of every pair of files in the same order):

  img_emb/img_emb_N.npy              image records' `emb`, (rows, dim) float16 (or --dtype float32)
  metadata/metadata_N.parquet        their id, url, caption, doc, emb_model: clip-retrieval's embeddings
                                     folder, which `autofaiss build_index --embeddings DIR/img_emb` and
                                     clip-retrieval's index step read
  text_emb/text_emb_N.npy            text records' `emb`
  text_metadata/text_metadata_N.parquet   their id, text, doc, emb_model
  img2dataset/N.parquet              every image record with a url: url, caption (+ id), the input of
                                     `img2dataset --input_format parquet --url_col url --caption_col caption`
  _stats.json, _SUCCESS              numbers, then the done marker (names Arrow and Spark skip)

The .npy files are streamed (a fixed-size header rewritten with the row count at the end), so memory does
not grow with the shard. rsyn stores embeddings as unit-norm float16, so float16 is exact and float32 only
widens them. The directory is built aside and renamed into place complete (rsyn.stream.AtomicDirectory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson

from rsyn.errors import RsynError
from rsyn.options.export import CAPTION_FIELDS, Dtype, ExportOptions
from rsyn.records import decode_embeddings
from rsyn.stream import AtomicDirectory, write_bytes_atomic

if TYPE_CHECKING:
    from rsyn.command import Run

STATS_FILE = "_stats.json"
DONE_MARKER = "_SUCCESS"
DTYPES = {"float16": "<f2", "float32": "<f4"}
NPY_HEADER_BYTES = 128  # magic, version, length and the dict padded: room for any (rows, dim) shape


class NpyShardWriter:
    """A .npy file written row block by row block; the header gets the final row count on close."""

    def __init__(self, path: Path, dim: int, dtype: str):
        self.path, self.dim, self.descr = path, dim, DTYPES[dtype]
        self.rows = 0
        self.fh = open(path, "wb")
        self.fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        text = repr({"descr": self.descr, "fortran_order": False, "shape": (rows, self.dim)})
        body_len = NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
        text = text.ljust(body_len - 1) + "\n"
        return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + text.encode("latin1")

    def write(self, matrix: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(matrix, dtype=self.descr).tobytes())
        self.rows += len(matrix)

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(self._header(self.rows))
        self.fh.close()


@dataclass
class Part:
    """One kind of row (image embeddings, text embeddings, img2dataset urls): its shards under DIR/folder."""

    folder: str
    stem: str  # file name stem: img_emb, metadata, ...
    meta_folder: str | None
    meta_stem: str | None
    schema_fields: list
    rows_per_shard: int
    root: Path
    dtype: str = "float16"
    shards: list[dict] = field(default_factory=list)
    _npy: NpyShardWriter | None = None
    _meta: object = None
    _rows_in_shard: int = 0
    _pending_emb: list = field(default_factory=list)
    _pending_meta: list = field(default_factory=list)
    dim: int | None = None

    def add(self, meta: dict, emb: str | None = None) -> None:
        self._pending_meta.append(meta)
        if emb is not None:
            self._pending_emb.append(emb)
        if len(self._pending_meta) >= 4096 or self._rows_in_shard + len(self._pending_meta) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows, closing the shard when it is full (rows never straddle two shards)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        while self._pending_meta:
            room = self.rows_per_shard - self._rows_in_shard
            metas, self._pending_meta = self._pending_meta[:room], self._pending_meta[room:]
            embs, self._pending_emb = self._pending_emb[: len(metas)], self._pending_emb[len(metas) :]
            number = len(self.shards)
            if self._rows_in_shard == 0:
                (self.root / self.folder).mkdir(exist_ok=True)
                if self.meta_folder:
                    (self.root / self.meta_folder).mkdir(exist_ok=True)
                    self._npy = NpyShardWriter(
                        self.root / self.folder / f"{self.stem}_{number}.npy", self.dim, self.dtype
                    )
                    meta_path = self.root / self.meta_folder / f"{self.meta_stem}_{number}.parquet"
                else:
                    meta_path = self.root / self.folder / f"{number:05d}.parquet"
                self._meta = pq.ParquetWriter(meta_path, pa.schema(self.schema_fields))
            if self._npy is not None:
                self._npy.write(decode_embeddings(embs, dim=self.dim))
            self._meta.write_table(pa.Table.from_pylist(metas, schema=self._meta.schema))
            self._rows_in_shard += len(metas)
            if self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._npy is not None:
            self._npy.close()
            self._npy = None
        self._meta.close()
        self._meta = None
        self.shards.append({"number": len(self.shards), "rows": self._rows_in_shard})
        self._rows_in_shard = 0

    def finish(self) -> None:
        self.flush()
        if self._rows_in_shard:
            self._close_shard()

    def abort(self) -> None:
        if self._npy is not None:
            self._npy.fh.close()
        if self._meta is not None:
            self._meta.close()

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)


def caption_of(record: dict, caption_field: str) -> str | None:
    """The caption for img2dataset and the metadata: the field asked for, or with `auto` the first of
    syn_text, text1 (the best retrieved text), caption that the record has."""
    fields = CAPTION_FIELDS if caption_field == "auto" else (caption_field,)
    for name in fields:
        if name == "text1":
            texts = record.get("texts")
            value = texts[0].get("text") if isinstance(texts, list) and texts and isinstance(texts[0], dict) else None
        else:
            value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def run_export(run: Run, opts: ExportOptions) -> None:
    dtype, rows_per_shard, emb_field = Dtype(opts.dtype).value, opts.rows_per_shard, opts.emb_field
    caption_field, overwrite = opts.caption_field, opts.overwrite
    import pyarrow as pa

    if not run.output or run.output == "-":
        raise RsynError("export writes a directory: give -o DIR")
    if dtype not in DTYPES:
        raise RsynError(f"--dtype {dtype!r}: expected float16 or float32")
    s = pa.string()
    model_field = f"{emb_field}_model"
    run.declare_reasons(["nothing_to_export"])
    models: dict[str, str] = {}
    with AtomicDirectory(run.output, marker=DONE_MARKER, overwrite=overwrite) as out:
        images = Part(
            "img_emb",
            "img_emb",
            "metadata",
            "metadata",
            [pa.field(n, s) for n in ("id", "url", "caption", "doc", "emb_model")],
            rows_per_shard,
            out.tmp,
            dtype,
        )
        texts = Part(
            "text_emb",
            "text_emb",
            "text_metadata",
            "text_metadata",
            [pa.field(n, s) for n in ("id", "text", "doc", "emb_model")],
            rows_per_shard,
            out.tmp,
            dtype,
        )
        urls = Part(
            "img2dataset", "", None, None, [pa.field(n, s) for n in ("url", "caption", "id")], rows_per_shard, out.tmp
        )
        try:
            for record in run.records():
                kind = record.get("kind")
                emb = record.get(emb_field)
                exported = False
                if emb is not None:
                    part = images if kind == "image" else texts if kind == "text" else None
                    if part is not None and _check_embedding(run, record, emb, part, models, model_field):
                        meta = {
                            "id": _str(record.get("id")),
                            "doc": _str(record.get("doc")),
                            "emb_model": _str(record.get(model_field)),
                        }
                        if kind == "image":
                            meta.update(url=_str(record.get("url")), caption=caption_of(record, caption_field))
                        else:
                            meta["text"] = _str(record.get("text"))
                        part.add(meta, emb)
                        exported = True
                if kind == "image" and isinstance(record.get("url"), str) and record["url"]:
                    urls.add(
                        {
                            "url": record["url"],
                            "caption": caption_of(record, caption_field),
                            "id": _str(record.get("id")),
                        }
                    )
                    exported = True
                if not exported:
                    run.drop(record, "nothing_to_export")
            for part in (images, texts, urls):
                part.finish()
        except BaseException:
            for part in (images, texts, urls):
                part.abort()
            raise
        summary = {
            "dtype": dtype,
            "emb_field": emb_field,
            "models": dict(sorted(models.items())),
            "image_embeddings": images.rows,
            "text_embeddings": texts.rows,
            "img2dataset_rows": urls.rows,
            "dim": {k: p.dim for k, p in (("image", images), ("text", texts)) if p.dim},
            "shards": {"img_emb": images.shards, "text_emb": texts.shards, "img2dataset": urls.shards},
        }
        write_bytes_atomic(out.tmp / STATS_FILE, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
        write_bytes_atomic(out.tmp / DONE_MARKER, b"")
    run.extra.update({k: v for k, v in summary.items() if k != "shards"})
    run.count_out(images.rows + texts.rows)
    run.out_parts.update(
        {"image embeddings": images.rows, "text embeddings": texts.rows, "img2dataset rows": urls.rows}
    )
    run.note(f"{images.rows:,} image and {texts.rows:,} text embeddings, {urls.rows:,} urls -> {run.output}")


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


def _check_embedding(run: Run, record: dict, emb, part: Part, models: dict, model_field: str) -> bool:
    """A valid embedding of the part's dimension and of one model per kind; else reported per --on-error."""
    kind = record.get("kind")
    try:
        if not isinstance(emb, str):
            raise ValueError("is not a base64 string")
        dim = len(decode_embeddings([emb])[0])
    except ValueError as exc:
        run.error(
            run.where,
            f"{kind} record {_str(record.get('id')) or '?'}: embedding {exc}",
            record=record,
            reason="bad_embedding",
        )
        return False
    if part.dim is None:
        part.dim = dim
    elif dim != part.dim:
        run.error(
            run.where,
            f"{kind} record {_str(record.get('id')) or '?'}: embedding of {dim} dims, the "
            f"earlier {kind} embeddings have {part.dim}",
            record=record,
            reason="bad_embedding",
        )
        return False
    model = _str(record.get(model_field))
    if model is not None:
        first = models.setdefault(kind, model)
        if first != model:  # two embedding spaces in one index would make its distances meaningless
            run.error(
                run.where,
                f"{kind} record {_str(record.get('id')) or '?'}: embedded by {model}, the earlier "
                f"{kind} records by {first}",
                record=record,
                reason="mixed_models",
            )
            return False
    return True
