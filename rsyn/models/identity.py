"""A model's identity as records carry it (`emb_model`, `caption_model`, `llm_model`): stable, wherever it lies.

A Hugging Face id, an open_clip `NAME@TAG` or a served model name is its own
identity. A model on local disk is named by its folder's (or checkpoint
file's) basename and a short hash of its content, `NAME#0123456789abcdef`, so
that a relative and an absolute path, a symlink, a copy on another machine or
another mount point give the same records, and a folder rebuilt with other
weights gives different ones.

The hash covers every regular file under the folder (hidden ones such as
`.cache/` and `.git/` excepted): its relative name, its size and its bytes.
Files up to FULL_HASH_BYTES are hashed whole; a larger file (multi-GB weights)
by its first and last MiB and SAMPLES evenly spaced blocks of SAMPLE_BYTES in
between, about 6 MiB read per file: two big files that differ only between
the sampled blocks, with the same size, would get the same identity.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from pathlib import Path

FULL_HASH_BYTES = 256 << 20
EDGE_BYTES = 1 << 20
SAMPLES = 64
SAMPLE_BYTES = 64 << 10
HASH_CHARS = 16
LOCAL_IDENTITY = re.compile(r"#[0-9a-f]{16}$")

_CACHE: dict[tuple, str] = {}
_LOCK = threading.Lock()


def is_local_identity(identity: str) -> bool:
    """True for `NAME#HASH`, the identity of a model read from local disk (not loadable by itself)."""
    return bool(LOCAL_IDENTITY.search(identity or ""))


def model_identity(name_or_path: str) -> str:
    """`NAME#HASH` for a local folder or file, else the name unchanged (a hub id or a served name)."""
    path = Path(os.path.expanduser(name_or_path))
    if not name_or_path or not path.exists():
        return name_or_path
    return local_identity(path)


def local_identity(path: str | os.PathLike) -> str:
    real = Path(os.path.realpath(path))
    return f"{real.name}#{content_hash(real)}"


def content_hash(path: str | os.PathLike) -> str:
    """HASH_CHARS hex digits of blake2b over the model files' names, sizes and bytes; cached per process."""
    real = Path(os.path.realpath(path))
    files = _files(real)
    key = (str(real), tuple((name, st.st_size, st.st_mtime_ns) for name, _, st in files))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    digest = hashlib.blake2b(digest_size=HASH_CHARS // 2)
    for name, full, st in files:
        digest.update(f"{name}\0{st.st_size}\0".encode())
        with open(full, "rb") as fh:
            for offset, size in _blocks(st.st_size):
                fh.seek(offset)
                digest.update(fh.read(size))
    value = digest.hexdigest()
    with _LOCK:
        _CACHE[key] = value
    return value


def _files(real: Path) -> list[tuple[str, Path, os.stat_result]]:
    """(relative name, path, stat) of the regular files that make the model, in a fixed order."""
    if real.is_file():
        return [(real.name, real, real.stat())]
    found = []
    for directory, subdirs, names in os.walk(real):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = Path(directory) / name
            try:
                st = full.stat()  # follows links: a Hugging Face snapshot links its files to blobs
            except OSError:  # a dangling link is no part of the model
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((full.relative_to(real).as_posix(), full, st))
    return sorted(found, key=lambda item: item[0])


def _blocks(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the bytes hashed in a file of `size` bytes."""
    if size <= FULL_HASH_BYTES:
        return [(0, size)]
    step = (size - 2 * EDGE_BYTES) // (SAMPLES + 1)
    middle = [(EDGE_BYTES + step * (i + 1), SAMPLE_BYTES) for i in range(SAMPLES)]
    return [(0, EDGE_BYTES), *middle, (size - EDGE_BYTES, EDGE_BYTES)]
