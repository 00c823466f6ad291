"""The record contract (docs/design.md, "Records"): stable content ids and the inline embedding codec."""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np

ID_BYTES = 10  # 80-bit ids: a collision among 1e9 records has probability below 1e-6

_SPACE = re.compile(r"\s+")


def content_id(*parts: str) -> str:
    """Hex id of the content (never of a position), e.g. content_id("image", url)."""
    h = hashlib.blake2b(digest_size=ID_BYTES)
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def normalize_text(text: str) -> str:
    """The form two sentences share when they are 'the same': NFKC, casefolded, single spaces."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def text_id(text: str) -> str:
    return content_id("text", normalize_text(text))


def image_id(url: str) -> str:
    return content_id("image", url.strip())


# --------------------------------------------------------------------------- embeddings
# Inline embeddings: L2-normalised, float16 little-endian, standard base64 with padding.

EMB_DTYPE = np.dtype("<f2")


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError("cannot normalise a zero or non-finite embedding")
    return matrix / norms


def encode_embeddings(matrix: np.ndarray) -> list[str]:
    """Rows of `matrix` -> base64 strings of their unit-norm float16 form."""
    halves = normalize_rows(matrix).astype(EMB_DTYPE)
    b64 = base64.b64encode
    return [b64(row.tobytes()).decode("ascii") for row in halves]


def encode_embedding(vector: np.ndarray) -> str:
    return encode_embeddings(np.asarray(vector)[None, :])[0]


def decode_embeddings(strings: Sequence[str], dim: int | None = None) -> np.ndarray:
    """Base64 strings -> (n, dim) float32 matrix. Raises ValueError on bad or ragged input."""
    if not strings:
        return np.zeros((0, dim or 0), dtype=np.float32)
    b64 = base64.b64decode
    try:
        raw = [b64(s, validate=True) for s in strings]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"embedding is not valid base64: {exc}") from None
    width = len(raw[0])
    if width == 0 or width % 2 or any(len(r) != width for r in raw):
        raise ValueError("embeddings have different or odd byte lengths")
    if dim is not None and width != 2 * dim:
        raise ValueError(f"embedding has {width // 2} dimensions, expected {dim}")
    return np.frombuffer(b"".join(raw), dtype=EMB_DTYPE).reshape(len(raw), width // 2).astype(np.float32)


def decode_embedding(string: str) -> np.ndarray:
    return decode_embeddings([string])[0]


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))
