"""The work directory that dedup's passes share: part directories, done markers, and reads across shards.

Layout (every part directory holds .npy files, written atomically, then DONE last):

    WORK/scan/part-K-of-N/          per input shard: the records (zstd JSONL spill), order keys, ids, kinds,
                                    exact keys, shingle sets and LSH band hashes, float16 embeddings
    WORK/exact/part-M-of-P/         per key partition: edges from each duplicate to the first record of its key
    WORK/exact/settled/             once: dropped records per shard (local row, dup_of id, similarity)
    WORK/near/part-M-of-P/          per bucket partition: verified edges, best Jaccard per shard
    WORK/near/settled/              once: connected components, dropped records per shard
    WORK/semantic/train/            once: k-means centroids per kind, trained on a sample
    WORK/semantic/assign/part-K-of-N/  per shard: nearest clusters of each surviving record
    WORK/semantic/pairs/part-M-of-P/   per cluster partition: edges at the threshold, best cosine per shard
    WORK/semantic/settled/          once: keep-first over the edges, dropped records per shard

A record is named across passes by its *gid* (shard << 40 | row in the shard)
and ordered by its *order key* (input file index << 40 | line number), which
does not depend on how the input was sharded: "first in input order" is the
smallest order key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import orjson

from rsyn.errors import RsynError
from rsyn.stream import AtomicFile, write_bytes_atomic

DONE = "DONE"
ROW_BITS = 40
ROW_MASK = (1 << ROW_BITS) - 1
_PART = re.compile(r"part-(\d{5})-of-(\d{5})$")


def gid_of(shard: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(shard) << np.int64(ROW_BITS)) | np.asarray(rows, dtype=np.int64)


def split_gid(gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return gids >> np.int64(ROW_BITS), gids & np.int64(ROW_MASK)


def part_name(k: int, n: int) -> str:
    return f"part-{k:05d}-of-{n:05d}"


class Part:
    """One pass's output directory: files written atomically, DONE written last."""

    def __init__(self, path: Path, durable: bool = True):
        self.path = path
        self.durable = durable

    @contextlib.contextmanager
    def writing(self):
        """Write this part: whatever a killed earlier run left here is removed first, and a pass that fails
        removes what it wrote (a SIGKILL leaves files without DONE, which the next run removes)."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        try:
            yield self
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def save(self, name: str, array: np.ndarray) -> None:
        # durable=False: a private temporary work directory, which dies with the run, needs no fsync
        with AtomicFile(self.path / f"{name}.npy", durable=self.durable) as out:
            np.save(out.fh, np.ascontiguousarray(array), allow_pickle=False)

    def file(self, name: str) -> Path:
        return self.path / name

    def finish(self, info: dict) -> None:
        write_bytes_atomic(
            self.path / DONE,
            orjson.dumps(info, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n",
        )

    # reading
    @property
    def done(self) -> bool:
        return (self.path / DONE).is_file()

    def info(self) -> dict:
        return orjson.loads((self.path / DONE).read_bytes())

    def load(self, name: str, mmap: bool = True) -> np.ndarray:
        path = self.path / f"{name}.npy"
        if not path.is_file():
            raise RsynError(f"{path}: missing (the pass that writes it did not finish; rerun it)")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


class Work:
    """The work directory of one dedup job."""

    def __init__(self, root: str | os.PathLike, durable: bool = True):
        self.root = Path(root)
        self.durable = durable  # fsync part files (not needed in a temporary directory that dies with the run)
        self.scan_stamp: str | None = None  # set by Shards: every later part must come from this scan

    def _check_stamp(self, part: Part, command: str) -> None:
        stamp = part.info().get("scan")
        if self.scan_stamp is not None and stamp != self.scan_stamp:
            raise RsynError(
                f"{part.path}: computed from an earlier scan, not the current one; rerun "
                f"`rsyn {command}` (and the passes after it)"
            )

    def part(self, stage: str, k: int, n: int) -> Part:
        return Part(self.root / stage / part_name(k, n), self.durable)

    def single(self, stage: str) -> Part:
        return Part(self.root / stage, self.durable)

    def parts(self, stage: str, command: str) -> list[Part]:
        """Every part of a per-shard or per-partition pass, all done and of one count, in order."""
        directory = self.root / stage
        found = sorted(
            (int(m.group(1)), int(m.group(2)))
            for p in (directory.iterdir() if directory.is_dir() else [])
            if (m := _PART.match(p.name))
        )
        counts = {n for _, n in found}
        if not found:
            raise RsynError(f"{directory}: no parts yet; run `rsyn {command}` first")
        if len(counts) > 1:
            raise RsynError(
                f"{directory}: parts of different counts ({', '.join(map(str, sorted(counts)))}) from "
                "earlier runs; remove the directory and rerun the pass"
            )
        n = counts.pop()
        parts = [self.part(stage, k, n) for k in range(n)]
        missing = [str(k) for k, p in enumerate(parts) if not p.done]
        if missing:
            raise RsynError(
                f"{directory}: part(s) {', '.join(missing[:8])} of {n} not done; run `rsyn {command}` for them"
            )
        if stage != "scan":
            for p in parts:
                self._check_stamp(p, command)
        return parts

    def require(self, stage: str, command: str) -> Part:
        part = self.single(stage)
        if not part.done:
            raise RsynError(f"{part.path}: not done; run `rsyn {command}` first")
        self._check_stamp(part, command)
        return part


class Shards:
    """Read access to every scan part: rows of any record by gid, without loading the corpus."""

    def __init__(self, work: Work):
        self.work = work
        self.parts = work.parts("scan", "dedup-scan")
        self.infos = [p.info() for p in self.parts]
        self.options = self.infos[0]["options"]
        for k, info in enumerate(self.infos):
            if info["options"] != self.options or info["shard"] != [k, len(self.parts)]:
                raise RsynError(
                    f"{self.parts[k].path}: scanned with other options or another shard count than "
                    f"{self.parts[0].path}; rescan every shard with the same options"
                )
        self._cache: dict[tuple[int, str], np.ndarray] = {}
        digest = hashlib.blake2b(digest_size=16)
        for info in self.infos:
            digest.update(orjson.dumps(info, option=orjson.OPT_SORT_KEYS))
        self.stamp = work.scan_stamp = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.parts)

    def array(self, shard: int, name: str, keep: bool = True) -> np.ndarray:
        """A scan array, memory-mapped. keep=False for the large ones (band hashes, shingles, vectors): the
        caller drops the map after use, so the pages it touched leave this process's RSS (pages of a map
        held open count in RSS until the OS evicts them, which would grow a partition pass with the corpus)."""
        if not keep:
            return self.parts[shard].load(name)
        key = (shard, name)
        if key not in self._cache:
            self._cache[key] = self.parts[shard].load(name)
        return self._cache[key]

    def order(self, gids: np.ndarray) -> np.ndarray:
        """Order keys of records named by gid."""
        return self._gather(gids, lambda s, rows: self.array(s, "order")[rows])

    def ids(self, gids: np.ndarray) -> list[str]:
        """Record ids (strings) of records named by gid, in the order given."""
        out: list[str | None] = [None] * len(gids)
        shard, rows = split_gid(np.asarray(gids, dtype=np.int64))
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            blob, end = self.array(int(s), "id_bytes"), self.array(int(s), "id_end")
            r = rows[where]
            starts = np.where(r > 0, end[np.maximum(r - 1, 0)], 0)
            stops = end[r]
            for i, a, b in zip(where.tolist(), starts.tolist(), stops.tolist()):
                out[i] = bytes(blob[a:b]).decode("utf-8", "surrogatepass")
        return out  # type: ignore[return-value]

    def _gather(self, gids: np.ndarray, fetch) -> np.ndarray:
        gids = np.asarray(gids, dtype=np.int64)
        shard, rows = split_gid(gids)
        out = None
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            values = np.asarray(fetch(int(s), rows[where]))
            if out is None:
                out = np.empty((len(gids),) + values.shape[1:], dtype=values.dtype)
            out[where] = values
        return out if out is not None else np.zeros(0, dtype=np.int64)

    def gather(self, gids: np.ndarray, name: str) -> np.ndarray:
        return self._gather(gids, lambda s, rows: self.array(s, name)[rows])


def save_per_shard(part: Part, name: str, n_shards: int, gids: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Split rows keyed by gid into one file per shard: NAME-K-rows (row in the shard) and NAME-K-COLUMN."""
    shard, rows = split_gid(np.asarray(gids, dtype=np.int64))
    order = np.lexsort((rows, shard))
    shard, rows = shard[order], rows[order]
    bounds = np.searchsorted(shard, np.arange(n_shards + 1))
    for k in range(n_shards):
        lo, hi = bounds[k], bounds[k + 1]
        part.save(f"{name}-{k}-rows", rows[lo:hi])
        for column, values in columns.items():
            part.save(f"{name}-{k}-{column}", np.asarray(values)[order][lo:hi])


def first_of_components(a: np.ndarray, b: np.ndarray, a_order: np.ndarray, b_order: np.ndarray):
    """Connected components of the edges (a, b) between gids: (nodes, the first node of each node's
    component by order key, component sizes). Memory grows with the edges, not with the corpus."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    nodes, index = np.unique(np.concatenate([a, b]), return_index=True)
    if len(nodes) == 0:
        return nodes, nodes.copy(), np.zeros(0, np.int64)
    node_order = np.concatenate([a_order, b_order])[index]
    position = np.searchsorted(nodes, np.concatenate([a, b]))
    m = len(nodes)
    graph = sp.coo_matrix((np.ones(len(a), dtype=np.int8), (position[: len(a)], position[len(a) :])), shape=(m, m))
    _, component = connected_components(graph, directed=False)
    by_component = np.lexsort((node_order, component))
    starts = np.ones(m, dtype=bool)
    starts[1:] = component[by_component][1:] != component[by_component][:-1]
    first_of = np.empty(int(component.max()) + 1, dtype=np.int64)
    first_of[component[by_component][starts]] = nodes[by_component][starts]
    return nodes, first_of[component], np.bincount(component)


def dropped_rows(part: Part, shard: int) -> np.ndarray:
    """Rows of `shard` that a settled mode dropped (sorted)."""
    return np.asarray(part.load(f"drop-{shard}-rows", mmap=False))
