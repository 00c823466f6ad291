"""Reading and writing record streams: JSONL, zstd / gzip / plain, stdin / files / globs.

Every command reads and writes through this module. Compression is detected
from the first bytes (stdin has no name). Files are written under a temporary
name and renamed into place when complete, so a killed run never leaves a file
that looks done; a temporary names its owner (host and process), so a later
run removes those of dead runs.

zstd output is a series of independent frames of about FRAME_BYTES of JSONL
each, ending on a record boundary, each with a content checksum: a flipped
bit loses one frame, not the file. After each frame a zstd skippable frame
(which every zstd reader skips) gives its line count, so the reader knows
exactly what a damaged frame held and line numbers stay exact after it. The
reader holds a frame's lines back until its checksum is verified, and after a
corrupt frame resumes at the next one.

`--shard K/N` is decided here, in one place: `plan_shard()`.
"""

from __future__ import annotations

import bisect
import functools
import glob
import itertools
import os
import shutil
import socket
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson
import zstandard

from rsyn.errors import RsynError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# a zstd skippable frame (magic 0x184D2A5E, little endian) of 12 bytes: b"rsyn" and the previous frame's line count
LINES_MAGIC = b"\x5e\x2a\x4d\x18"
LINES_HEADER = struct.Struct("<4sI4sQ")
LINES_TAG = b"rsyn"
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
STDIO = "-"
FRAME_BYTES = 1 << 20  # JSONL bytes per zstd frame written: what one flipped bit can cost
HOLD_BYTES = 16 << 20  # a frame decoding to more (a foreign file) is passed on before its checksum is checked
RESCAN_BYTES = 32 << 20  # compressed bytes of a frame kept to look for the next frame in after damage


class StreamError(Exception):
    """Bad input at a known place: `where` is "FILE:LINE"."""

    def __init__(self, where: str, message: str, raw: bytes | None = None, reason: str = "bad_input"):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.raw = raw
        self.reason = reason  # the counter it goes under with --on-error skip


class TruncatedStream(StreamError):
    """A compressed stream that is corrupt or ends mid-frame (lines were lost there).

    `lost_lines` (a lower bound when the damage was found mid-frame) and
    `lost_bytes` (compressed bytes skipped) say what was lost, when known.
    """

    def __init__(self, where: str, message: str, lost_lines: int | None = None, lost_bytes: int | None = None):
        super().__init__(where, message, reason="corrupt_stream")
        self.lost_lines = lost_lines
        self.lost_bytes = lost_bytes


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
        elif os.path.isdir(item):
            raise StreamError(item, "is a directory (give its files, e.g. a quoted glob 'DIR/*.jsonl.zst')")
        else:
            paths.append(item)
    return paths


@dataclass(frozen=True)
class ShardPlan:
    """What `--shard K/N` reads: `paths` (in input order) and, by the record rule, which positions.

    rule "files": this shard reads `paths`, a contiguous range of whole input
    files, every item of them. rule "records": it reads every input and keeps
    the items (records, documents) whose position in the concatenated input is
    K mod N. rule "all": no --shard.
    """

    rule: str
    paths: list[str]
    k: int = 0
    n: int = 1

    def keeps(self, position: int) -> bool:
        return self.rule != "records" or position % self.n == self.k


def plan_shard(paths: list[str], shard: tuple[int, int] | None) -> ShardPlan:
    """The one place that decides what a shard reads: a pure function of the input list and the files' sizes.

    With at least N input files (stdin not among them), shard K gets a
    contiguous range of whole files, balanced by bytes on disk, so the N shards
    read the data once in total and their outputs, concatenated in K order, are
    in input order. Otherwise (one file, stdin, fewer files than shards) every
    shard reads everything and keeps the items at positions K mod N, so no
    shard is empty for want of files.
    """
    if shard is None or shard[1] == 1:
        return ShardPlan("all", list(paths))
    k, n = shard
    if len(paths) < n or STDIO in paths:
        return ShardPlan("records", list(paths), k, n)
    bounds = split_by_size([max(os.path.getsize(p), 1) for p in paths], n)
    return ShardPlan("files", list(paths[bounds[k] : bounds[k + 1]]), k, n)


def split_by_size(sizes: list[int], n: int) -> list[int]:
    """Boundaries b[0]=0 <= ... <= b[n]=len(sizes) of n contiguous, non-empty ranges of nearly equal total size.

    Each inner boundary is the one whose running total is nearest to its share
    k/n of the whole (ties: the earlier one), kept where every range stays
    non-empty. Needs len(sizes) >= n and positive sizes; integers only, so the
    split is the same on every machine.
    """
    count = len(sizes)
    running = list(itertools.accumulate(sizes, initial=0))
    total = running[-1]
    bounds = [0]
    for k in range(1, n):
        lo, hi = bounds[-1] + 1, count - (n - k)
        j = bisect.bisect_left(running, total * k, lo, hi + 1, key=lambda r: r * n)  # first at or past k/n
        # running[j-1] < target <= running[j]: the nearer of the two, in integers (|running*n - total*k|)
        if j > lo and (j > hi or abs(running[j - 1] * n - total * k) <= abs(running[j] * n - total * k)):
            j -= 1
        bounds.append(min(max(j, lo), hi))
    bounds.append(count)
    return bounds


def _open_binary(path: str) -> BinaryIO:
    if path == STDIO:
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise StreamError(path, f"cannot open: {exc.strerror}") from None


class _Plain:
    def feed(self, data: bytes) -> list:
        return [data]

    def finish(self) -> list:
        return []


@dataclass
class _Loss:
    """Damage in a compressed input: what iter_line_blocks reports (see TruncatedStream)."""

    offset: int  # where the damaged unit starts in the compressed input
    skipped: int | None  # compressed bytes skipped to the next unit (None: to the end)
    lines: int  # lines of the damaged unit (dropped unread): all of them when `complete`, else a lower bound
    complete: bool
    detail: str
    size: int | None = None  # bytes the damaged unit decodes to, when known


class _Concatenated:
    """Compressed units one after another (gzip members, as `cat a.gz b.gz` makes).

    `new_decompressor` makes the decompressor of one unit; it must expose
    decompress(), eof and unused_data. Damage ends the stream: a gzip member
    has no checksum of its own header and no marker to resume at.
    """

    def __init__(self, new_decompressor, kind: str, unit: str):
        self._new = new_decompressor
        self._obj = new_decompressor()
        self._mid_unit = False
        self._offset = 0
        self.kind = kind
        self.unit = unit

    def feed(self, data: bytes) -> list:
        out = []
        offset = self._offset
        self._offset += len(data)
        while data:
            self._mid_unit = True
            try:
                out.append(self._obj.decompress(data))
            except zlib.error as exc:
                raise ValueError(f"corrupt {self.kind} stream near byte {offset}: {exc}") from None
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = self._new()
            self._mid_unit = False
        return out

    def finish(self) -> list:
        if self._mid_unit:
            raise ValueError(f"{self.kind} stream is truncated (ends inside a {self.unit})")
        return []


class _ZstdFrames:
    """zstd frames one after another, each verified before its lines are passed on.

    A frame's output is held until the frame ends and its checksum matched, so
    a damaged frame gives no lines rather than wrong ones (frames decoding to
    more than HOLD_BYTES, as foreign single-frame files do, are passed on as
    they decode). After damage, decoding resumes at the next frame magic found
    after the damaged frame's start (a damaged header can make the decoder run
    past the frame's end, so the search starts from the frame's own bytes).
    The loss is reported once decoding resumed: if the frame found there is
    rsyn's line count of the frame before it, the loss is known exactly.
    """

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()
        self._start_frame(0)
        self._searching: _Loss | None = None  # damage found, next magic not yet
        self._unreported: _Loss | None = None  # resumed after damage, loss not yet reported
        self._tail = b""  # the last bytes searched, in case a magic straddles two reads

    def _start_frame(self, offset: int) -> None:
        self._obj = self._dctx.decompressobj()
        self._offset = offset  # of this frame in the input
        self._raw: bytearray | None = bytearray()  # its compressed bytes so far, while under RESCAN_BYTES
        self._fed = 0
        self._held: list[bytes] = []
        self._held_size = 0
        self._passed = False  # part of it was passed on unverified (too big to hold)

    def feed(self, data: bytes) -> list:
        out: list = []
        while data:
            if self._searching is not None:
                data = self._search(data)
                if not data:
                    break
            if self._raw is not None:
                self._raw += data
                if len(self._raw) > RESCAN_BYTES:
                    self._raw = None
            self._fed += len(data)
            try:
                piece = self._obj.decompress(data)
            except zstandard.ZstdError as exc:
                data = self._damaged(str(exc), out)
                continue
            if piece:
                self._report(out)
                self._held.append(piece)
                self._held_size += len(piece)
                if self._held_size > HOLD_BYTES:
                    out.extend(self._held)
                    self._held, self._held_size, self._passed = [], 0, True
            if not self._obj.eof:
                break
            if self._unreported is not None and not self._held_size:
                counted = _counted_lines(self._raw)  # the frame after a damaged one may say what it held
                if counted is not None and self._unreported.skipped == self._offset - self._unreported.offset:
                    self._unreported.lines, self._unreported.complete = counted, True
            self._report(out)
            out.extend(self._held)
            data = self._obj.unused_data
            self._start_frame(self._offset + self._fed - len(data))
        return out

    def _report(self, out: list) -> None:
        if self._unreported is not None:
            out.append(self._unreported)
            self._unreported = None

    def _damaged(self, detail: str, out: list) -> bytes:
        """Drop the frame being decoded; return the input to go on with (the search for the next magic)."""
        self._report(out)
        lines = sum(piece.count(b"\n") for piece in self._held)
        loss = _Loss(self._offset, None, lines, complete=False, detail=detail)
        if self._raw is not None:
            loss.size = _frame_size(self._raw)
        if self._passed:
            loss.detail += " (part of this frame was already passed on)"
        raw, base = self._raw, self._offset
        self._start_frame(base + self._fed)
        self._searching = loss
        if raw is None:
            return b""  # too big to rescan: search on in what comes next
        self._offset = base + 1
        return bytes(raw[1:])

    def _search(self, data: bytes) -> bytes:
        """Skip to the next frame magic (self._offset is where `data` starts)."""
        data = self._tail + data
        at = min((i for i in (data.find(ZSTD_MAGIC), data.find(LINES_MAGIC)) if i >= 0), default=-1)
        if at < 0:
            keep = min(len(data), len(ZSTD_MAGIC) - 1)  # a magic may straddle two reads
            self._offset += len(data) - keep
            self._tail = data[len(data) - keep :]
            return b""
        self._tail = b""
        loss, self._searching = self._searching, None
        loss.skipped = self._offset + at - loss.offset
        self._unreported = loss
        self._start_frame(self._offset + at)
        return data[at:]

    def finish(self) -> list:
        out: list = []
        if self._searching is not None:
            loss, self._searching = self._searching, None
            return [loss]
        self._report(out)
        if self._fed:
            # a cut, not damage: what decoded before it is what was written (as `zstd -d` would give it)
            out += [*self._held, _Loss(self._offset, None, 0, False, "the stream is truncated: it ends inside a frame")]
        return out


def _frame_size(raw: bytearray) -> int | None:
    """The decoded size a frame's header declares (None: not declared, or the header is damaged)."""
    try:
        size = zstandard.frame_content_size(bytes(raw[:18]))
    except zstandard.ZstdError:
        return None
    return size if size >= 0 else None


def _counted_lines(raw: bytearray | None) -> int | None:
    """The line count an rsyn skippable frame gives of the frame before it (None: not such a frame)."""
    if raw is None or len(raw) < LINES_HEADER.size or not raw.startswith(LINES_MAGIC):
        return None
    _, size, tag, lines = LINES_HEADER.unpack_from(raw)
    return lines if size == LINES_HEADER.size - 8 and tag == LINES_TAG else None


def _decoder_for(head: bytes):
    if head.startswith(ZSTD_MAGIC):
        return _ZstdFrames(), "zstd"
    if head.startswith(GZIP_MAGIC):
        return _Concatenated(lambda: zlib.decompressobj(wbits=31), "gzip", "member"), "gzip"
    return _Plain(), "plain"


def _loss_error(where: str, kind: str, loss: _Loss) -> TruncatedStream:
    """The one-line report of a loss (no input bytes quoted)."""
    plural = "s" if loss.lines != 1 else ""
    if loss.complete:
        lines = f"{loss.lines} line{plural} lost"
    else:
        lines = f"at least {loss.lines} line{plural} lost" if loss.lines else "its lines are lost"
    if loss.size is not None:
        lines += f" ({loss.size} bytes of JSONL)"
    if loss.skipped is None:
        rest = "no later frame found: the rest of the file is lost"
    else:
        rest = f"skipped {loss.skipped} bytes to the next frame"
        if not loss.complete:
            rest += "; line numbers after this point may be off"
    return TruncatedStream(
        where,
        f"corrupt {kind} frame at byte {loss.offset} ({loss.detail}): {lines}, {rest}",
        lost_lines=loss.lines,
        lost_bytes=loss.skipped,
    )


def iter_line_blocks(
    path: str, on_corrupt: Callable[[TruncatedStream], None] | None = None, on_read: Callable[[int], None] | None = None
) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (number of the block's first line, lines) of one input, decompressing as the first bytes say.

    Lines come in blocks (one per zstd frame or ~1 MiB read) because a
    generator step per line costs as much as parsing it. A corrupt or truncated
    compressed stream raises TruncatedStream after every complete line before
    the damage; given `on_corrupt`, that is called instead and, for zstd,
    reading goes on at the next frame (a damaged gzip stream ends there).
    `on_read(n)` is told the bytes of each chunk once its lines are out (progress: bytes read of the input's size).
    """
    fh = _open_binary(path)
    name = "<stdin>" if path == STDIO else path
    lineno = 0  # lines yielded (or counted as lost) so far
    pending = b""

    def damaged(exc: TruncatedStream) -> None:
        if on_corrupt is None:
            raise exc
        on_corrupt(exc)

    try:
        first = fh.read(CHUNK)
        decoder, kind = _decoder_for(first)
        chunk = first
        while True:
            try:
                pieces = decoder.feed(chunk) if chunk else decoder.finish()
            except ValueError as exc:  # gzip damage: nothing after it can be read
                damaged(TruncatedStream(f"{name}:{lineno + 1}", str(exc)))
                return
            for piece in pieces:
                if type(piece) is _Loss:
                    if pending:  # the start of a line whose end was lost
                        pending = b""
                        piece.lines += 1
                    damaged(_loss_error(f"{name}:{lineno + 1}", kind, piece))
                    lineno += piece.lines
                    continue
                lines = (pending + piece).split(b"\n") if pending else piece.split(b"\n")
                pending = lines.pop()
                if lines:
                    yield lineno + 1, lines
                    lineno += len(lines)
            if on_read is not None:  # told once the chunk's lines are all out: bytes consumed, not read ahead
                on_read(len(chunk))
            if not chunk:
                break
            chunk = fh.read(CHUNK)
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
        raise StreamError(
            f"{where_file}:{lineno}",
            f"record is a JSON {type(record).__name__}, not an object",
            raw=line,
            reason="not_an_object",
        )
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


TEMPORARY_MARK = ".rsyn-tmp-"


def _this_host() -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in socket.gethostname()) or "localhost"


def temporary_name(target: str | os.PathLike) -> Path:
    """Where to build `target` (a file or a directory): a hidden sibling naming its owner, host and pid.

    The owner in the name lets remove_stale_temporaries() tell a dead run's
    leftovers from a live run's work, even on a file system shared by hosts.
    """
    target = Path(target)
    return target.with_name(f".{target.name}{TEMPORARY_MARK}{_this_host()}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `target` left by dead runs of this host (files or directories).

    A temporary of another host is left alone: whether its owner lives cannot
    be known from here. Returns what was removed.
    """
    target = Path(target)
    prefix = f".{target.name}{TEMPORARY_MARK}"
    host = _this_host()
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        owner_host, _, pid = entry.name[len(prefix) :].rpartition("-")
        # "" is the older form without a host name (written on this host by an earlier rsyn)
        if owner_host not in ("", host) or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:  # another run cleaned it first
            continue
        removed.append(Path(entry.path))
    return removed


class OutputExists(RsynError):
    """An output directory is in the way and may not be replaced (the message says why)."""


def _fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory by name (a directory's entries: a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for root, _dirs, files in os.walk(directory):
        for name in files:
            _fsync_path(os.path.join(root, name))
        _fsync_path(root)


class _Atomic:
    """Commit on a clean exit of the `with` body, discard on an exception (KeyboardInterrupt included)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def commit(self) -> None:
        try:
            self._commit()
        except BaseException:
            self.discard()
            raise

    def _commit(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError


class AtomicDirectory(_Atomic):
    """A directory built under temporary_name(path) (`.tmp`) and renamed into place by commit().

    `with AtomicDirectory(path, marker=...) as out:` builds in `out.tmp`; a clean exit commits, an
    exception removes the temporary. commit() fsyncs every file and directory of the tree, renames,
    then fsyncs the parent, so what appears has its content on disk, also after a crash.
    An existing directory is replaced (with `overwrite`) only when it is empty or
    holds `marker`, the done marker its writer puts there last: never a directory
    rsyn did not write. Opening one removes the temporaries of the same target
    left by dead runs.
    """

    def __init__(self, path: str | os.PathLike, *, marker: str | Iterable[str], overwrite: bool = False):
        self.path = Path(path)
        markers = (marker,) if isinstance(marker, str) else tuple(marker)
        if self.path.exists() or self.path.is_symlink():
            if self.path.is_symlink() or not self.path.is_dir():
                raise OutputExists(f"-o {path}: exists and is not a directory")
            if any(self.path.iterdir()):
                if not any((self.path / name).is_file() for name in markers):
                    raise OutputExists(
                        f"-o {path}: directory exists and is not an rsyn output (no {' or '.join(markers)}); "
                        "refusing to replace it"
                    )
                if not overwrite:
                    raise OutputExists(f"-o {path}: directory exists and is not empty (use --overwrite to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._replaced = self.path.with_name(self.path.name + ".replaced")  # the old one, while swapping
        remove_stale_temporaries(self.path)
        remove_stale_temporaries(self._replaced)
        self.tmp = temporary_name(self.path)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

    def _commit(self) -> None:
        _fsync_tree(self.tmp)
        old = None
        if self.path.exists():
            old = temporary_name(self._replaced)
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        _fsync_path(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class AtomicFile(_Atomic):
    """A file written under temporary_name(path) (`.fh`, `write()`) and renamed into place by commit().

    `with AtomicFile(path) as out:` commits on a clean exit and removes the temporary on an exception.
    commit() fsyncs the data, renames, then fsyncs the parent directory; `durable=False` skips both
    fsyncs, for a private work directory that dies with the run (the rename stays atomic).
    Opening one removes the temporaries of the same target left by dead runs.
    """

    def __init__(self, path: str | os.PathLike, durable: bool = True):
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        self.tmp = temporary_name(self.path)
        self.fh = open(self.tmp, "wb")

    def write(self, data: bytes) -> None:
        self.fh.write(data)

    def _commit(self) -> None:
        self.fh.flush()
        if self.durable:
            os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        if self.durable:
            _fsync_path(self.path.parent)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with AtomicFile(path) as out:
        out.write(data)


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
    """Writes records as JSONL (zstd by default). Call close() on success, abort() on failure.

    zstd output is independent frames of at least FRAME_BYTES of JSONL (the last
    one less), each ending on a record boundary and carrying its checksum, so
    damage loses one frame; an empty output is one empty frame, a valid file.
    """

    BATCH = 2048

    def __init__(self, path: str | None, compression: str | None = None, level: int = 3):
        self.path = path
        self.compression = compression or compression_for(path)
        self.sink = _StdoutSink() if path in (None, STDIO) else AtomicFile(path)
        self._frame: zstandard.ZstdCompressor | None = None
        self._gzip = None
        if self.compression == "zstd":
            # single-threaded one-shot frames: the output is byte-identical run to run
            self._frame = zstandard.ZstdCompressor(level=level, write_checksum=True)
        elif self.compression == "gzip":
            self._gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
        self._buf: list[bytes] = []
        self._unframed: list[bytes] = []  # serialised records of the next frame
        self._unframed_size = 0
        self._frames = 0
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
        buf = self._buf
        self.count += len(buf)
        self._buf = []
        if self._frame is None:
            data = b"".join(buf)
            self.sink.write(self._gzip.compress(data) if self._gzip is not None else data)
            return
        # cut frames where the running size first reaches FRAME_BYTES (bisect over the sizes: no Python loop)
        ends = list(itertools.accumulate(map(len, buf), initial=self._unframed_size))
        start, base = 0, 0  # the next frame holds buf[start:] and its size is ends[i] - base
        while True:
            cut = bisect.bisect_left(ends, base + FRAME_BYTES, lo=start + 1)
            if cut >= len(ends):
                break
            self._unframed.extend(buf[start:cut])
            self._write_frame()
            start, base = cut, ends[cut]
        self._unframed.extend(buf[start:])
        self._unframed_size = ends[-1] - base

    def _write_frame(self) -> None:
        count = LINES_HEADER.pack(LINES_MAGIC, LINES_HEADER.size - 8, LINES_TAG, len(self._unframed))
        self.sink.write(self._frame.compress(b"".join(self._unframed)) + count)
        self._frames += 1
        self._unframed, self._unframed_size = [], 0

    def close(self) -> None:
        if self.closed:
            return
        self._flush_buffer()
        if self._frame is not None and (self._unframed or not self._frames):
            self._write_frame()
        elif self._gzip is not None:
            self.sink.write(self._gzip.flush())
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
