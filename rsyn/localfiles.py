"""Reading a file that a record names: only inside the allowed root, only regular files, never unbounded.

A record's `path` comes from a crawled page or a user's manifest, so it is
hostile: `../../etc/passwd`, a symlink out of the tree, /dev/zero or a FIFO
that never ends. Every stage that opens a record's file goes through
`read_local_file`, which

- resolves the path (symlinks included) and refuses one outside `root`;
- opens it without blocking and refuses anything but a regular file
  (st_size of a device or a pipe is 0 and says nothing);
- reads at most `max_bytes` (one byte more to tell "too large").

Errors carry a reason for --on-error skip counters and a message that names
the path, never the file's contents.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PATH_SHOWN = 200  # characters of a hostile path quoted in a message


class LocalFileError(Exception):
    """A record's file could not be read safely; `reason` is the counter name."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def shown(path: str) -> str:
    """The path as it may appear in a message: repr'd (no control characters) and cut short."""
    text = repr(path)
    return text if len(text) <= PATH_SHOWN else text[:PATH_SHOWN] + "...'"


def allowed_root(root: str | os.PathLike | None) -> Path:
    """The real directory a record's path must lie under (default: the current directory)."""
    return Path(os.path.realpath(root if root is not None else os.getcwd()))


def resolve_under(path: str, root: Path) -> Path:
    """`path` (relative to the current directory) with symlinks resolved, or LocalFileError if outside `root`."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise LocalFileError("bad_path", f"path {shown(str(path))} is not a usable file name")
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise LocalFileError(
            "outside_root", f"path {shown(path)} is outside the allowed root {str(root)!r} (see --path-root)"
        )
    return real


def read_local_file(path: str, *, root: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file at `path` under `root`, at most `max_bytes` of them."""
    real = resolve_under(path, root)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LocalFileError("file_not_found", f"no file at {shown(path)}") from None
    except OSError as exc:
        raise LocalFileError(
            "read_failed", f"cannot open {shown(path)}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LocalFileError("not_a_regular_file", f"{shown(path)} is not a regular file")
        if info.st_size > max_bytes:
            raise LocalFileError("too_large", f"{shown(path)}: {info.st_size:,} bytes > {max_bytes:,}")
        chunks, total = [], 0
        while total <= max_bytes:  # the file may grow after fstat: the cap holds on what is read
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise LocalFileError("too_large", f"{shown(path)}: more than {max_bytes:,} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise LocalFileError(
            "read_failed", f"cannot read {shown(path)}: {exc.strerror or type(exc).__name__}"
        ) from None
    finally:
        os.close(fd)
