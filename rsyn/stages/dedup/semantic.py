"""Semantic (and perceptual) duplicates on embeddings: faiss k-means, threshold edges inside clusters,
then keep-first over the edges.

SemDeDup (Abbas et al. 2023) compares records only within their k-means
cluster, which turns the n^2 all-pairs problem into sum of cluster size^2.
With one cluster per record, duplicates that straddle a cluster boundary are
never compared; in weakly clustered high-dimensional embeddings that is a
large share of them (benchmarks/dedup_quality.py measures it). So every record is also
compared with the records whose *second* nearest centroid (up to `probes`)
is its own cluster, the same idea as probing several lists of an IVF index.

Which records go: records are taken in input order and a record is dropped
when its cosine similarity to an already *kept* record is at or above the
threshold. Comparing with kept records only (not with every earlier record,
and not grouping by union-find as the paper does) is what stops transitive
chains: with union-find at cosine 0.9, a ~ b ~ c ~ ... links records that are
far apart in a dense region and keeps one of thousands; here every dropped
record is within the threshold of the record named in its `dup_of`. The
result is the lexicographically first maximal independent set of the
threshold graph, computed in vectorised rounds over the edge list.

Similarity products run in row blocks (at most 64 MiB each) on the GPU
(torch) when the run has one; k-means on the GPU when faiss has GPU support.

As passes: `train` (once) fits k-means on a sample chosen by a hash of each
record's order key, so the sample does not depend on the sharding; `assign`
(per shard) gives each surviving record its `probes` nearest clusters;
`pairs` (per cluster partition) finds the pairs at the threshold;
`select` (once) runs keep-first over the edges.

Thread-count independence: float32 products (BLAS, GPU) only *find*
candidates, with a margin; every similarity that decides or is written
is recomputed in float64 from the float16 vectors, pair by pair, so a pair
found in two clusters, by 1 or 16 threads, gets the same score to the last
bit. Cluster assignment re-ranks faiss's float32 top candidates the same
way, and k-means trains with one faiss thread.
"""

from __future__ import annotations

import math

import numpy as np

from rsyn.errors import RsynError
from rsyn.stages.dedup.near import fmix64, unique_pairs
from rsyn.stages.dedup.work import gid_of, save_per_shard, split_gid
from rsyn.vectors import one_faiss_thread

KINDS = ("text", "image")
SIM_BYTES = 1 << 26  # one block of the similarity matrix: 64 MiB of float32
ASSIGN_BATCH = 65536
RERANK_BATCH = 4096
# k-means trains on this many points per centroid: a partition for dedup needs no finer centroids
SAMPLE_PER_CENTROID = 64
KMEANS_ITERATIONS = 10
# float32 products of unit float16 vectors are within ~3e-5 of the float64 ones at d = 512: a pair this close
# to the threshold (or to a row's best) is a candidate, and float64 decides
MARGIN = 1e-4
_SAMPLE_SALT = np.uint64(0x2545F4914F6CDD1D)


def _alive(shards, work, s: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows into the shard's emb-KIND matrix, record rows) of shard s's records of `kind` that exact and
    near dedup kept."""
    if f"emb-{kind}-rows" not in _files(shards, s):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.asarray(shards.array(s, f"emb-{kind}-rows"))
    alive = np.ones(len(rows), dtype=bool)
    for mode in ("exact", "near"):
        if mode in shards.options["modes"]:
            from rsyn.stages.dedup.work import dropped_rows

            settled = work.require(f"{mode}/settled", f"dedup-settle --mode {mode}")
            alive &= ~np.isin(rows, dropped_rows(settled, s))
    ranks = np.flatnonzero(alive)
    return ranks, rows[ranks]


def _files(shards, s: int) -> set[str]:
    return {p.stem for p in shards.parts[s].path.glob("*.npy")}


def _vectors(shards, kind: str, gids: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """float16 vectors of records (gid shard, row in the shard's emb-KIND matrix)."""
    shard, _ = split_gid(gids)
    out = None
    for s in np.unique(shard).tolist():
        where = np.flatnonzero(shard == s)
        matrix = shards.array(s, f"emb-{kind}", keep=False)
        values = np.asarray(matrix[ranks[where]])
        if out is None:
            out = np.empty((len(gids), matrix.shape[1]), dtype=matrix.dtype)
        out[where] = values
    return out if out is not None else np.zeros((0, 0), dtype=np.float16)


def exact_cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine of rows x[k] and y[k] (float16), in float64: the same bits whatever the batch or thread count."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    x /= np.sqrt((x * x).sum(axis=1, keepdims=True))
    y /= np.sqrt((y * y).sum(axis=1, keepdims=True))
    return (x * y).sum(axis=1)


def _check_models(shards, kind: str) -> None:
    seen = {
        (repr(info["embedding_model"].get(kind)), info["embedding_dim"].get(kind))
        for info in shards.infos
        if kind in info["embedding_dim"]
    }
    if len(seen) > 1:
        raise RsynError(
            f"{kind} embeddings of different models or sizes in different shards ({sorted(seen)}): "
            "they cannot be compared"
        )


def train(shards, work, part, device: str) -> dict:
    """Pass `train` (once): per kind, k = ceil(survivors / cluster size) k-means centroids, trained on
    SAMPLE_PER_CENTROID * k survivors chosen by a seeded hash of their order key."""
    from rsyn.vectors import train_kmeans

    opts = shards.options
    seed = np.uint64(opts["seed"] & 0xFFFFFFFFFFFFFFFF) * _SAMPLE_SALT
    info = {}
    for kind in KINDS:
        _check_models(shards, kind)
        alive = [_alive(shards, work, s, kind) for s in range(len(shards))]
        m = sum(len(r) for r, _ in alive)
        if m == 0:
            continue
        k = max(1, math.ceil(m / max(1, opts["cluster_size"])))
        info[kind] = {"records": m, "clusters": k}
        if k == 1:
            continue
        n_train = min(m, k * SAMPLE_PER_CENTROID)
        picks = []
        for s, (ranks, rows) in enumerate(alive):
            order = np.asarray(shards.array(s, "order"))[rows]
            with np.errstate(over="ignore"):
                key = fmix64(order.astype(np.uint64) ^ seed)
            take = np.argsort(key, kind="stable")[:n_train]
            picks.append((key[take], order[take], gid_of(s, rows[take]), ranks[take]))
        key, order, gid, rank = (np.concatenate(x) for x in zip(*picks))
        chosen = np.lexsort((order, key))[:n_train]
        chosen = chosen[np.argsort(order[chosen])]  # training input in input order
        sample = _vectors(shards, kind, gid[chosen], rank[chosen]).astype(np.float32)
        with one_faiss_thread():
            centroids = train_kmeans(
                sample,
                k,
                seed=opts["seed"],
                device=device,
                niter=KMEANS_ITERATIONS,
                max_points_per_centroid=SAMPLE_PER_CENTROID,
            )
        part.save(f"centroids-{kind}", centroids)
        info[kind]["clusters"] = len(centroids)
    return info


def assign(shards, work, part, s: int, device: str) -> dict:
    """Pass `assign` (per shard): the `probes` nearest clusters of every surviving record, nearest first.

    faiss finds the nearest probes + 2 centroids in float32; they are re-ranked in float64, so a record
    nearly equidistant from two centroids gets the same order on every machine."""
    from rsyn.vectors import flat_ip_index

    trained = work.require("semantic/train", "dedup-train")
    probes = shards.options["probes"]
    info = {}
    for kind in KINDS:
        ranks, rows = _alive(shards, work, s, kind)
        part.save(f"rows-{kind}", rows)
        part.save(f"ranks-{kind}", ranks)
        centroids_file = trained.path / f"centroids-{kind}.npy"
        if not centroids_file.is_file():
            labels = np.zeros((len(rows), 1), dtype=np.int64)
        else:
            centroids = np.load(centroids_file)
            c64 = centroids.astype(np.float64)
            p = max(1, min(probes, len(centroids)))
            top = min(len(centroids), p + 2)
            index = flat_ip_index(centroids, device)
            matrix = shards.array(s, f"emb-{kind}", keep=False)
            labels = np.empty((len(rows), p), dtype=np.int64)
            for lo in range(0, len(rows), RERANK_BATCH):
                x = np.asarray(matrix[ranks[lo : lo + RERANK_BATCH]])
                with one_faiss_thread():
                    candidates = index.search(np.ascontiguousarray(x, dtype=np.float32), top)[1]
                x64 = x.astype(np.float64)
                sims = np.stack([(x64 * c64[candidates[:, t]]).sum(axis=1) for t in range(top)], axis=1)
                labels[lo : lo + len(x)] = _rank(sims, candidates, p)
        part.save(f"labels-{kind}", labels)
        info[kind] = {"records": len(rows)}
    return info


def _rank(sims: np.ndarray, candidates: np.ndarray, p: int) -> np.ndarray:
    """Per row, the p candidates of highest similarity (ties: lower centroid number first)."""
    order = np.lexsort((candidates, -sims))  # sorts along the last axis, row by row
    return np.take_along_axis(candidates, order, axis=1)[:, :p]


def pairs(shards, work, part, m: int, n_parts: int, device: str) -> dict:
    """Pass `pairs` (per cluster partition m of n_parts): within each cluster c with c % n_parts == m, every
    record whose nearest cluster is c is compared with every record that has c among its probes; pairs at
    the threshold are edges, and each record's best cosine is kept."""
    assigned = work.parts("semantic/assign", "dedup-assign --shard K/N")
    threshold = _threshold(shards.options)
    products = _Products(device)
    info = {}
    for kind in KINDS:
        cluster, primary, order, gid, rank = [], [], [], [], []
        for s, p in enumerate(assigned):
            labels = np.asarray(p.load(f"labels-{kind}"))
            rows, ranks = np.asarray(p.load(f"rows-{kind}")), np.asarray(p.load(f"ranks-{kind}"))
            r, j = np.nonzero(labels % n_parts == m)
            cluster.append(labels[r, j])
            primary.append(j == 0)
            order.append(np.asarray(shards.array(s, "order"))[rows[r]])
            gid.append(gid_of(s, rows[r]))
            rank.append(ranks[r])
        cluster, primary, order, gid, rank = (
            np.concatenate(x) if x else np.zeros(0, np.int64) for x in (cluster, primary, order, gid, rank)
        )
        by_cluster = np.lexsort((order, cluster))
        cluster, primary, order, gid, rank = (x[by_cluster] for x in (cluster, primary, order, gid, rank))
        bounds = np.flatnonzero(np.diff(cluster)) + 1
        found_q, found_d = [], []
        for lo, hi in zip(np.concatenate([[0], bounds]).tolist(), np.concatenate([bounds, [len(cluster)]]).tolist()):
            queries = lo + np.flatnonzero(primary[lo:hi])
            if len(queries) == 0 or hi - lo < 2:
                continue
            xd = _unit32(_vectors(shards, kind, gid[lo:hi], rank[lo:hi]))
            xq = xd[queries - lo]
            for start, sims in products(xq, xd):
                q = queries[start : start + len(sims)]
                sims[(q - lo)[:, None] == np.arange(hi - lo)[None, :]] = -2.0  # a record is not its own duplicate
                floor = np.minimum(sims.max(axis=1), threshold) - MARGIN
                qi, di = np.nonzero(sims >= floor[:, None])
                found_q.append(q[qi])
                found_d.append(lo + di)
        qs = np.concatenate(found_q) if found_q else np.zeros(0, np.int64)
        ds = np.concatenate(found_d) if found_d else np.zeros(0, np.int64)
        sim = _pair_cosine(shards, kind, gid, rank, qs, ds)
        edge = np.flatnonzero(sim >= threshold)
        first = order[qs[edge]] <= order[ds[edge]]
        ea, eb = np.where(first, qs[edge], ds[edge]), np.where(first, ds[edge], qs[edge])  # a before b
        keep = unique_pairs(gid[ea], gid[eb])  # a pair seen from both sides
        ea, eb, esim = ea[keep], eb[keep], sim[edge][keep]
        # best: every pair of the record's own row, and both ends of every edge
        best_gid = np.concatenate([gid[qs], gid[ea], gid[eb]])
        best_val = np.concatenate([sim, esim, esim])
        by_gid = np.lexsort((-best_val, best_gid))
        head = np.ones(len(by_gid), dtype=bool)
        head[1:] = best_gid[by_gid][1:] != best_gid[by_gid][:-1]
        save_per_shard(part, f"best-{kind}", len(shards), best_gid[by_gid][head], {"value": best_val[by_gid][head]})
        part.save(f"a-{kind}", gid[ea])
        part.save(f"b-{kind}", gid[eb])
        part.save(f"a_order-{kind}", order[ea])
        part.save(f"b_order-{kind}", order[eb])
        part.save(f"sim-{kind}", esim)
        info[kind] = {"candidates": len(qs), "edges": len(ea)}
    return info


def _pair_cosine(shards, kind: str, gid: np.ndarray, rank: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """exact_cosine of the records at positions i[k] and j[k], in chunks (bounded memory)."""
    out = np.empty(len(i), dtype=np.float64)
    for lo in range(0, len(i), RERANK_BATCH * 4):
        a, b = i[lo : lo + RERANK_BATCH * 4], j[lo : lo + RERANK_BATCH * 4]
        out[lo : lo + len(a)] = exact_cosine(
            _vectors(shards, kind, gid[a], rank[a]), _vectors(shards, kind, gid[b], rank[b])
        )
    return out


def _threshold(opts: dict) -> float:
    return opts["semantic_threshold"] if "semantic" in opts["modes"] else opts["perceptual_threshold"]


def _unit32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # float16 storage leaves norms a hair off 1
    return x


def select(shards, work, part) -> dict:
    """Pass `select` (once): per kind, keep-first over the union of the partitions' edges; each dropped
    record names its most similar kept earlier neighbour."""
    parts = work.parts("semantic/pairs", "dedup-pairs --part M/P")
    assigned = work.parts("semantic/assign", "dedup-assign --shard K/N")
    trained = work.require("semantic/train", "dedup-train").info()
    opts = shards.options
    drop_gid, drop_dup, drop_sim = [], [], []
    info = {"threshold": _threshold(opts), "perceptual_threshold": opts["perceptual_threshold"]}
    for kind in KINDS:
        if kind not in trained:
            continue
        a, b, a_order, b_order, sim = (
            np.concatenate([np.asarray(p.load(f"{name}-{kind}")) for p in parts])
            for name in ("a", "b", "a_order", "b_order", "sim")
        )
        keep = unique_pairs(a, b)  # one pair found in several clusters: identical float64 scores
        a, b, a_order, b_order, sim = (x[keep] for x in (a, b, a_order, b_order, sim))
        node_order, index = np.unique(np.concatenate([a_order, b_order]), return_index=True)
        nodes = np.concatenate([a, b])[index]  # nodes in input order
        pa, pb = np.searchsorted(node_order, a_order), np.searchsorted(node_order, b_order)
        kept = keep_first(len(nodes), pa, pb)
        link = kept[pa] & ~kept[pb]
        la, lb, ls = pa[link], pb[link], sim[link]
        best = np.lexsort((la, -ls, lb))  # per dropped record: the most similar kept one, then the earliest
        la, lb, ls = la[best], lb[best], ls[best]
        head = np.ones(len(lb), dtype=bool)
        head[1:] = lb[1:] != lb[:-1]
        drop_gid.append(nodes[lb[head]])
        drop_dup.append(nodes[la[head]])
        drop_sim.append(ls[head])
        sizes = np.zeros(trained[kind]["clusters"], dtype=np.int64)
        for p in assigned:
            labels = p.load(f"labels-{kind}")
            sizes += np.bincount(np.asarray(labels[:, 0]), minlength=len(sizes))[: len(sizes)]
        info[kind] = {
            "records": trained[kind]["records"],
            "clusters": trained[kind]["clusters"],
            "probes": int(assigned[0].load(f"labels-{kind}").shape[1]) if len(assigned) else 0,
            "largest_cluster": int(sizes.max()) if len(sizes) else 0,
            "pairs_over_threshold": len(a),
            "embedding_model": next(
                (i["embedding_model"][kind] for i in shards.infos if kind in i["embedding_model"]), None
            ),
        }
    gids, dups, sims = (np.concatenate(x) if x else np.zeros(0) for x in (drop_gid, drop_dup, drop_sim))
    save_per_shard(
        part, "drop", len(shards), gids.astype(np.int64), {"dup": dups.astype(np.int64), "sim": sims.astype(np.float64)}
    )
    info["dropped"] = len(gids)
    return info


class _Products:
    """Cosine products of query rows with a cluster's rows: torch on a CUDA device, numpy (BLAS) on CPU."""

    def __init__(self, device: str):
        self.device = device if device.startswith("cuda") else None

    def __call__(self, queries: np.ndarray, database: np.ndarray):
        if self.device is None:
            for lo in range(0, len(queries), self._block(len(database))):
                yield lo, queries[lo : lo + self._block(len(database))] @ database.T
            return
        import torch

        db = torch.from_numpy(database).to(self.device)
        q = torch.from_numpy(queries).to(self.device)
        for lo in range(0, len(queries), self._block(len(database))):
            yield lo, (q[lo : lo + self._block(len(database))] @ db.T).cpu().numpy()

    @staticmethod
    def _block(width: int) -> int:
        return int(max(16, min(8192, SIM_BYTES // (4 * max(width, 1)))))


def keep_first(m: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kept mask of the lexicographically first maximal independent set of the graph (a < b edges).

    Record b is dropped as soon as one earlier neighbour a is kept, and kept as
    soon as no earlier neighbour is undecided. Every round settles at least the
    first undecided record, and in practice a whole wave of them.
    """
    undecided, kept = np.ones(m, dtype=bool), np.zeros(m, dtype=bool)
    while True:
        live = undecided[b]
        a, b = a[live], b[live]  # edges into settled records are done
        blocked = np.zeros(m, dtype=bool)
        blocked[b[undecided[a]]] = True
        free = undecided & ~blocked
        kept |= free
        undecided &= ~free
        hit = b[kept[a]]
        undecided[hit] = False
        if not undecided.any():
            return kept
