#!/usr/bin/env python
"""Benchmarks of `rsyn dedup` (not run by CI).

    .venv/bin/python benchmarks/dedup_quality.py [--sentences 200000] [--semantic-n 1000000] [--repeat 2]
                                        [--memory-n 1000000] [--semantic-cli-n 100000]
                                        [--only near,speed,semantic,semantic-cli,memory]

near      Real LAION captions (../shared/data/laion-10k.parquet) plus planted
          edits of known Jaccard. Ground truth: brute-force exact Jaccard of
          every pair (sparse shingle-incidence product), groups by union-find,
          first of each group kept. Reports precision and recall of the
          records `rsyn dedup --mode near` drops (targets >= 0.99 / >= 0.95 at
          0.8), and the share of planted pairs grouped, per Jaccard bin.
speed     `rsyn dedup --mode near` end to end (process start, zstd JSONL in and
          out) against datasketch's own `MinHash.bulk` on the same word-bigram
          shingles (shingling not timed for datasketch), sentences/s, best of
          --repeat, alternating (target ratio >= 0.75). Also peak RSS.
semantic  Synthetic unit 512-d embeddings (topics plus planted duplicates at
          known cosine). Time of the k-means + within-cluster pass on all of
          them, and on a subsample against brute-force all pairs (same
          keep-first rule, one cluster): time, agreement, and what union-find
          grouping would have done on the same threshold graph.
semantic-cli  `rsyn dedup --mode exact,semantic` end to end on image records
          with inline embeddings (JSON and base64 included).
memory    peak RSS of `rsyn dedup` at --memory-n / 4 and --memory-n
          sentences; the slope is the memory per million.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import zstandard

ROOT = Path(__file__).resolve().parent.parent  # benchmarks/ sits at the repository root
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "laion-10k.parquet"
if not DATA.exists():
    DATA = Path("/work/shared/data/laion-10k.parquet")

from rsyn.records import text_id  # noqa: E402
from rsyn.stages.dedup.exact import match_form  # noqa: E402

THRESHOLD = 0.8
NGRAM = 2


# --------------------------------------------------------------------------- corpus


def captions() -> list[str]:
    import pyarrow.parquet as pq

    texts = pq.read_table(DATA, columns=["TEXT"]).column("TEXT").to_pylist()
    return [t for t in texts if t and t.strip()]


def shingles(text: str) -> set:
    """Reference shingles, independent of rsyn's hashing: word bigrams of the match form."""
    words = match_form(text).split()
    if not words:
        return set()
    if len(words) < NGRAM:
        return {tuple(words)}
    return set(zip(*(words[k:] for k in range(NGRAM))))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def plant_edits(texts: list[str], n_planted: int, rng, max_edits: int = 3, min_words: int = 6) -> list[tuple[int, str]]:
    """Edits of random captions: replace, delete or insert 1 to max_edits words (a wide range of Jaccard)."""
    vocabulary = [w for t in texts[:2000] for w in t.split()]
    candidates = [i for i, t in enumerate(texts) if len(t.split()) >= min_words]
    planted = []
    for i in rng.choice(candidates, size=min(n_planted, len(candidates)), replace=False):
        words = texts[i].split()
        k = int(rng.integers(1, max_edits + 1))
        for _ in range(k):
            op = rng.integers(3)
            at = int(rng.integers(len(words)))
            if op == 0:
                words[at] = vocabulary[rng.integers(len(vocabulary))]
            elif op == 1 and len(words) > 4:
                del words[at]
            else:
                words.insert(at, vocabulary[rng.integers(len(vocabulary))])
        planted.append((int(i), " ".join(words)))
    return planted


def truth_pairs(sets: list[set], threshold: float) -> np.ndarray:
    """Every pair (i < j) with exact Jaccard >= threshold: sparse incidence product, chunked."""
    import scipy.sparse as sp

    vocab: dict = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for g in s:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(sets), len(vocab)))
    sizes = np.array([len(s) for s in sets])
    mt = m.T.tocsr()
    found = []
    for lo in range(0, len(sets), 2000):
        inter = (m[lo : lo + 2000] @ mt).tocoo()
        i, j, v = inter.row + lo, inter.col, inter.data
        keep = i < j
        i, j, v = i[keep], j[keep], v[keep]
        jac = v / (sizes[i] + sizes[j] - v)
        ok = jac >= threshold
        found.append(np.stack([i[ok], j[ok]], axis=1))
    return np.concatenate(found)


def first_of_components(n: int, pairs: np.ndarray) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    g = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    first = np.full(comp.max() + 1, n)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp]


def write_records(path: Path, texts: list[str]) -> None:
    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
        for i, t in enumerate(texts):
            out.write(
                orjson.dumps(
                    {"id": text_id(t) + f"-{i}", "kind": "text", "doc": f"d{i // 20}", "pos": i % 20, "text": t}
                )
                + b"\n"
            )


def run_cli(args: list) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (KiB) of one `rsyn` process.

    The RSS comes from GNU time around the command: the rusage of a child
    forked from this (large) benchmark process would count the pages it
    shared with us before exec.
    """
    cmd = [sys.executable, "-m", "rsyn", *map(str, args)]
    gnu_time = Path("/usr/bin/time")
    if gnu_time.exists():
        cmd = [str(gnu_time), "-f", "RSYN_MAXRSS_KB %M", *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=ROOT)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"rsyn {' '.join(map(str, args))} failed:\n{err}")
    peaks = [int(line.split()[1]) for line in err.splitlines() if line.startswith("RSYN_MAXRSS_KB ")]
    return elapsed, usage.ru_utime + usage.ru_stime, peaks[-1] if peaks else usage.ru_maxrss


def read_zst(path: Path) -> list[dict]:
    with open(path, "rb") as fh:
        data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()  # rsyn writes many frames
    return [orjson.loads(x) for x in data.splitlines() if x]


# --------------------------------------------------------------------------- near: precision / recall


def bench_near(tmp: Path, rng) -> None:
    texts = captions()
    # edits of 1-3 words (mostly below 0.8), plus single-word edits of long captions (mostly above)
    planted = plant_edits(texts, 3000, rng) + plant_edits(texts, 2000, rng, max_edits=1, min_words=14)
    corpus = texts + [t for _, t in planted]
    sets = [shingles(t) for t in corpus]
    t0 = time.perf_counter()
    truth = truth_pairs(sets, THRESHOLD)
    brute_s = time.perf_counter() - t0
    n = len(corpus)
    truth_first = first_of_components(n, truth)
    truth_drop = set(np.flatnonzero(truth_first != np.arange(n)).tolist())

    src, out, rejects, stats = (
        tmp / "near.jsonl.zst",
        tmp / "near-out.jsonl.zst",
        tmp / "near-rej.jsonl",
        tmp / "s.json",
    )
    write_records(src, corpus)
    seconds, _, _ = run_cli(["dedup", src, "--mode", "near", "-o", out, "--rejects", rejects, "--stats", stats, "-q"])
    index_of = {}
    for i, t in enumerate(corpus):
        index_of[text_id(t) + f"-{i}"] = i
    dropped_entries = [orjson.loads(x) for x in rejects.read_bytes().splitlines()] if rejects.exists() else []
    got_drop = {index_of[e["record"]["id"]] for e in dropped_entries}
    hit = len(got_drop & truth_drop)
    precision = hit / len(got_drop) if got_drop else 1.0
    recall = hit / len(truth_drop) if truth_drop else 1.0
    group_of = {index_of[e["record"]["id"]]: index_of[e["dup_of"]] for e in dropped_entries}

    def rep(i):
        return group_of.get(i, i)

    pair_recall = np.mean([rep(i) == rep(j) for i, j in truth]) if len(truth) else 1.0
    stage = orjson.loads(stats.read_bytes())["stage"]["near"]
    print(
        f"\n## near: {len(texts)} real captions + {len(planted)} planted edits = {n} sentences, threshold {THRESHOLD}, "
        f"word {NGRAM}-grams, {stage['num_perm']} permutations, {stage['bands']} bands x {stage['rows']} rows"
    )
    print("| measure | value | target |\n|---|---|---|")
    print(f"| pairs with exact Jaccard >= {THRESHOLD} (brute force, {brute_s:.1f}s) | {len(truth)} | |")
    print(f"| records to drop (truth, union-find) | {len(truth_drop)} | |")
    print(f"| records dropped by rsyn | {len(got_drop)} | |")
    print(f"| precision (records) | {precision:.4f} | >= 0.99 |")
    print(f"| recall (records) | {recall:.4f} | >= 0.95 |")
    print(f"| truth pairs put in one group | {pair_recall:.4f} | |")
    print(f"| LSH candidate pairs / verified | {stage['candidate_pairs']} / {stage['verified_pairs']} | |")
    print(f"| rsyn dedup --mode near, end to end | {seconds:.2f}s | |")
    print("\nplanted pairs (source, edit) grouped together, by exact Jaccard:")
    print("| Jaccard | pairs | grouped | should be |\n|---|---|---|---|")
    bins = [(0.0, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.0001)]
    js = np.array([jaccard(sets[i], sets[len(texts) + k]) for k, (i, _) in enumerate(planted)])
    together = np.array([rep(i) == rep(len(texts) + k) for k, (i, _) in enumerate(planted)])
    for lo, hi in bins:
        sel = (js >= lo) & (js < hi)
        if sel.any():
            print(
                f"| [{lo:.2f}, {min(hi, 1):.2f}{']' if hi > 1 else ')'} | {sel.sum()} | {together[sel].mean():.3f} | "
                f"{'1.0' if lo >= THRESHOLD else '0 (unless linked through others)'} |"
            )


# --------------------------------------------------------------------------- speed vs datasketch


def speed_corpus(n: int, rng) -> list[str]:
    """The real captions, then variants of them up to n: each word replaced with probability 1/2 by a
    word drawn from the captions' own word stream (real lengths and word frequencies, few duplicates)."""
    texts = captions()
    stream = np.array([w for t in texts for w in t.split()], dtype=object)
    out = list(texts)
    while len(out) < n:
        words = np.array(texts[rng.integers(len(texts))].split(), dtype=object)
        swap = rng.random(len(words)) < 0.5
        words[swap] = stream[rng.integers(len(stream), size=int(swap.sum()))]
        out.append(" ".join(words))
    return out[:n]


def datasketch_bulk(tokens: list[list[bytes]]) -> tuple[float, float]:
    """(wall, CPU) seconds of datasketch's MinHash.bulk."""
    from datasketch import MinHash

    t0, c0 = time.perf_counter(), time.process_time()
    MinHash.bulk(tokens, num_perm=128)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_speed(tmp: Path, n: int, repeat: int, rng) -> None:
    corpus = speed_corpus(n, rng)
    src, out = tmp / "speed.jsonl.zst", tmp / "speed-out.jsonl.zst"
    write_records(src, corpus)
    tokens = [[" ".join(g).encode() for g in shingles(t)] for t in corpus]
    runs = {"datasketch": [], "near": [], "default": []}
    rss = {}
    for _ in range(repeat):
        runs["datasketch"].append(datasketch_bulk(tokens))
        for name, mode in (("near", "near"), ("default", "exact,near")):
            wall, cpu, peak = run_cli(["dedup", src, "--mode", mode, "-o", out, "-q"])
            runs[name].append((wall, cpu))
            rss[name] = max(rss.get(name, 0), peak)
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    ds_wall, ds_cpu = best["datasketch"]
    print(
        f"\n## speed: {n} sentences (real captions and word-swapped variants, mean "
        f"{np.mean([len(t.split()) for t in corpus]):.1f} words), best of {repeat}; CPU seconds are the fair "
        "number on a shared machine"
    )
    print("| what | wall s | CPU s | sentences/CPU-s | ratio to datasketch (CPU) | ratio (wall) | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| datasketch MinHash.bulk, 128 perm (hashing only, no I/O) | {ds_wall:.2f} | {ds_cpu:.2f} | "
        f"{n / ds_cpu:,.0f} | 1.00 | 1.00 | |"
    )
    for name, label in (
        ("near", "rsyn dedup --mode near, end to end"),
        ("default", "rsyn dedup (exact,near), end to end"),
    ):
        wall, cpu = best[name]
        print(
            f"| {label} | {wall:.2f} | {cpu:.2f} | {n / cpu:,.0f} | {ds_cpu / cpu:.2f} | {ds_wall / wall:.2f} | "
            f"{rss[name] / 1024:.0f} MiB |"
        )


# --------------------------------------------------------------------------- semantic


def synthetic_embeddings(path: Path, n: int, d: int, rng, chunk: int = 100_000):
    """Topic structure plus planted duplicates of known cosine; written as a float16 memmap.

    Returns (memmap, planted: dict kind -> (copy rows, source rows, cosine)).
    """
    n_topics = max(1, n // 200)
    centers = rng.normal(size=(n_topics, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype="<f2", shape=(n, d))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        x = 0.45 * centers[rng.integers(n_topics, size=hi - lo)] + 0.89 * rng.normal(size=(hi - lo, d)) / np.sqrt(d)
        out[lo:hi] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("<f2")
    # replace 9% of the rows by copies of earlier rows at a known cosine
    bands = {"perceptual": (0.955, 0.995), "semantic": (0.905, 0.945), "near miss": (0.80, 0.88)}
    copies = rng.choice(np.arange(n // 10, n), size=int(0.09 * n), replace=False)
    planted = {}
    for k, (name, (lo_c, hi_c)) in enumerate(bands.items()):
        rows = np.sort(copies[k::3])
        sources = rng.integers(0, n // 10, size=len(rows))
        cos = rng.uniform(lo_c, hi_c, size=len(rows)).astype(np.float32)
        u = out[sources].astype(np.float32)
        w = rng.normal(size=u.shape).astype(np.float32)
        w -= (w * u).sum(1, keepdims=True) * u
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        out[rows] = (cos[:, None] * u + np.sqrt(1 - cos[:, None] ** 2) * w).astype("<f2")
        planted[name] = (rows, sources, cos)
    out.flush()
    return np.load(path, mmap_mode="r"), planted


def semantic_groups(vectors, rows, threshold, cluster_size, probes=3, seed=0, device="cpu") -> dict:
    """dedup's semantic passes (train, assign, pairs, select) on rows of a float16 matrix, in this process:
    the matrix is written as the one scan part of a temporary work directory."""
    from rsyn.command import Run
    from rsyn.stages.dedup import DedupOptions, Work, assign_pass, group_pass, settle_pass, train_pass

    m = len(rows)
    with tempfile.TemporaryDirectory(prefix="bench-semantic-") as tmp:
        work = Work(tmp, durable=False)
        with work.part("scan", 0, 1).writing() as part:
            part.save("order", np.arange(m, dtype=np.int64))
            part.save("kind", np.ones(m, dtype=np.uint8))
            ids = [str(i).encode() for i in range(m)]
            part.save("id_bytes", np.frombuffer(b"".join(ids), dtype=np.uint8))
            part.save("id_end", np.cumsum([len(i) for i in ids], dtype=np.int64))
            part.save("emb-image", np.asarray(vectors[rows], dtype="<f2"))
            part.save("emb-image-rows", np.arange(m, dtype=np.int64))
            options = DedupOptions(
                modes=("semantic",),
                semantic_threshold=threshold,
                cluster_size=cluster_size,
                perceptual_threshold=max(threshold, 0.95),
                probes=probes,
            )
            part.finish(
                {
                    "shard": [0, 1],
                    "options": options.recorded(seed),
                    "files": ["bench"],
                    "records": m,
                    "texts": 0,
                    "images": m,
                    "images_with_content_hash": 0,
                    "embedding_model": {"image": "bench"},
                    "embedding_dim": {"image": int(vectors.shape[1])},
                }
            )
        with Run("bench", quiet=True, device=device) as run:
            train_pass(run, work)
            assign_pass(run, work, (0, 1))
            group_pass(run, work, "semantic", (0, 1))
            info = settle_pass(run, work, "semantic")
        dropped = np.zeros(m, dtype=bool)
        dropped[np.asarray(work.single("semantic/settled").load("drop-0-rows"))] = True
    return {
        "dropped": dropped,
        "clusters": info["image"]["clusters"],
        "largest_cluster": info["image"]["largest_cluster"],
    }


def bench_semantic(tmp: Path, n: int, subsample: int, rng) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    d, threshold, cluster_size = 512, 0.90, 1000
    t0 = time.perf_counter()
    vectors, planted = synthetic_embeddings(tmp / "emb.npy", n, d, rng)
    gen_s = time.perf_counter() - t0
    print(
        f"\n## semantic: {n:,} synthetic unit {d}-d embeddings (generated in {gen_s:.0f}s), threshold {threshold}, "
        f"--cluster-size {cluster_size}, CPU"
    )
    print(
        "| --probes | clusters (largest) | wall s | CPU s | vectors/CPU-s | dropped | planted perceptual dropped | "
        "planted semantic dropped | planted near misses dropped |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for probes in (1, 2, 3):
        t0, c0 = time.perf_counter(), time.process_time()
        result = semantic_groups(vectors, np.arange(n), threshold, cluster_size, probes=probes, seed=0, device="cpu")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        dropped = result["dropped"]
        share = {name: dropped[rows].mean() for name, (rows, _, _) in planted.items()}
        print(
            f"| {probes} | {result['clusters']} ({result['largest_cluster']}) | {seconds:.1f} | {cpu:.1f} | {n / cpu:,.0f} | "
            f"{dropped.sum():,} | {share['perceptual']:.3f} | {share['semantic']:.3f} | {share['near miss']:.3f} |"
        )

    # a subsample holding planted pairs: clustered against brute force all pairs (same keep-first rule)
    copies = np.concatenate([rows for rows, _, _ in planted.values()])
    sources = np.concatenate([src for _, src, _ in planted.values()])
    pick = rng.choice(len(copies), size=min(subsample // 4, len(copies)), replace=False)
    background = rng.choice(n, size=subsample, replace=False)
    sub = np.unique(np.concatenate([copies[pick], sources[pick], background]))[: subsample + subsample // 2]
    c0 = time.process_time()
    reference = semantic_groups(vectors, sub, threshold, len(sub), seed=0, device="cpu")  # one cluster: all pairs
    brute_cpu = time.process_time() - c0
    drop_bf = reference["dropped"]
    print(
        f"\nsubsample of {len(sub):,} (with planted pairs): brute force all pairs {brute_cpu:.1f} CPU s; brute force "
        f"on all {n:,} would take ~{brute_cpu * (n / len(sub)) ** 2:,.0f} CPU s (quadratic)"
    )
    print("| on the subsample | CPU s | dropped | recall vs brute force | precision |\n|---|---|---|---|---|")
    print(f"| brute force all pairs, keep-first (reference) | {brute_cpu:.2f} | {drop_bf.sum()} | 1.000 | 1.000 |")
    for size in (250, cluster_size):
        for probes in (1, 2, 3):
            c0 = time.process_time()
            r = semantic_groups(vectors, sub, threshold, size, probes=probes, seed=0, device="cpu")
            seconds = time.process_time() - c0
            drop = r["dropped"]
            both = (drop & drop_bf).sum()
            print(
                f"| --cluster-size {size} ({r['clusters']} clusters), --probes {probes} | {seconds:.2f} | {drop.sum()} "
                f"| {both / max(drop_bf.sum(), 1):.3f} | {both / max(drop.sum(), 1):.3f} |"
            )
    # what union-find grouping (the paper's) would do on the same threshold graph
    x = np.asarray(vectors[sub], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j = [], []
    for lo in range(0, len(sub), 2048):
        bi, bj = np.nonzero(x[lo : lo + 2048] @ x.T >= threshold)
        keep = bi + lo < bj
        i.append(bi[keep] + lo)
        j.append(bj[keep])
    i, j = np.concatenate(i), np.concatenate(j)
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(sub), len(sub))), directed=False)
    sizes = np.bincount(comp)
    print(
        f"| brute force all pairs, union-find groups (the paper's grouping) | | {len(sub) - len(sizes)} | "
        f"largest group {sizes.max()} | |"
    )


def bench_memory(tmp: Path, n: int, rng) -> None:
    """Peak RSS of `rsyn dedup` (exact,near) at two stream sizes: the slope is the memory per record."""
    corpus = speed_corpus(n, rng)
    rows = []
    for size in (n // 4, n):
        src = tmp / f"mem{size}.jsonl.zst"
        write_records(src, corpus[:size])
        wall, cpu, peak = run_cli(["dedup", src, "-o", tmp / "mem-out.jsonl.zst", "-q"])
        rows.append((size, wall, cpu, peak))
        src.unlink()
    (n1, _, _, p1), (n2, _, _, p2) = rows
    print("\n## memory: rsyn dedup (exact,near) on real-caption sentences")
    print("| sentences | wall s | CPU s | peak RSS |\n|---|---|---|---|")
    for size, wall, cpu, peak in rows:
        print(f"| {size:,} | {wall:.1f} | {cpu:.1f} | {peak / 1024:.0f} MiB |")
    print(
        f"\nslope: {(p2 - p1) / (n2 - n1) * 1e6 / 1024**2:.2f} GiB per million sentences "
        f"(plus ~100 MiB for the interpreter and libraries)"
    )


def bench_semantic_cli(tmp: Path, n: int, rng) -> None:
    """`rsyn dedup --mode exact,semantic` end to end on image records with inline 512-d embeddings."""
    from rsyn.records import encode_embeddings

    vectors, _ = synthetic_embeddings(tmp / "cli-emb.npy", n, 512, rng)
    src = tmp / "emb.jsonl.zst"
    with open(src, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
        for lo in range(0, n, 10_000):
            embs = encode_embeddings(np.asarray(vectors[lo : lo + 10_000], dtype=np.float32))
            for i, e in enumerate(embs, lo):
                out.write(
                    orjson.dumps(
                        {
                            "id": f"{i:020x}",
                            "kind": "image",
                            "doc": f"d{i // 20}",
                            "pos": i % 20,
                            "url": f"https://example.org/{i}.jpg",
                            "emb": e,
                            "emb_model": "synthetic-512",
                        }
                    )
                    + b"\n"
                )
    size = src.stat().st_size
    wall, cpu, peak = run_cli(
        ["dedup", src, "--mode", "exact,semantic", "--device", "cpu", "-o", tmp / "emb-out.jsonl.zst", "-q"]
    )
    print(f"\n## semantic, end to end: {n:,} image records with inline 512-d embeddings ({size / 2**20:.0f} MiB zstd)")
    print("| command | wall s | CPU s | records/CPU-s | peak RSS |\n|---|---|---|---|---|")
    print(
        f"| rsyn dedup --mode exact,semantic --device cpu | {wall:.1f} | {cpu:.1f} | {n / cpu:,.0f} | "
        f"{peak / 1024:.0f} MiB |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=200_000)
    ap.add_argument("--semantic-n", type=int, default=1_000_000)
    ap.add_argument("--subsample", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--memory-n", type=int, default=1_000_000)
    ap.add_argument("--semantic-cli-n", type=int, default=100_000)
    ap.add_argument("--only", default="near,speed,semantic,semantic-cli,memory")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    print(f"# dedup_quality  ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})")
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        tmp = Path(tmp)
        if "near" in parts:
            bench_near(tmp, np.random.default_rng(0))
        if "speed" in parts:
            bench_speed(tmp, args.sentences, args.repeat, np.random.default_rng(1))
        if "semantic" in parts:
            bench_semantic(tmp, args.semantic_n, args.subsample, np.random.default_rng(2))
        if "semantic-cli" in parts:
            bench_semantic_cli(tmp, args.semantic_cli_n, np.random.default_rng(3))
        if "memory" in parts:
            bench_memory(tmp, args.memory_n, np.random.default_rng(4))


if __name__ == "__main__":
    main()
