"""Pack image records into the RealSyn release format (DESIGN.md section 1, step 11).

parquet (default): shards `00000.parquet`, ... with exactly the released
columns raw_image_url, text1, text2, text3, syn_text (all strings; a missing
text is null, which img2dataset turns into an empty caption / a JSON null),
plus provenance columns with --extra-columns.

webdataset: tars `00000.tar`, ... of KEY.jpg (the local image of the record's
`path`), KEY.txt (text1) and KEY.json (text2, text3, syn_text, provenance), as
img2dataset writes them and the `webdataset` library reads them.

The output directory is built under a hidden temporary name next to it and
renamed into place at the end, with stats.json (the done marker) written last:
a killed run leaves no directory that looks complete.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import orjson

from rsyn.command import RsynError, Run
from rsyn.stream import write_bytes_atomic
from rsyn.textstyle import apply_text_style

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
        fields += [pa.field("caption", pa.string()), pa.field("tags", pa.list_(pa.string())),
                   pa.field("cluster", pa.int64()), pa.field("sim", pa.float32())]
    return pa.schema(fields)


# --------------------------------------------------------------------------- output directory


class AtomicDirectory:
    """A directory built under `.NAME.rsyn-tmp-PID` beside its final place and renamed there by commit()."""

    def __init__(self, path: str, overwrite: bool):
        self.path = Path(path)
        if self.path.exists():
            if not self.path.is_dir():
                raise RsynError(f"-o {path}: exists and is not a directory")
            if any(self.path.iterdir()) and not overwrite:
                raise RsynError(f"-o {path}: directory exists and is not empty (use --overwrite to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.rsyn-tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

    def commit(self) -> None:
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.rsyn-old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- rows


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
        row["id"] = _str_or_none(record.get("id"))
        row["doc"] = _str_or_none(record.get("doc"))
        for i, text in enumerate(best, 1):
            row[f"text{i}_id"] = _str_or_none(text.get("id")) if text else None
            row[f"text{i}_score"] = _float_or_none(text.get("score")) if text else None
        row["caption"] = _str_or_none(record.get("caption"))
        tags = record.get("tags")
        row["tags"] = [str(t) for t in tags] if isinstance(tags, list) else None
        row["cluster"] = record.get("cluster") if isinstance(record.get("cluster"), int) else None
        row["sim"] = _float_or_none(record.get("sim"))
    return row


def _str_or_none(value) -> str | None:
    return value if isinstance(value, str) else None


def _float_or_none(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
            "mean_tokens": {name: round(self.tokens[name] / self.present[name], 3) if self.present[name] else None
                            for name in TEXT_COLUMNS},
            "mean_tokens_realistic": round(sum(self.tokens[f"text{i}"] for i in range(1, REAL_TEXTS + 1)) / real, 3)
            if real else None,
            "tokens": "whitespace-separated words",
        }


# --------------------------------------------------------------------------- images


IMAGE_SUFFIXES = ("jpg", "png", "webp")  # img2dataset's --encode_format choices


class DownloadedImages:
    """The images an img2dataset run saved (webdataset or files output format), found by their URL.

    img2dataset writes, per shard, `SHARD.parquet` (url, key, status) next to
    `SHARD.tar` (members KEY.jpg, ...) or a folder `SHARD/` (files KEY.jpg,
    ...). The index maps each successfully downloaded URL to (file, offset,
    size) of its image: a tar member is read with one seek, never extracted.
    """

    def __init__(self, directory: str):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        root = Path(directory)
        if not root.is_dir():
            raise RsynError(f"--images {directory}: not a directory")
        self.location: dict[str, tuple[str, int | None, int | None]] = {}
        metas = sorted(root.glob("*.parquet"))
        if not metas:
            raise RsynError(f"--images {directory}: no img2dataset shard metadata (*.parquet) in it")
        for meta in metas:
            try:
                table = pq.read_table(meta, columns=["url", "key", "status"])
            except (OSError, ValueError, KeyError) as exc:
                raise RsynError(f"--images {meta}: not img2dataset metadata (url, key, status): {exc}") from None
            table = table.filter(pc.equal(table["status"], "success"))
            pairs = zip(table["url"].to_pylist(), table["key"].to_pylist())
            tar, folder = meta.with_suffix(".tar"), meta.with_suffix("")
            if tar.exists():
                members = _tar_images(tar)
                for url, key in pairs:
                    if key in members:
                        self.location[url] = (str(tar), *members[key])
            elif folder.is_dir():
                for url, key in pairs:
                    for suffix in IMAGE_SUFFIXES:
                        path = folder / f"{key}.{suffix}"
                        if path.exists():
                            self.location[url] = (str(path), None, None)
                            break

    def __contains__(self, url: str) -> bool:
        return url in self.location


def _tar_images(tar: Path) -> dict[str, tuple[int, int]]:
    """KEY -> (offset, size) of the image member KEY.<jpg|png|webp>; headers only, data is skipped."""
    import tarfile

    found = {}
    with tarfile.open(tar, "r:") as archive:
        for member in archive:
            key, _, suffix = member.name.rpartition("/")[2].partition(".")
            if suffix in IMAGE_SUFFIXES and member.isfile():
                found[key] = (member.offset_data, member.size)
    return found


def read_image_bytes(source: tuple[str, int | None, int | None]) -> bytes:
    path, offset, size = source
    if offset is None:
        return Path(path).read_bytes()
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{path} is truncated")
    return data


# --------------------------------------------------------------------------- writers


class Shards:
    """Writes numbered shards into a directory; `shards` lists what was written."""

    suffix = ""

    def __init__(self, directory: Path, schema, stats: TextStats, rows_per_shard: int):
        self.directory, self.schema, self.stats = directory, schema, stats
        self.rows_per_shard = rows_per_shard
        self.shards: list[dict] = []

    def next_name(self) -> str:
        return f"{len(self.shards):05d}.{self.suffix}"

    def write(self, rows: list[dict], places: list[str]) -> None:
        """One shard of rows; `places` are their FILE:LINE, for error messages."""
        raise NotImplementedError


class ParquetShards(Shards):
    suffix = "parquet"

    def write(self, rows: list[dict], places: list[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=self.schema)
        name = self.next_name()
        pq.write_table(table, self.directory / name)
        self.stats.add(table)
        self.shards.append({"name": name, "rows": table.num_rows})


class WebdatasetShards(Shards):
    suffix = "tar"

    def __init__(self, directory: Path, schema, stats: TextStats, rows_per_shard: int, run: Run):
        super().__init__(directory, schema, stats, rows_per_shard)
        self.run = run
        self.reencoded = 0

    def write(self, rows: list[dict], places: list[str]) -> None:
        import pyarrow as pa
        import webdataset as wds

        shard = len(self.shards)
        name = self.next_name()
        width = max(4, len(str(self.rows_per_shard - 1)))  # img2dataset's keys: 5 digits of shard, 4 of index
        written = []
        with open(self.directory / name, "wb") as fh:
            # mtime fixed so that the same input gives byte-identical tars
            tar = wds.TarWriter(fh, mtime=0, encoder=False)
            for i, (row, where) in enumerate(zip(rows, places)):
                image = self._jpeg(row.pop("_image"), where)
                if image is None:
                    continue
                meta = {k: v for k, v in row.items() if k != "text1"}
                tar.write({"__key__": f"{shard:05d}{i:0{width}d}", "jpg": image,
                           "txt": (row["text1"] or "").encode("utf-8"),
                           "json": orjson.dumps(meta)})
                written.append(row)
            tar.close()
        table = pa.Table.from_pylist(written, schema=self.schema)
        self.stats.add(table)
        self.shards.append({"name": name, "rows": len(written)})

    def _jpeg(self, source: tuple[str, int | None, int | None], where: str) -> bytes | None:
        """The image as JPEG bytes (other formats re-encoded), or None after reporting it."""
        path = source[0]
        try:
            data = read_image_bytes(source)
        except OSError as exc:
            self.run.error(where, f"cannot read image {path}: {exc.strerror or exc}", reason="unreadable_image")
            return None
        if data.startswith(JPEG_MAGIC):
            return data
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                out = io.BytesIO()
                image.convert("RGB").save(out, format="JPEG", quality=95)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            self.run.error(where, f"cannot decode image {path}: {exc}", reason="undecodable_image")
            return None
        self.reencoded += 1
        return out.getvalue()


# --------------------------------------------------------------------------- the stage


def run_pack(run: Run, *, fmt: str = "parquet", rows_per_shard: int | None = None, extra_columns: bool = False,
             overwrite: bool = False, images: str | None = None, text_style: str = "original") -> None:
    if not run.output or run.output == "-":
        raise RsynError("pack writes a directory: give -o DIR")
    if fmt not in DEFAULT_ROWS:
        raise RsynError(f"--format {fmt!r}: expected parquet or webdataset")
    if images and fmt != "webdataset":
        raise RsynError("--images is for --format webdataset")
    rows_per_shard = rows_per_shard or DEFAULT_ROWS[fmt]
    run.declare_reasons(["not_image", "not_downloaded"] if images else ["not_image"])
    downloaded = DownloadedImages(images) if images else None
    if downloaded is not None:
        run.note(f"{len(downloaded.location):,} downloaded images in {images}")
    out = AtomicDirectory(run.output, overwrite)
    try:
        stats = TextStats()
        schema = release_schema(extra_columns)
        shards = (WebdatasetShards(out.tmp, schema, stats, rows_per_shard, run) if fmt == "webdataset"
                  else ParquetShards(out.tmp, schema, stats, rows_per_shard))
        rows: list[dict] = []
        places: list[str] = []
        for record in run.records():
            if record.get("kind") != "image":
                run.drop(record, "not_image")
                continue
            row = release_row(record, extra_columns)
            if isinstance(row, str):
                run.error(run.where, row, record=record, reason="bad_record")
                continue
            row = apply_text_style(row, text_style)  # --text-style (rsyn/textstyle.py)
            if fmt == "webdataset":
                path = record.get("path")
                if isinstance(path, str) and path:
                    row["_image"] = (path, None, None)
                elif downloaded is not None:
                    if row["raw_image_url"] not in downloaded:  # img2dataset could not fetch it: expected, counted
                        run.drop(record, "not_downloaded")
                        continue
                    row["_image"] = downloaded.location[row["raw_image_url"]]
                else:
                    run.error(run.where, "no local image (`path`): --format webdataset needs downloaded images "
                              "(or --images DIR, an img2dataset output)", record=record, reason="no_local_image")
                    continue
                places.append(run.where)
            rows.append(row)
            if len(rows) >= rows_per_shard:
                shards.write(rows, places)
                rows, places = [], []
        if rows:
            shards.write(rows, places)
        summary = {"format": fmt, "columns": schema.names, "shards": shards.shards, **stats.summary()}
        if fmt == "webdataset":
            summary["reencoded_to_jpeg"] = shards.reencoded
        run.extra.update({k: v for k, v in summary.items() if k != "shards"})
        run.extra["shards"] = len(shards.shards)
        write_bytes_atomic(out.tmp / "stats.json", orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
        out.commit()
        run.count_out(stats.rows)
    except BaseException:
        out.discard()
        raise
    run.note(f"{stats.rows:,} rows in {len(shards.shards)} {fmt} shard{'s' if len(shards.shards) != 1 else ''} "
             f"-> {run.output}")
