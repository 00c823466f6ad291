"""Interleaved web documents (OBELICS parquet or JSONL, MMC4 JSONL) read into one shape.

A `Document` is its id (`doc`: the page URL when known, else a content id of
the document), the place it was read from (`where`: "FILE:LINE" for JSONL,
"FILE:ROW" for parquet with rows counted from 1) and its `parts` in reading
order: `ImagePart`s and paragraph strings.

Reading and parsing are split so that a `--shard` run can skip documents of
other shards without parsing them: `raw_documents()` yields (where, raw, format)
and `parse_document()` turns one raw document into a `Document` or raises
`DocumentError` with a one-line message.

Formats (detected from the fields, or forced with `fmt`):

- OBELICS: `images` and `texts` are lists of the same length; at each position
  exactly one of them is non-null. `metadata` (a JSON string, or an already
  decoded list) has one dict per image position (`src`, `alt_text`,
  `original_width`, `original_height`, ...) and null per text position.
  `general_metadata` (JSON string or dict) has the page `url`. A text node
  holds paragraphs separated by blank lines.
- MMC4: `url`, `text_list` (paragraphs), `image_info` (dicts with `raw_url`,
  `image_name`, `matched_text_index`, `matched_sim`). MMC4 images have no
  place in the page, only the paragraph they were matched to: an image is put
  just before that paragraph (images without a valid match go last).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from rsyn.errors import first_line
from rsyn.records import content_id
from rsyn.stream import STDIO, iter_lines

FORMATS = ("auto", "obelics", "mmc4")
PARQUET_MAGIC = b"PAR1"
# OBELICS marks where its source documents were cut; it is not page text.
END_OF_DOCUMENT_MARKER = "END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")

OBELICS_COLUMNS = ("images", "texts", "metadata", "general_metadata")
MMC4_COLUMNS = ("url", "text_list", "image_info")
# the columns a parquet input must have; the others are optional, as the fields are in JSONL
REQUIRED_COLUMNS = {"obelics": ("images", "texts"), "mmc4": ("text_list", "image_info")}


@dataclass(slots=True)
class ImagePart:
    url: str
    width: int | None = None
    height: int | None = None
    alt: str | None = None
    image_name: str | None = None  # MMC4: the image's file name in the MMC4 image download


@dataclass(slots=True)
class Document:
    doc: str
    where: str
    parts: list  # ImagePart or str (one paragraph), in reading order
    markers_removed: int = 0


class DocumentError(Exception):
    """A malformed document: `message` is one line; `reason` is the error count key."""

    def __init__(self, message: str, reason: str = "bad_document", where: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.where = where  # set when the error is about a whole input, not one document


# --------------------------------------------------------------------------- reading


def is_parquet(path: str) -> bool:
    if path == STDIO:
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def raw_documents(path: str, fmt: str = "auto", batch_rows: int = 512) -> Iterator[tuple[str, Any, str]]:
    """(where, raw document, format) of one input in order: raw is a JSONL line (bytes) or a parquet row (dict).

    The format is `fmt`, except for parquet with fmt "auto", where the columns decide it.
    Parquet is read one batch of rows at a time (within row groups), never whole.
    Raises DocumentError for an input that cannot be read at all, and lets
    rsyn.stream.TruncatedStream through for a damaged compressed stream.
    """
    if is_parquet(path):
        yield from _parquet_rows(path, fmt, batch_rows)
        return
    name = "<stdin>" if path == STDIO else path
    first = True
    for lineno, line in iter_lines(path):
        if first and line.startswith(PARQUET_MAGIC):
            raise DocumentError(
                "parquet cannot be read from stdin (it needs seeking); pass the file name",
                "unreadable_input",
                where=name,
            )
        first = False
        if line and not line.isspace():
            yield f"{name}:{lineno}", line, fmt


def _parquet_rows(path: str, fmt: str, batch_rows: int) -> Iterator[tuple[str, dict, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DocumentError(f"not a readable parquet file: {first_line(exc)}", "unreadable_input", where=path) from None
    names = set(parquet.schema_arrow.names)
    if fmt == "auto":
        fmt = next((name for name, required in REQUIRED_COLUMNS.items() if set(required) <= names), "")
    if not fmt:
        raise DocumentError(
            f"parquet columns {_columns(names)} are neither OBELICS (images, texts) nor MMC4 (text_list, image_info)",
            "unknown_format",
            where=path,
        )
    missing = [c for c in REQUIRED_COLUMNS[fmt] if c not in names]
    if missing:
        raise DocumentError(
            f"parquet columns {_columns(names)} lack {', '.join(missing)}, which {fmt} documents need",
            "unknown_format",
            where=path,
        )
    wanted = OBELICS_COLUMNS if fmt == "obelics" else MMC4_COLUMNS
    columns = [c for c in wanted if c in names]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield f"{path}:{row}", record, fmt
    except (pa.ArrowException, OSError) as exc:
        raise DocumentError(
            f"unreadable parquet data: {first_line(exc)}", "unreadable_input", where=f"{path}:{row + 1}"
        ) from None


def _columns(names: set[str]) -> str:
    shown = sorted(names)
    return repr(shown[:20])[:300] + (f" (+{len(shown) - 20} more)" if len(shown) > 20 else "")


# --------------------------------------------------------------------------- parsing


def parse_document(raw: Any, fmt: str = "auto") -> Document:
    """One raw document (JSONL bytes or a parquet row dict) -> Document; DocumentError when malformed."""
    if isinstance(raw, bytes):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DocumentError(f"invalid JSON: {exc}", "invalid_json") from None
        if type(raw) is not dict:
            raise DocumentError(f"document is a JSON {type(raw).__name__}, not an object", "not_an_object")
    if fmt == "auto":
        fmt = detect_format(raw)
    return _parse_obelics(raw) if fmt == "obelics" else _parse_mmc4(raw)


def detect_format(raw: dict) -> str:
    if "images" in raw and "texts" in raw:
        return "obelics"
    if "text_list" in raw and "image_info" in raw:
        return "mmc4"
    raise DocumentError(
        "neither an OBELICS document (images, texts) nor an MMC4 document (text_list, image_info)", "unknown_format"
    )


def paragraphs(text: str) -> tuple[list[str], int]:
    """Paragraphs of a text node (blank-line separated), without OBELICS end markers; and the markers removed."""
    kept, markers = [], 0
    for paragraph in _BLANK_LINE.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if paragraph == END_OF_DOCUMENT_MARKER:
            markers += 1
            continue
        kept.append(paragraph)
    return kept, markers


def _parse_obelics(raw: dict) -> Document:
    images = _require_list(raw, "images")
    texts = _require_list(raw, "texts")
    if len(images) != len(texts):
        raise DocumentError(f"images has {len(images)} entries but texts has {len(texts)}", "ragged_document")
    metadata = _json_value(raw.get("metadata"), "metadata")
    if metadata is not None:
        if not isinstance(metadata, list):
            raise DocumentError(f"metadata is a {_type(metadata)}, not a list", "wrong_type")
        if len(metadata) != len(images):
            raise DocumentError(f"metadata has {len(metadata)} entries but images has {len(images)}", "ragged_document")
    page = _json_value(raw.get("general_metadata"), "general_metadata")
    if page is not None and not isinstance(page, dict):
        raise DocumentError(f"general_metadata is a {_type(page)}, not an object", "wrong_type")
    url = page.get("url") if page else None
    if url is not None and not isinstance(url, str):
        raise DocumentError(f"general_metadata.url is a {_type(url)}, not a string", "wrong_type")

    parts: list = []
    markers = 0
    for i, (image, text) in enumerate(zip(images, texts)):
        if (image is None) == (text is None):
            raise DocumentError(
                f"position {i}: exactly one of images[{i}] and texts[{i}] must be non-null "
                f"(both are {'null' if image is None else 'set'})",
                "ragged_document",
            )
        if text is not None:
            if not isinstance(text, str):
                raise DocumentError(f"texts[{i}] is a {_type(text)}, not a string", "wrong_type")
            kept, removed = paragraphs(text)
            parts.extend(kept)
            markers += removed
            continue
        if not isinstance(image, str) or not image.strip():
            raise DocumentError(f"images[{i}] is {_describe(image)}, not an image URL", "wrong_type")
        meta = metadata[i] if metadata is not None else None
        if meta is not None and not isinstance(meta, dict):
            raise DocumentError(f"metadata[{i}] is a {_type(meta)}, not an object", "wrong_type")
        meta = meta or {}
        alt = meta.get("alt_text")
        if alt is not None and not isinstance(alt, str):
            raise DocumentError(f"metadata[{i}].alt_text is a {_type(alt)}, not a string", "wrong_type")
        parts.append(
            ImagePart(image.strip(), _pixels(meta, "original_width", i), _pixels(meta, "original_height", i), alt)
        )
    doc = url.strip() if url and url.strip() else content_id("doc", orjson.dumps([images, texts]).decode())
    return Document(doc, "", parts, markers)


def _parse_mmc4(raw: dict) -> Document:
    text_list = _require_list(raw, "text_list")
    image_info = _require_list(raw, "image_info")
    url = raw.get("url")
    if url is not None and not isinstance(url, str):
        raise DocumentError(f"url is a {_type(url)}, not a string", "wrong_type")
    before: dict[int, list[ImagePart]] = {}
    unmatched: list[ImagePart] = []
    for j, info in enumerate(image_info):
        if not isinstance(info, dict):
            raise DocumentError(f"image_info[{j}] is a {_type(info)}, not an object", "wrong_type")
        image_url = info.get("raw_url")
        if not isinstance(image_url, str) or not image_url.strip():
            raise DocumentError(f"image_info[{j}].raw_url is {_describe(image_url)}, not an image URL", "wrong_type")
        index = info.get("matched_text_index")
        image_name = info.get("image_name")
        if image_name is not None and not isinstance(image_name, str):
            raise DocumentError(f"image_info[{j}].image_name is {_describe(image_name)}, not a file name", "wrong_type")
        part = ImagePart(image_url.strip(), image_name=image_name or None)
        if index is None:
            unmatched.append(part)
        elif type(index) is not int or not 0 <= index < len(text_list):
            raise DocumentError(
                f"image_info[{j}].matched_text_index is {index!r}, not an index into text_list "
                f"(0..{len(text_list) - 1})",
                "wrong_type",
            )
        else:
            before.setdefault(index, []).append(part)
    parts: list = []
    markers = 0
    for i, text in enumerate(text_list):
        if not isinstance(text, str):
            raise DocumentError(f"text_list[{i}] is {_describe(text)}, not a string", "wrong_type")
        parts.extend(before.get(i, ()))
        kept, removed = paragraphs(text)
        parts.extend(kept)
        markers += removed
    parts.extend(unmatched)
    doc = (
        url.strip()
        if url and url.strip()
        else content_id("doc", orjson.dumps([text_list, [p.url for p in parts if isinstance(p, ImagePart)]]).decode())
    )
    return Document(doc, "", parts, markers)


def _require_list(raw: dict, field: str) -> list:
    if field not in raw:
        raise DocumentError(f"missing field {field!r}", "missing_field")
    value = raw[field]
    if not isinstance(value, list):
        raise DocumentError(f"{field} is {_describe(value)}, not a list", "wrong_type")
    return value


def _json_value(value: Any, field: str) -> Any:
    """A field that OBELICS stores as a JSON string (JSONL exports sometimes hold it decoded)."""
    if isinstance(value, (str, bytes)):
        if not value.strip():
            return None
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise DocumentError(f"{field} is not valid JSON: {exc}", "bad_metadata") from None
    return value


def _pixels(meta: dict, key: str, i: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int or value <= 0:
        raise DocumentError(f"metadata[{i}].{key} is {value!r}, not a positive number of pixels", "bad_metadata")
    return value


def _type(value: Any) -> str:
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return f"a {_type(value)}"
