"""Near-duplicate sentences: word n-gram shingles, MinHash LSH candidates, exact Jaccard check, union-find.

Everything runs on whole batches with numpy; there is no per-sentence Python
in the hashing, banding or verification.

- Shingles: the word n-grams of the sentence's match form (exact.match_form);
  a sentence shorter than n words is one shingle (all its words), so 1- to
  3-word sentences still have a set to compare. Each shingle is a 64-bit hash;
  the set per sentence is kept (sorted, unique) for the exact Jaccard check.
- MinHash: datasketch's "affine32" scheme (its default since 2.0) with the
  permutations of `datasketch.MinHash(num_perm, seed)`, applied to the low
  32 bits of the shingle hashes: the signatures are the ones
  `datasketch.MinHash.bulk` computes for those hashes (tested), only vectorised
  over a batch of sentences.
- LSH: `b` bands of `r` rows, chosen so that a pair at the threshold is a
  candidate with probability >= 0.995 (false candidates cost one exact
  Jaccard each; missed pairs are duplicates left in). Candidates are the
  pairs that share a band bucket.
- Verify: every candidate pair gets its exact Jaccard; only pairs at or above
  the threshold become edges, so a stray bucket collision never links two
  groups. Groups are the connected components of the edges; the first record
  of a group in input order is kept.

As passes: `scan` keeps each sentence's shingle set and band hashes;
`near_part` takes the (band, bucket)s whose hash falls in its partition,
among the sentences exact dedup kept, and verifies their candidates (reading
the shingle sets of any shard); `near_settle` joins the verified edges of
all partitions into groups.
"""

from __future__ import annotations

import numpy as np

# Pairs within a band bucket of at most this many records are all checked; a
# larger bucket (thousands of copies of a boilerplate line) is checked as a
# star from its first member plus a chain of neighbours, which is linear and
# still connects a bucket of true duplicates.
ALL_PAIRS_BUCKET = 32
# A pair exactly at the threshold must become a candidate at least this often.
RECALL_AT_THRESHOLD = 0.995
VERIFY_CHUNK = 1 << 20  # shingles compared at once in the exact Jaccard check
_PAIR_MASK = (1 << 22) - 1

_U64 = np.uint64
_FMIX64 = (_U64(33), _U64(0xFF51AFD7ED558CCD), _U64(0xC4CEB9FE1A85EC53))
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35))
_POLY = _U64(0x100000001B3)  # odd: invertible mod 2^64
_POLY_INV = _U64(pow(0x100000001B3, -1, 1 << 64))
_POSITION = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x27D4EB2F165667C5,
        0x94D049BB133111EB,
    ],
    dtype=np.uint64,
)
_PAD = _U64(0x5BD1E9955BD1E995)  # the missing words of a sentence shorter than n


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: spreads every input bit over the output (wrapping uint64)."""
    s, m1, m2 = _FMIX64
    x = x ^ (x >> s)
    x = x * m1
    x = x ^ (x >> s)
    x = x * m2
    return x ^ (x >> s)


def fmix32(x: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2 = _FMIX32
    x = x ^ (x >> s1)
    x = x * m1
    x = x ^ (x >> s2)
    x = x * m2
    return x ^ (x >> s1)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.multiply.accumulate(out)


def shingle_sets(texts: list[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(values uint64, offsets int64): the sorted unique shingle hashes of each text.

    `texts` are match forms (words separated by single spaces). Word hashes come
    from a polynomial hash over the utf-8 bytes of the whole batch at once
    (prefix sums, made position-free with the inverse power), then mixed.
    """
    n = len(texts)
    if n == 0:
        return np.zeros(0, np.uint64), np.zeros(1, np.int64)
    buf = np.frombuffer(("\n".join(texts) + "\n").encode("utf-8"), dtype=np.uint8)
    size = len(buf)
    with np.errstate(over="ignore"):
        powers = _powers(_POLY, size)
        prefix = np.zeros(size + 1, dtype=np.uint64)
        np.cumsum((buf.astype(np.uint64) + _U64(1)) * powers, out=prefix[1:])
        separator = (buf == 0x20) | (buf == 0x0A)
        ends = np.flatnonzero(separator)
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        # sentence of each token: newlines before it
        newline_before = np.zeros(len(ends), dtype=np.int64)
        np.cumsum(buf[ends[:-1]] == 0x0A, out=newline_before[1:])
        nonempty = ends > starts
        starts, ends, sentence = starts[nonempty], ends[nonempty], newline_before[nonempty]
        words = fmix64(
            (prefix[ends] - prefix[starts]) * _powers(_POLY_INV, size)[starts] + (ends - starts).astype(np.uint64)
        )
    counts = np.bincount(sentence, minlength=n)
    first_word = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=first_word[1:])
    n_shingles = np.where(counts > 0, np.maximum(counts - ngram + 1, 1), 0)
    owner = np.repeat(np.arange(n), n_shingles)
    start_of_owner = np.zeros(n, dtype=np.int64)
    np.cumsum(n_shingles[:-1], out=start_of_owner[1:])
    start = first_word[owner] + np.arange(len(owner)) - start_of_owner[owner]
    length = np.minimum(counts[owner], ngram)
    with np.errstate(over="ignore"):
        acc = np.zeros(len(owner), dtype=np.uint64)
        last = max(len(words) - 1, 0)
        for k in range(ngram):
            word = np.where(k < length, words[np.minimum(start + k, last)] if len(words) else _PAD, _PAD)
            acc += fmix64(word ^ _POSITION[k % len(_POSITION)]) * _POSITION[(k + 3) % len(_POSITION)]
        shingles = fmix64(acc)
    order = np.lexsort((shingles, owner))
    owner, shingles = owner[order], shingles[order]
    fresh = np.ones(len(owner), dtype=bool)
    fresh[1:] = (owner[1:] != owner[:-1]) | (shingles[1:] != shingles[:-1])
    owner, shingles = owner[fresh], shingles[fresh]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=offsets[1:])
    return shingles, offsets


class MinHasher:
    """Vectorised datasketch MinHash ("affine32" scheme) over 32-bit shingle hashes."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        from rsyn.models.imports import import_datasketch

        template = import_datasketch().MinHash(num_perm=num_perm, seed=seed, scheme="affine32")
        a, b = template.permutations
        self.a = np.asarray(a, dtype=np.uint32)
        self.b = np.asarray(b, dtype=np.uint32)
        self.num_perm = num_perm
        self.seed = seed

    def signatures(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(n, num_perm) uint32 signatures; rows of empty sets are all 0xFFFFFFFF (datasketch's empty value)."""
        n = len(offsets) - 1
        out = np.full((n, self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        sizes = np.diff(offsets)
        nonempty = np.flatnonzero(sizes > 0)
        if len(nonempty) == 0:
            return out
        hashed = fmix32((values & _U64(0xFFFFFFFF)).astype(np.uint32))
        # (num_perm, shingles) layout: the segment minimum along the last axis is
        # several times faster than along the first
        step = max(1, (1 << 22) // self.num_perm)
        i = 0
        while i < len(nonempty):
            j = int(np.searchsorted(offsets[nonempty + 1], offsets[nonempty[i]] + step, side="right"))
            j = max(j, i + 1)
            rows = nonempty[i:j]
            lo, hi = offsets[rows[0]], offsets[rows[-1] + 1]
            permuted = np.empty((self.num_perm, hi - lo), dtype=np.uint32)
            np.multiply(self.a[:, None], hashed[None, lo:hi], out=permuted)
            permuted += self.b[:, None]
            out[rows] = np.minimum.reduceat(permuted, offsets[rows] - lo, axis=1).T
            i = j
        return out


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the banding that finds a pair at exactly the threshold with probability >= 0.995
    and, among those, makes the fewest candidates below the threshold.

    A pair of Jaccard s shares a bucket with probability 1 - (1 - s^rows)^bands.
    datasketch's MinHashLSH balances false positives and false negatives
    instead; with an exact check after it, a false positive costs one
    comparison while a false negative is a duplicate left in, so we favour
    recall (measured in benchmarks/dedup_quality.py).
    """
    s = np.linspace(0.0, threshold, 401)
    best = None
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            if 1 - (1 - threshold**rows) ** bands < RECALL_AT_THRESHOLD:
                continue
            false_area = float(np.mean(1 - (1 - s**rows) ** bands)) * threshold
            if best is None or false_area < best[0]:
                best = (false_area, bands, rows)
            break  # more bands with the same rows only add false candidates
    if best is None:  # too few permutations for that recall: use them all in one-row bands
        return num_perm, 1
    return best[1], best[2]


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one hash of each band's `rows` signature values."""
    n = len(signatures)
    out = np.empty((n, bands), dtype=np.uint64)
    multipliers = fmix64(np.arange(1, rows + 1, dtype=np.uint64) * _POSITION[0]) | _U64(1)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
            out[:, band] = fmix64((block * multipliers[None, :]).sum(axis=1, dtype=np.uint64) + _U64(band))
    return out


def _gather(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element indices of the sets of `rows` (CSR) and the set sizes."""
    sizes = offsets[rows + 1] - offsets[rows]
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(offsets[rows], sizes) + within, sizes


def jaccard(values: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Jaccard of the shingle sets of records a[k] and b[k] (sorted unique CSR sets), float64.

    Exact over the 64-bit shingle hashes. Each element becomes one uint64 key:
    42 bits of a hash of (shingle, pair) above the pair's number in the chunk,
    so a single (SIMD) sort brings the shared shingles of each pair side by
    side; a false match is a 2^-42 event per comparison.
    """
    out = np.empty(len(a), dtype=np.float64)
    ends = np.cumsum((offsets[a + 1] - offsets[a]) + (offsets[b + 1] - offsets[b]))
    start = 0
    while start < len(a):
        done = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, done + VERIFY_CHUNK, side="right")), start + 1)
        k = stop - start  # < 2^22: every pair has at least one element
        ia, na = _gather(offsets, a[start:stop])
        ib, nb = _gather(offsets, b[start:stop])
        pair = np.arange(k, dtype=np.uint64)
        salt = fmix64(pair + _U64(0x632BE59BD9B4E019))
        with np.errstate(over="ignore"):
            keys = np.concatenate([fmix64(values[ia] ^ np.repeat(salt, na)), fmix64(values[ib] ^ np.repeat(salt, nb))])
        keys = (keys & ~_U64(_PAIR_MASK)) | np.concatenate([np.repeat(pair, na), np.repeat(pair, nb)])
        keys.sort()
        shared = keys[1:][keys[1:] == keys[:-1]] & _U64(_PAIR_MASK)
        inter = np.bincount(shared.astype(np.int64), minlength=k)
        union = na + nb - inter
        out[start:stop] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        start = stop
    return out


class NearIndex:
    """Shingle sets and LSH band hashes of a stream's sentences, filled batch by batch."""

    def __init__(self, threshold: float = 0.8, ngram: int = 2, num_perm: int = 128, seed: int = 1):
        self.threshold = threshold
        self.ngram = ngram
        self.hasher = MinHasher(num_perm, seed)
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._values: list[np.ndarray] = []
        self._sizes: list[np.ndarray] = []
        self._bands: list[np.ndarray] = []

    def add(self, texts: list[str]) -> None:
        values, offsets = shingle_sets(texts, self.ngram)
        signatures = self.hasher.signatures(values, offsets)
        self._values.append(values)
        self._sizes.append(np.diff(offsets))
        self._bands.append(band_hashes(signatures, self.bands, self.rows))

    def finish(self) -> None:
        """Join the batches; each is freed as it is copied, so the peak is one copy plus one batch."""
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int64)
        self.offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.offsets[1:])
        self.values = _drain(self._values, np.empty(int(self.offsets[-1]), dtype=np.uint64))
        # band-major (bands, sentences): dedup-near reads one band at a time
        bands, self._bands = [b.T for b in self._bands], []
        self.band_table = _drain(bands, np.empty((self.bands, len(sizes)), dtype=np.uint64))
        self._sizes = []


def _drain(batches: list, out: np.ndarray) -> np.ndarray:
    """Copy `batches` one after the other along out's last axis, emptying the list as it goes."""
    at = 0
    batches.reverse()
    while batches:
        block = batches.pop()
        out[..., at : at + block.shape[-1]] = block
        at += block.shape[-1]
    return out


# --------------------------------------------------------------------------- passes


def _alive_texts(shards, s: int, exact_settled) -> tuple[np.ndarray, np.ndarray]:
    """(text ranks, rows) of shard s's sentences that survived exact dedup and have a shingle set."""
    text_rows = np.flatnonzero(np.asarray(shards.array(s, "kind")) == 0)
    has_set = np.diff(np.asarray(shards.array(s, "near_offsets", keep=False)))[text_rows] > 0
    alive = has_set
    if exact_settled is not None:
        from rsyn.stages.dedup.work import dropped_rows

        alive = has_set & ~np.isin(text_rows, dropped_rows(exact_settled, s))
    ranks = np.flatnonzero(alive)
    return ranks, text_rows[ranks]


def gather_sets(shards, gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shingle sets (CSR values, offsets) of the records `gids` (sorted unique), read from their scan parts."""
    from rsyn.stages.dedup.work import split_gid

    shard, rows = split_gid(gids)
    sizes = np.zeros(len(gids), dtype=np.int64)
    starts = np.zeros(len(gids), dtype=np.int64)
    for s in np.unique(shard).tolist():
        where = np.flatnonzero(shard == s)
        offsets = shards.array(s, "near_offsets", keep=False)  # by record row
        starts[where] = offsets[rows[where]]
        sizes[where] = np.asarray(offsets[rows[where] + 1]) - starts[where]
    out_offsets = np.zeros(len(gids) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), dtype=np.uint64)
    element_shard = np.repeat(shard, sizes)
    source = np.repeat(starts, sizes) + np.arange(len(out)) - np.repeat(out_offsets[:-1], sizes)
    for s in np.unique(shard).tolist():
        at = np.flatnonzero(element_shard == s)
        out[at] = shards.array(s, "near_values", keep=False)[source[at]]
    return out, out_offsets


def pair_jaccard(shards, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle sets of records a[k] and b[k] (gids), wherever they were scanned."""
    if len(a) == 0:
        return np.zeros(0, dtype=np.float64)
    nodes = np.unique(np.concatenate([a, b]))
    values, offsets = gather_sets(shards, nodes)
    return jaccard(values, offsets, np.searchsorted(nodes, a), np.searchsorted(nodes, b))


def bucket_pairs(bucket_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i < j) of positions in an array sorted by (bucket, input order), `bucket_new` marking
    each bucket's first row: every pair in buckets of at most ALL_PAIRS_BUCKET rows, otherwise a star from
    the first row plus the chain of neighbours (linear in the bucket size)."""
    n = len(bucket_new)
    run_start = np.flatnonzero(bucket_new)
    run_size = np.diff(np.append(run_start, n))
    found_i, found_j = [], []
    for size in np.unique(run_size[(run_size >= 2) & (run_size <= ALL_PAIRS_BUCKET)]):
        base = run_start[run_size == size]
        ti, tj = np.triu_indices(int(size), 1)
        found_i.append((base[:, None] + ti[None, :]).ravel())
        found_j.append((base[:, None] + tj[None, :]).ravel())
    big = run_size > ALL_PAIRS_BUCKET
    if big.any():
        run_id = np.cumsum(bucket_new) - 1
        pos = np.flatnonzero(big[run_id] & ~bucket_new)
        found_i += [run_start[run_id[pos]], pos - 1]
        found_j += [pos, pos]
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(found_i).astype(np.int64), np.concatenate(found_j).astype(np.int64)


def unique_pairs(*columns: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct (columns[0], columns[1]) pair, sorted by that pair."""
    order = np.lexsort((columns[1], columns[0]))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (columns[0][order][1:] != columns[0][order][:-1]) | (columns[1][order][1:] != columns[1][order][:-1])
    return order[first]


def near_part(shards, work, part, m: int, n_parts: int) -> dict:
    """Pass `near` (per bucket partition m of n_parts): LSH candidates of the (band, bucket)s whose hash falls
    in this partition, among the sentences exact dedup kept; each candidate verified by its exact Jaccard.

    Band by band, so memory holds one band's entries of this partition and the candidate pairs."""
    from rsyn.stages.dedup.work import gid_of, save_per_shard

    exact_settled = (
        work.require("exact/settled", "dedup-settle --mode exact") if "exact" in shards.options["modes"] else None
    )
    alive = []  # per shard: text ranks, order keys and gids of the sentences to bucket
    for s in range(len(shards)):
        ranks, rows = _alive_texts(shards, s, exact_settled)
        alive.append((ranks, np.asarray(shards.array(s, "order"))[rows], gid_of(s, rows)))
    n_bands = shards.array(0, "near_bands", keep=False).shape[0]
    a, b = np.zeros(0, np.int64), np.zeros(0, np.int64)
    a_order, b_order = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for band in range(n_bands):
        hashes, orders, gids = [], [], []
        for s, (ranks, order, gid) in enumerate(alive):
            h = np.asarray(shards.array(s, "near_bands", keep=False)[band])[ranks]  # (bands, sentences) layout
            take = np.flatnonzero(h % np.uint64(n_parts) == np.uint64(m))
            hashes.append(h[take])
            orders.append(order[take])
            gids.append(gid[take])
        h, order, gid = (np.concatenate(x) for x in (hashes, orders, gids))
        by_bucket = np.lexsort((order, h))
        h, order, gid = h[by_bucket], order[by_bucket], gid[by_bucket]
        new = np.ones(len(h), dtype=bool)
        new[1:] = h[1:] != h[:-1]
        i, j = bucket_pairs(new)
        a, b = np.concatenate([a, gid[i]]), np.concatenate([b, gid[j]])
        a_order, b_order = np.concatenate([a_order, order[i]]), np.concatenate([b_order, order[j]])
        keep = unique_pairs(a, b)  # a pair found in several bands
        a, b, a_order, b_order = a[keep], b[keep], a_order[keep], b_order[keep]
    sims = pair_jaccard(shards, a, b)
    best_gid = np.concatenate([a, b])
    best = np.concatenate([sims, sims])
    by_gid = np.lexsort((-best, best_gid))
    first = np.ones(len(by_gid), dtype=bool)
    first[1:] = best_gid[by_gid][1:] != best_gid[by_gid][:-1]
    save_per_shard(part, "best", len(shards), best_gid[by_gid][first], {"value": best[by_gid][first]})
    edge = sims >= shards.options["near_threshold"]
    part.save("a", a[edge])
    part.save("b", b[edge])
    part.save("a_order", a_order[edge])
    part.save("b_order", b_order[edge])
    return {"part": [m, n_parts], "candidate_pairs": len(a), "verified_pairs": int(edge.sum())}


def near_settle(shards, work, part) -> dict:
    """Pass `near` settle (once): groups are the connected components of the verified edges; every record
    but the first of its group is dropped, with its exact Jaccard to that first record."""
    from rsyn.stages.dedup.work import first_of_components, save_per_shard

    parts = work.parts("near", "dedup-near --part M/P")
    a, b, a_order, b_order = (
        np.concatenate([np.asarray(p.load(name)) for p in parts]) for name in ("a", "b", "a_order", "b_order")
    )
    unique = unique_pairs(a, b)
    nodes, first, sizes = first_of_components(a[unique], b[unique], a_order[unique], b_order[unique])
    dropped = nodes != first
    to_kept = pair_jaccard(shards, first[dropped], nodes[dropped])
    save_per_shard(part, "drop", len(shards), nodes[dropped], {"dup": first[dropped], "sim": to_kept})
    opts = shards.options
    bands, rows = lsh_params(opts["near_threshold"], opts["num_perm"])
    any_text = any(info["texts"] for info in shards.infos)
    return {
        "threshold": opts["near_threshold"],
        "ngram": opts["ngram"],
        "num_perm": opts["num_perm"],
        "bands": bands,
        "rows": rows,
        "candidate_pairs": sum(p.info()["candidate_pairs"] for p in parts),
        "verified_pairs": len(unique),
        "largest_group": int(sizes.max()) if len(sizes) else int(any_text),
        "dropped": int(dropped.sum()),
    }
