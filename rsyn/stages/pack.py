"""Pack image records into the RealSyn release format (docs/design.md, step 11).

parquet (default): shards `00000.parquet`, ... with exactly the released
columns raw_image_url, text1, text2, text3, syn_text (all strings; a missing
text is null, which img2dataset turns into an empty caption / a JSON null),
plus provenance columns with --extra-columns.

webdataset: tars `00000.tar`, ... of KEY.jpg (the local image of the record's
`path`), KEY.txt (text1) and KEY.json (text2, text3, syn_text, provenance), as
img2dataset writes them and the `webdataset` library reads them.

The output directory is built under a hidden temporary name next to it and
renamed into place at the end. `_stats.json` (the pack's numbers) and then
`_SUCCESS` (the done marker) are written last: a killed run leaves no directory
that looks complete. The leading underscore is what Spark, Arrow
(pq.read_table(DIR), pyarrow.dataset) and Hugging Face `datasets` skip, so
DIR reads directly as a dataset.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from rsyn.errors import RsynError
from rsyn.localfiles import shown
from rsyn.options.pack import PackOptions
from rsyn.stream import AtomicDirectory, write_bytes_atomic
from rsyn.textstyle import TextStyle, apply_text_style

if TYPE_CHECKING:
    from rsyn.command import Run

RELEASE_COLUMNS = ["raw_image_url", "text1", "text2", "text3", "syn_text"]
TEXT_COLUMNS = ["text1", "text2", "text3", "syn_text"]
REAL_TEXTS = 3
DEFAULT_ROWS = {"parquet": 100_000, "webdataset": 10_000}  # webdataset: img2dataset's shard size
JPEG_MAGIC = b"\xff\xd8\xff"


def release_schema(extra_columns: bool):
    import pyarrow as pa

    fields = [pa.field(name, pa.string()) for name in RELEASE_COLUMNS]
    if extra_columns:
        fields += [pa.field("id", pa.string()), pa.field("doc", pa.string())]
        fields += [pa.field(f"text{i}_id", pa.string()) for i in range(1, REAL_TEXTS + 1)]
        fields += [pa.field(f"text{i}_score", pa.float32()) for i in range(1, REAL_TEXTS + 1)]
        fields += [
            pa.field("caption", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("cluster", pa.int64()),
            pa.field("sim", pa.float32()),
        ]
    return pa.schema(fields)


# --------------------------------------------------------------------------- output directory


STATS_FILE = "_stats.json"  # the pack's numbers; "_" so that dataset readers skip it
DONE_MARKER = "_SUCCESS"  # written last (empty, as Spark writes it): the directory is a complete rsyn pack output


# --------------------------------------------------------------------------- rows


class WrongType(Exception):
    """A record field of the wrong type; the message names the field and the type, never the value."""


def release_row(record: dict, extra_columns: bool) -> dict | str:
    """The output row of one image record, or a message saying what is wrong with it."""
    url = record.get("url")
    if not isinstance(url, str) or not url.strip():
        return "image record has no `url`"
    texts = record.get("texts", [])
    if not isinstance(texts, list) or not all(isinstance(t, dict) and isinstance(t.get("text"), str) for t in texts):
        return "`texts` is not a list of {id, text, score} objects"
    syn_text = record.get("syn_text")
    if syn_text is not None and not isinstance(syn_text, str):
        return "`syn_text` is not a string"
    best = texts[:REAL_TEXTS] + [None] * (REAL_TEXTS - min(len(texts), REAL_TEXTS))
    row = {"raw_image_url": url, "syn_text": syn_text}
    for i, text in enumerate(best, 1):
        row[f"text{i}"] = text["text"] if text else None
    if extra_columns:
        try:
            row["id"] = _string(record, "id")
            row["doc"] = _string(record, "doc")
            for i, text in enumerate(best, 1):
                row[f"text{i}_id"] = _string(text, "id", f"texts[{i - 1}].") if text else None
                row[f"text{i}_score"] = _number(text, "score", f"texts[{i - 1}].") if text else None
            row["caption"] = _string(record, "caption")
            tags = record.get("tags")
            if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                raise WrongType(f"`tags` is {_kind(tags)}, not a list of strings")
            row["tags"] = tags
            cluster = record.get("cluster")
            if cluster is not None and not (type(cluster) is int and INT64_MIN <= cluster <= INT64_MAX):
                raise WrongType(f"`cluster` is {_kind(cluster)}, not a 64-bit integer")
            row["cluster"] = cluster
            row["sim"] = _number(record, "sim")
        except WrongType as exc:
            return str(exc)
    return row


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _string(record: dict, key: str, prefix: str = "") -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise WrongType(f"`{prefix}{key}` is {_kind(value)}, not a string")
    return value


def _number(record: dict, key: str, prefix: str = "") -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):  # bool is an int to Python, not to the schema
        raise WrongType(f"`{prefix}{key}` is {_kind(value)}, not a number")
    return float(value)


def _kind(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer out of range"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object", float: "a number"}.get(
        type(value), f"a {type(value).__name__}"
    )


class TextStats:
    """Table 15 of the paper: texts per image and mean tokens per text (whitespace-separated words)."""

    def __init__(self):
        self.rows = 0
        self.present = dict.fromkeys(TEXT_COLUMNS, 0)
        self.tokens = dict.fromkeys(TEXT_COLUMNS, 0)

    def add(self, table) -> None:
        import pyarrow.compute as pc

        self.rows += table.num_rows
        for name in TEXT_COLUMNS:
            column = table.column(name)
            self.present[name] += len(column) - column.null_count
            words = pc.list_value_length(pc.utf8_split_whitespace(column))
            self.tokens[name] += int(pc.sum(words).as_py() or 0)

    def summary(self) -> dict:
        real = sum(self.present[f"text{i}"] for i in range(1, REAL_TEXTS + 1))
        return {
            "rows": self.rows,
            "realistic_texts_per_image": round(real / self.rows, 4) if self.rows else 0.0,
            "texts_per_image": round((real + self.present["syn_text"]) / self.rows, 4) if self.rows else 0.0,
            "non_null": dict(self.present),
            "mean_tokens": {
                name: round(self.tokens[name] / self.present[name], 3) if self.present[name] else None
                for name in TEXT_COLUMNS
            },
            "mean_tokens_realistic": round(sum(self.tokens[f"text{i}"] for i in range(1, REAL_TEXTS + 1)) / real, 3)
            if real
            else None,
            "tokens": "whitespace-separated words",
        }


# --------------------------------------------------------------------------- images


def as_jpeg(data: bytes, max_pixels: int) -> tuple[bytes, bool]:
    """(JPEG bytes, whether re-encoded) of an image file's bytes; ImageError when it is not a usable image.

    A JPEG goes into the tar as it is (as img2dataset stores them), once its
    header names a size within `max_pixels`; its body is not decoded. Other
    formats are decoded under the same caps (rsyn.images) and re-encoded.
    """
    from PIL import Image

    from rsyn.images import ImageError, decode_image

    if data.startswith(JPEG_MAGIC):
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError:
            raise ImageError("too_many_pixels", f"over the cap of {max_pixels:,} pixels") from None
        except Exception as exc:  # a corrupt header can raise almost anything inside PIL
            raise ImageError("decode_failed", f"bad JPEG header ({type(exc).__name__})") from None
        if width * height > max_pixels:
            raise ImageError("too_many_pixels", f"{width}x{height} is over the cap of {max_pixels:,} pixels")
        return data, False
    decoded = decode_image(data, max_pixels)
    out = io.BytesIO()
    decoded.image.save(out, format="JPEG", quality=95)
    return out.getvalue(), True


# --------------------------------------------------------------------------- writers


def rows_table(rows: list[dict], schema):
    """The Arrow table of `rows` (dicts with the schema's keys), equal to `Table.from_pylist(rows, schema=schema)`.

    pyarrow imports pandas (about 60 MiB, most of pack's start-up) the first time it converts a Python
    list, only to ask whether it is a pandas object. Its JSON reader builds the same columns without
    that. float32 columns are read as float64 and cast, the rounding from_pylist does (Python float ->
    float32), so the values are bit for bit the same as converting the floats directly.
    """
    import pyarrow as pa
    import pyarrow.json as pa_json

    if not rows:
        return schema.empty_table()
    read_as = pa.schema(
        [pa.field(f.name, pa.float64()) if pa.types.is_float32(f.type) else f for f in schema], schema.metadata
    )
    data = b"\n".join(orjson.dumps(row) for row in rows)
    table = pa_json.read_json(
        io.BytesIO(data),
        # one block for the whole shard (up to 1 GiB of JSON): one chunk per column, as from_pylist makes
        read_options=pa_json.ReadOptions(use_threads=False, block_size=min(len(data), 1 << 30)),
        parse_options=pa_json.ParseOptions(explicit_schema=read_as, unexpected_field_behavior="ignore"),
    )
    return table.cast(schema, safe=False)  # safe=False: a float beyond float32 becomes inf, as in from_pylist


class Shards:
    """Numbered shards in a directory, `rows_per_shard` rows each; `shards` lists what was written."""

    def __init__(self, directory: Path, schema, stats: TextStats, rows_per_shard: int):
        self.directory, self.schema, self.stats = directory, schema, stats
        self.rows_per_shard = rows_per_shard
        self.shards: list[dict] = []
        self.rows: list[dict] = []  # of the shard being written

    def add(self, row: dict, image: bytes | None = None) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        """Finish the shard being written (if it has rows)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what an unfinished shard holds, after an error."""


class ParquetShards(Shards):
    def flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = rows_table(self.rows, self.schema)
        name = f"{len(self.shards):05d}.parquet"
        pq.write_table(table, self.directory / name)
        self.stats.add(table)
        self.shards.append({"name": name, "rows": table.num_rows})
        self.rows = []


class WebdatasetShards(Shards):
    """Numbered tars of KEY.jpg, KEY.txt, KEY.json, written sample by sample (images are never held in memory)."""

    def __init__(self, directory: Path, schema, stats: TextStats, rows_per_shard: int):
        super().__init__(directory, schema, stats, rows_per_shard)
        self.reencoded = 0
        self._file = None
        self._tar = None
        self._width = max(4, len(str(rows_per_shard - 1)))  # img2dataset's keys: 5 digits of shard, 4 of index

    def add(self, row: dict, image: bytes | None = None) -> None:
        import webdataset as wds

        if self._tar is None:
            self._file = open(self.directory / f"{len(self.shards):05d}.tar", "wb")
            # mtime fixed so that the same input gives byte-identical tars
            self._tar = wds.TarWriter(self._file, mtime=0, encoder=False)
        meta = {k: v for k, v in row.items() if k != "text1"}
        self._tar.write(
            {
                "__key__": f"{len(self.shards):05d}{len(self.rows):0{self._width}d}",
                "jpg": image,
                "txt": (row["text1"] or "").encode("utf-8"),
                "json": orjson.dumps(meta),
            }
        )
        super().add(row)

    def flush(self) -> None:
        if self._tar is None:
            return
        name = f"{len(self.shards):05d}.tar"
        self._close_tar()
        self.stats.add(rows_table(self.rows, self.schema))
        self.shards.append({"name": name, "rows": len(self.rows)})
        self.rows = []

    def close(self) -> None:
        """Close a shard left open by an error (its directory is discarded anyway), without a second error."""
        try:
            self._close_tar()
        except OSError:
            pass

    def _close_tar(self) -> None:
        tar, file = self._tar, self._file
        self._tar = self._file = None
        try:
            if tar is not None:
                tar.close()
        finally:
            if file is not None:
                file.close()


# --------------------------------------------------------------------------- the stage


def run_pack(run: Run, opts: PackOptions) -> None:
    fmt, rows_per_shard, extra_columns, overwrite = opts.fmt, opts.rows_per_shard, opts.extra_columns, opts.overwrite
    images, path_root, max_bytes, max_pixels = opts.images, opts.path_root, opts.max_bytes, opts.max_pixels
    text_style = TextStyle(opts.text_style).value
    if not run.output or run.output == "-":
        raise RsynError("pack writes a directory: give -o DIR")
    if fmt not in DEFAULT_ROWS:
        raise RsynError(f"--format {fmt!r}: expected parquet or webdataset")
    if images and fmt != "webdataset":
        raise RsynError("--images is for --format webdataset")
    rows_per_shard = rows_per_shard or DEFAULT_ROWS[fmt]
    run.declare_reasons(["not_image", "not_downloaded"] if images else ["not_image"])
    loader = _image_loader(run, images, path_root, max_bytes) if fmt == "webdataset" else None
    stats = TextStats()
    schema = release_schema(extra_columns)
    try:
        with AtomicDirectory(run.output, marker=DONE_MARKER, overwrite=overwrite) as out:
            shards = (WebdatasetShards if fmt == "webdataset" else ParquetShards)(
                out.tmp, schema, stats, rows_per_shard
            )
            try:
                for record in run.records():
                    if record.get("kind") != "image":
                        run.drop(record, "not_image")
                        continue
                    row = release_row(record, extra_columns)
                    if isinstance(row, str):
                        run.error(run.where, row, record=record, reason="bad_record")
                        continue
                    row = apply_text_style(row, text_style)  # --text-style (rsyn/textstyle.py)
                    image = None
                    if loader is not None:
                        image = _jpeg_of(run, loader, record, max_pixels)
                        if image is None:
                            continue
                        shards.reencoded += image[1]
                        image = image[0]
                    shards.add(row, image)
                shards.flush()
            except BaseException:
                shards.close()
                raise
            summary = {"format": fmt, "columns": schema.names, "shards": shards.shards, **stats.summary()}
            if fmt == "webdataset":
                summary["reencoded_to_jpeg"] = shards.reencoded
            run.extra.update({k: v for k, v in summary.items() if k != "shards"})
            run.extra["shards"] = len(shards.shards)
            write_bytes_atomic(out.tmp / STATS_FILE, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
            write_bytes_atomic(out.tmp / DONE_MARKER, b"")
        run.count_out(stats.rows)
    finally:
        if loader is not None and loader.images is not None:
            loader.images.close()
    run.note(
        f"{stats.rows:,} rows in {len(shards.shards)} {fmt} shard{'s' if len(shards.shards) != 1 else ''} "
        f"-> {run.output}"
    )


def _image_loader(run: Run, images: str | None, path_root: str | None, max_bytes: int):
    """Reads each record's image from its `path` (under --path-root) or the --images folder; never downloads."""
    from rsyn.images import ImageLoader, open_image_folder

    folder = None
    if images:
        folder = open_image_folder(images, max_bytes, note=run.note)
    return ImageLoader(folder, None, max_bytes=max_bytes, root=path_root)


def _jpeg_of(run: Run, loader, record: dict, max_pixels: int) -> tuple[bytes, bool] | None:
    """(JPEG bytes, re-encoded?) of the record's image, or None after dropping or reporting it."""
    from rsyn.images import ImageError

    path = record.get("path")
    if (path is None or path == "") and loader.images is None:
        run.error(
            run.where,
            "no local image (`path`): --format webdataset needs downloaded images "
            "(or --images DIR, an img2dataset output)",
            record=record,
            reason="no_local_image",
        )
        return None
    try:
        # without --images, only the file at `path` will do (there is nothing to download from)
        data, _, _ = loader.read_bytes(record if loader.images is not None else {"path": path})
        return as_jpeg(data, max_pixels)
    except ImageError as exc:
        if exc.reason == "not_downloaded":  # img2dataset could not fetch it: expected, counted
            run.drop(record, "not_downloaded", detail=exc.detail)
            return None
        run.error(
            run.where, f"image of record {shown(str(record.get('id', '?')))}: {exc}", record=record, reason=exc.reason
        )
        return None
