"""Exact duplicates: a 128-bit key per record, records sharing a key (directly or through another key) are one group.

Sentences get one key, the hash of their normalised form (see `match_form`).
Images get the hash of their URL and, when the content is known, the hash of
their bytes; two images are the same when either key matches, so groups are
the connected components of the record-key graph (scipy's union-find).

As passes: `exact_part` routes keys by hash to P partitions and links each
record to the first holder of its key; `exact_settle` joins those edges into
groups (transitively across keys). Its memory grows with the duplicates only.
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


def exact_part(shards, part, m: int, n_parts: int) -> dict:
    """Pass `exact` (per key partition m of n_parts): an edge from every record to the first record (in input
    order) holding the same key, for the keys whose hash falls in this partition."""
    from rsyn.stages.dedup.work import gid_of

    keys, orders, gids = [], [], []
    for s in range(len(shards)):
        kind, order = shards.array(s, "kind"), shards.array(s, "order")
        families = (
            ("text_keys", np.flatnonzero(kind == 0)),
            ("url_keys", np.flatnonzero(kind == 1)),
            ("content_keys", np.asarray(shards.array(s, "content_rows"))),
        )
        for name, rows in families:
            k = np.asarray(shards.array(s, name)).view(np.uint64).reshape(-1, 2)
            take = np.flatnonzero(k[:, 0] % np.uint64(n_parts) == np.uint64(m))
            keys.append(k[take])
            orders.append(np.asarray(order[rows[take]]))
            gids.append(gid_of(s, rows[take]))
    key = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
    order = np.concatenate(orders) if orders else np.zeros(0, np.int64)
    gid = np.concatenate(gids) if gids else np.zeros(0, np.int64)
    by_key = np.lexsort((order, key[:, 1], key[:, 0]))
    key, order, gid = key[by_key], order[by_key], gid[by_key]
    new = np.ones(len(key), dtype=bool)
    new[1:] = (key[1:] != key[:-1]).any(axis=1)
    first = np.maximum.accumulate(np.where(new, np.arange(len(key)), 0))  # index of the first row of each key
    dup = np.flatnonzero(~new)
    part.save("a", gid[dup])
    part.save("b", gid[first[dup]])
    part.save("a_order", order[dup])
    part.save("b_order", order[first[dup]])
    return {"part": [m, n_parts], "keys": int(new.sum()), "edges": len(dup)}


def exact_settle(shards, work, part) -> dict:
    """Pass `exact` settle (once): records sharing a key, directly or through another key (URL A = bytes X
    = URL B), are one group; every record but the first of its group is dropped."""
    from rsyn.stages.dedup.work import first_of_components, save_per_shard

    parts = work.parts("exact", "dedup-exact --part M/P")
    a, b, a_order, b_order = (
        np.concatenate([np.asarray(p.load(name)) for p in parts]) for name in ("a", "b", "a_order", "b_order")
    )
    nodes, first, _ = first_of_components(a, b, a_order, b_order)
    dropped = nodes != first
    save_per_shard(
        part, "drop", len(shards), nodes[dropped], {"dup": first[dropped], "sim": np.ones(int(dropped.sum()))}
    )
    return {
        "dropped": int(dropped.sum()),
        "images_with_content_hash": sum(info["images_with_content_hash"] for info in shards.infos),
    }
