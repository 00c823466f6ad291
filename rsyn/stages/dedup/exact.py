"""Exact duplicates: a 128-bit key per record, records sharing a key (directly or through another key) are one group.

Sentences get one key, the hash of their normalised form (see `match_form`).
Images get the hash of their URL and, when the content is known, the hash of
their bytes; two images are the same when either key matches, so groups are
the connected components of the record-key graph (scipy's union-find).
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np



class _Punctuation(dict):
    """str.translate table: punctuation and symbols -> space, everything else kept.

    Filled lazily, one entry per distinct character seen, so the lookup runs
    in C after the first sight of a character. Letters, digits, combining
    marks (Thai, Devanagari vowel signs) and white space are kept.
    """

    def __missing__(self, code: int) -> int:
        ch = chr(code)
        word = ch != "_" and (ch.isalnum() or ch.isspace() or unicodedata.category(ch)[0] == "M")
        self[code] = value = code if word else 0x20
        return value


_PUNCTUATION = _Punctuation()

KEY_DTYPE = np.dtype("V16")


def match_form(text: str) -> str:
    """The form two sentences share when they only differ in case, spacing, punctuation or unicode encoding.

    NFKC folds compatibility characters (full-width letters, ligatures), casefold
    folds case (ß = ss), punctuation and symbols become spaces (so "well-known"
    matches "well known"), runs of white space become one space.
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION).split())


def key_of(namespace: bytes, value: str) -> bytes:
    """16-byte key; the namespace keeps a URL from ever matching a content hash."""
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16, person=namespace).digest()


def keys_array(buffer: bytearray) -> np.ndarray:
    return np.frombuffer(bytes(buffer), dtype=KEY_DTYPE)


def first_of_groups(n: int, key_families: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """For each of `n` records, the index of the first record (in input order) of its group.

    `key_families` holds (record indices, keys) pairs; records sharing any key
    are in one group, transitively. A record with no key is its own group.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    rows = [r for r, _ in key_families]
    keys = [k for _, k in key_families]
    if not rows or sum(len(r) for r in rows) == 0:
        return np.arange(n, dtype=np.int64)
    all_rows = np.concatenate(rows).astype(np.int64)
    _, key_node = np.unique(np.concatenate(keys), return_inverse=True)
    n_keys = int(key_node.max()) + 1
    graph = sp.coo_matrix((np.ones(len(all_rows), dtype=np.int8), (all_rows, n + key_node.astype(np.int64))),
                          shape=(n + n_keys, n + n_keys))
    _, component = connected_components(graph, directed=False)
    first = np.full(int(component.max()) + 1, n, dtype=np.int64)
    np.minimum.at(first, component[:n], np.arange(n, dtype=np.int64))
    return first[component[:n]]
