"""Reading and writing record streams: JSONL, zstd / gzip / plain, stdin / files / globs.

Every command reads and writes through this module. Compression is detected
from the first bytes (stdin has no name). Files are written under a temporary
name and renamed into place when complete, so a killed run never leaves a file
that looks done.
"""

from __future__ import annotations

import functools
import glob
import itertools
import os
import sys
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import orjson
import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
STDIO = "-"


class StreamError(Exception):
    """Bad input at a known place: `where` is "FILE:LINE"."""

    def __init__(self, where: str, message: str, raw: bytes | None = None, reason: str = "bad_input"):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.raw = raw
        self.reason = reason  # the counter it goes under with --on-error skip


class TruncatedStream(StreamError):
    """A compressed stream that is corrupt or ends mid-frame: nothing after it can be read."""


# --------------------------------------------------------------------------- inputs


def expand_inputs(inputs: Iterable[str] | None) -> list[str]:
    """Expand globs (rsyn does it, so quoted globs work); '-' or nothing means stdin."""
    paths: list[str] = []
    for item in inputs or [STDIO]:
        if item == STDIO:
            paths.append(STDIO)
        elif glob.has_magic(item):
            matched = sorted(glob.glob(item, recursive=True))
            if not matched:
                raise StreamError(item, "no file matches this pattern")
            paths.extend(matched)
        elif not os.path.exists(item):
            raise StreamError(item, "no such file")
        else:
            paths.append(item)
    return paths


def _open_binary(path: str) -> BinaryIO:
    if path == STDIO:
        return sys.stdin.buffer
    return open(path, "rb")


class _Plain:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> None:
        pass


class _Concatenated:
    """Compressed units one after another (as `cat a.zst b.zst` makes: zstd frames, gzip members).

    `new_decompressor` makes the decompressor of one unit; it must expose
    decompress(), eof and unused_data (zstandard's and zlib's both do).
    finish() raises when the input ended inside a unit: a truncated stream.
    """

    def __init__(self, new_decompressor, kind: str, unit: str):
        self._new = new_decompressor
        self._obj = new_decompressor()
        self._mid_unit = False
        self.kind = kind
        self.unit = unit

    def feed(self, data: bytes) -> bytes:
        out = []
        while data:
            self._mid_unit = True
            out.append(self._obj.decompress(data))
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = self._new()
            self._mid_unit = False
        return b"".join(out)

    def finish(self) -> None:
        if self._mid_unit:
            raise ValueError(f"{self.kind} stream is truncated (ends inside a {self.unit})")


def _decoder_for(head: bytes):
    if head.startswith(ZSTD_MAGIC):
        return _Concatenated(zstandard.ZstdDecompressor().decompressobj, "zstd", "frame"), "zstd"
    if head.startswith(GZIP_MAGIC):
        return _Concatenated(lambda: zlib.decompressobj(wbits=31), "gzip", "member"), "gzip"
    return _Plain(), "plain"


def iter_line_blocks(path: str) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (number of the block's first line, lines) of one input, decompressing as the first bytes say.

    Lines come in blocks (one per ~1 MiB read) because a generator step per
    line costs as much as parsing it. Raises TruncatedStream for a corrupt or
    truncated compressed stream, after yielding every complete line before the damage.
    """
    fh = _open_binary(path)
    name = "<stdin>" if path == STDIO else path
    lineno = 0  # lines yielded so far
    try:
        first = fh.read(CHUNK)
        decoder, kind = _decoder_for(first)
        pending = b""
        chunk = first
        while chunk:
            try:
                data = decoder.feed(chunk)
            except (zstandard.ZstdError, zlib.error) as exc:
                raise TruncatedStream(f"{name}:{lineno + 1}", f"corrupt {kind} stream: {exc}") from None
            if data:
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                if lines:
                    yield lineno + 1, lines
                    lineno += len(lines)
            chunk = fh.read(CHUNK)
        try:
            decoder.finish()
        except ValueError as exc:
            raise TruncatedStream(f"{name}:{lineno + 1}", str(exc)) from None
        if pending:
            yield lineno + 1, [pending]
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of one input; see iter_line_blocks."""
    for first, lines in iter_line_blocks(path):
        yield from enumerate(lines, first)


def parse_line(line: bytes, where_file: str, lineno: int) -> dict:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise StreamError(f"{where_file}:{lineno}", f"invalid JSON: {exc}", raw=line, reason="invalid_json") from None
    if type(record) is not dict:
        raise StreamError(f"{where_file}:{lineno}", f"record is a JSON {type(record).__name__}, not an object",
                          raw=line, reason="not_an_object")
    return record


# --------------------------------------------------------------------------- outputs


def compression_for(path: str | None, plain: bool = False) -> str:
    """Stdout gets zstd unless it is a terminal; a file by its suffix (.jsonl plain, .gz gzip, else zstd)."""
    if plain:
        return "plain"
    if path in (None, STDIO):
        return "plain" if sys.stdout.isatty() else "zstd"
    name = str(path)
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".jsonl") or name.endswith(".json"):
        return "plain"
    return "zstd"


class AtomicFile:
    """A file written under a hidden temporary name and renamed into place by commit()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.rsyn-tmp-{os.getpid()}")
        self.fh = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    out = AtomicFile(path)
    try:
        out.write(data)
        out.commit()
    except BaseException:
        out.discard()
        raise


class _StdoutSink:
    def __init__(self) -> None:
        self.fh = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def commit(self) -> None:
        self.fh.flush()

    def discard(self) -> None:
        pass


class RecordWriter:
    """Writes records as JSONL (zstd by default). Call close() on success, abort() on failure."""

    BATCH = 2048

    def __init__(self, path: str | None, compression: str | None = None, level: int = 3):
        self.path = path
        self.compression = compression or compression_for(path)
        self.sink = _StdoutSink() if path in (None, STDIO) else AtomicFile(path)
        if self.compression == "zstd":
            # single-threaded zstd keeps the output byte-identical run to run
            self._comp = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()
            self._encode = self._comp.compress
        elif self.compression == "gzip":
            self._comp = zlib.compressobj(6, zlib.DEFLATED, 31)
            self._encode = self._comp.compress
        else:
            self._comp = None
            self._encode = None
        self._buf: list[bytes] = []
        self.count = 0
        self.closed = False

    @property
    def n_written(self) -> int:
        return self.count + len(self._buf)

    def write(self, record: dict) -> None:
        self._buf.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))
        if len(self._buf) >= self.BATCH:
            self._flush_buffer()

    def write_many(self, records: Iterable[dict]) -> None:
        # batches of records serialised by map() keep the per-record cost in C
        dumps = functools.partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
        it = iter(records)
        while True:
            chunk = list(itertools.islice(it, self.BATCH))
            if not chunk:
                return
            self._buf.extend(map(dumps, chunk))
            self._flush_buffer()

    def _flush_buffer(self) -> None:
        if not self._buf:
            return
        data = b"".join(self._buf)
        self.count += len(self._buf)
        self._buf.clear()
        self.sink.write(self._encode(data) if self._encode else data)

    def close(self) -> None:
        if self.closed:
            return
        self._flush_buffer()
        if self._comp is not None:
            self.sink.write(self._comp.flush())
        self.sink.commit()
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.sink.discard()


def read_records(paths: Iterable[str]) -> Iterator[dict]:
    """Plain record reader for library use (no sharding, errors raise StreamError)."""
    for path in expand_inputs(paths):
        name = "<stdin>" if path == STDIO else path
        for lineno, line in iter_lines(path):
            if line.strip():
                yield parse_line(line, name, lineno)


def write_records(path: str, records: Iterable[dict]) -> int:
    writer = RecordWriter(path)
    try:
        writer.write_many(records)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.count
