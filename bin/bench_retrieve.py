#!/usr/bin/env python
"""Benchmark of rsyn index + rsyn retrieve against brute-force faiss IndexFlatIP, in one run.

Generates clustered unit vectors the way CLIP text embeddings of web sentences
look: topics of Zipf-distributed sizes, each a few sub-topics, with per-cluster
noise; image queries drawn from the same topics with more noise (an image is
never as close to a sentence as two paraphrases are). Builds the index through
the same `build` that `rsyn index` runs (float16 vectors memory-mapped from
disk, as `rsyn index` spills them), searches through the same IndexDirectory
that `rsyn retrieve` uses, and prints:

  - k-means and index build time;
  - for each nprobe: recall@3 against exact search and queries/s of both;
  - peak RSS of the real `rsyn index` command (subprocess, JSONL input) per million vectors;
  - an estimate for the paper's scale (198M images x 0.84B sentences) on one GPU.

Full size (the issue's): bin/bench_retrieve.py --sentences 1000000 --queries 10000
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rsyn.stages.index import META, SENTENCES, build, default_clusters  # noqa: E402
from rsyn.stages.retrieve import IndexDirectory  # noqa: E402

MODEL = "synthetic-512"


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_data(n: int, n_queries: int, dim: int, topics: int, zipf: float, seed: int):
    """(sentences float16 (n, dim), queries float32) from Zipf-sized topics with sub-topics."""
    rng = np.random.default_rng(seed)
    # CLIP embeddings are anisotropic: everything shares a common direction
    common = unit(rng.normal(size=dim))
    topic_centers = unit(0.6 * common + unit(rng.normal(size=(topics, dim))))
    weights = 1.0 / np.arange(1, topics + 1) ** zipf
    weights /= weights.sum()
    subs_per_topic = 8
    sub_centers = unit(topic_centers[:, None, :] + 0.8 * unit(rng.normal(size=(topics, subs_per_topic, dim))))
    sub_centers = sub_centers.reshape(-1, dim).astype(np.float32)
    # noise per cluster: cosine to the sub-topic centre between about 0.65 and 0.85
    sigma = rng.uniform(0.6, 1.15, size=len(sub_centers)).astype(np.float32)

    def draw(count: int, extra_noise: float) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float16)
        for start in range(0, count, 100_000):
            m = min(100_000, count - start)
            topic = rng.choice(topics, size=m, p=weights)
            sub = topic * subs_per_topic + rng.integers(0, subs_per_topic, m)
            noise = rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
            x = sub_centers[sub] + (sigma[sub] * extra_noise)[:, None] * noise
            out[start:start + m] = unit(x)
        return out

    # an image sits farther from its topic than its sentences do (cosine to the centre about 0.45 to 0.65)
    return draw(n, 1.0), draw(n_queries, 1.7).astype(np.float32)


def write_sentences(path: Path, n: int) -> None:
    """The sentence table rsyn index writes (the benchmark's vectors have no real text)."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sentences(row INTEGER PRIMARY KEY, id TEXT NOT NULL, text TEXT NOT NULL, doc TEXT)")
    db.executemany("INSERT INTO sentences VALUES (?, ?, ?, NULL)",
                   ((i, f"s{i}", f"synthetic sentence {i}") for i in range(n)))
    db.commit()
    db.close()


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return hits / truth.size


def write_records(path: Path, vectors: np.ndarray, kind: str) -> None:
    from rsyn.records import encode_embeddings

    with open(path, "wb") as fh:
        for start in range(0, len(vectors), 50_000):
            embs = encode_embeddings(vectors[start:start + 50_000].astype(np.float32))
            if kind == "text":
                records = ({"id": f"s{start + i}", "kind": "text", "doc": f"d{(start + i) // 20}",
                            "text": f"synthetic sentence {start + i}", "emb": e, "emb_model": MODEL}
                           for i, e in enumerate(embs))
            else:
                records = ({"id": f"i{start + i}", "kind": "image", "url": f"http://example.com/{start + i}.jpg",
                            "emb": e, "emb_model": MODEL} for i, e in enumerate(embs))
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in records))


def timed_command(*args: str) -> tuple[int, float]:
    """Peak RSS (bytes, of this one child, by GNU time) and wall seconds of `rsyn ARGS`."""
    command = [sys.executable, "-m", "rsyn", *args, "-q", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *command], check=True, capture_output=True,
                          cwd=Path(__file__).resolve().parent.parent)
    return int(proc.stderr.decode().strip().splitlines()[-1]) * 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--topics", type=int, default=0, help="true topics (default: sentences / 1000)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the topic sizes")
    p.add_argument("--clusters", type=int, default=0, help="k-means clusters (default: rsyn's, sentences / 420)")
    p.add_argument("--nprobe", default="1,4,16,64")
    p.add_argument("--pq-bytes", type=int, default=0, help="build PQ lists of this many bytes (re-ranked) instead of flat")
    p.add_argument("--rerank", type=int, default=200, help="PQ candidates re-scored exactly (with --pq-bytes)")
    p.add_argument("--rss-sentences", type=int, default=100_000,
                   help="size of the end-to-end `rsyn index` run whose peak RSS is measured (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import faiss

    n, nq, dim = args.sentences, args.queries, args.dim
    if n == 0:
        end_to_end(args, dim)
        return
    topics = args.topics or max(10, n // 1000)
    print(f"# bench_retrieve: {n:,} sentences x {dim}-d, {nq:,} queries, {topics:,} Zipf({args.zipf}) topics, "
          f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores", flush=True)

    t = time.perf_counter()
    sentences16, queries = make_data(n, nq, dim, topics, args.zipf, args.seed)
    print(f"# data generated in {time.perf_counter() - t:.1f}s", flush=True)

    with tempfile.TemporaryDirectory(prefix="rsyn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        spill = np.lib.format.open_memmap(tmp / "spill.npy", mode="w+", dtype="<f2", shape=sentences16.shape)
        spill[:] = sentences16
        spill.flush()
        vectors = np.load(tmp / "spill.npy", mmap_mode="r")  # what rsyn index builds from: float16 on disk

        k = args.clusters or default_clusters(n)
        (tmp / "index").mkdir()
        t = time.perf_counter()
        meta, timings = build(vectors, tmp / "index", model=MODEL, seed=args.seed, device="cpu",
                              note=lambda m: print(f"# {m}", flush=True), clusters=k, budget=1 << 40,
                              index_type="pq" if args.pq_bytes else "flat", pq_bytes=args.pq_bytes or None)
        build_seconds = time.perf_counter() - t
        write_sentences(tmp / "index" / SENTENCES, n)
        meta["files"][SENTENCES] = (tmp / "index" / SENTENCES).stat().st_size
        (tmp / "index" / META).write_bytes(orjson.dumps(meta))
        index = IndexDirectory(tmp / "index")
        del vectors, spill

        # exact search: brute-force IndexFlatIP over the same float32 vectors
        sentences = unit(sentences16.astype(np.float32))
        del sentences16
        flat = faiss.IndexFlatIP(dim)
        flat.add(sentences)
        del sentences
        t = time.perf_counter()
        _, truth = flat.search(queries, 3)
        brute_seconds = time.perf_counter() - t
        brute_qps = nq / brute_seconds
        del flat

        rows = []
        for nprobe in [int(x) for x in args.nprobe.split(",")]:
            t = time.perf_counter()
            _, found = index.search(queries, 3, nprobe=nprobe, rerank=args.rerank)
            seconds = time.perf_counter() - t
            rows.append((nprobe, recall_at(found, truth), nq / seconds, seconds))

        # the coarse step alone (queries x centroids), to split the cost for the estimate below
        centroids = np.load(tmp / "index" / "centroids.npy")
        coarse = faiss.IndexFlatIP(dim)
        coarse.add(centroids)
        t = time.perf_counter()
        coarse.search(queries, 1)
        coarse_seconds = time.perf_counter() - t
        index.close()

        print()
        print(f"index {meta['index_type']}" + (f" ({args.pq_bytes}-byte codes, {args.rerank} re-ranked)"
                                               if args.pq_bytes else ""))
        print(f"sentences {n:,}  dim {dim}  clusters {meta['clusters']:,} (median list {meta['cluster_sizes']['median']:.0f}, "
              f"max {meta['cluster_sizes']['max']:,})  queries {nq:,}")
        print(f"k-means {timings['kmeans_seconds']:.1f}s ({meta['parameters']['training_points']:,} training points, "
              f"{meta['parameters']['niter']} iterations)   add to IVF {timings['add_seconds']:.1f}s   "
              f"index build total {build_seconds:.1f}s")
        print(f"brute force (faiss IndexFlatIP): {brute_seconds:.1f}s, {brute_qps:,.0f} queries/s")
        print()
        print("| nprobe | recall@3 | IVF queries/s | brute-force queries/s | speed-up |")
        print("|-------:|---------:|--------------:|----------------------:|---------:|")
        for nprobe, recall, qps, _ in rows:
            print(f"| {nprobe} | {recall:.4f} | {qps:,.0f} | {brute_qps:,.0f} | {qps / brute_qps:.1f}x |")
        reaching = [r for r in rows if r[1] >= 0.95]
        print()
        print(f"smallest nprobe with recall@3 >= 0.95: {reaching[0][0] if reaching else 'none measured'}")

        # ------------------------------------------------------------------ scale estimate
        # per query: a coarse step over all centroids (a GEMM), a fine step over nprobe lists (memory-bound)
        coarse_per_centroid = coarse_seconds / nq / len(centroids)
        images, n_paper, k_paper = 198e6, 0.84e9, 2e6
        list_len = n_paper / k_paper
        print()
        print(f"Paper scale (198M images x 0.84B sentences, 2M clusters of {list_len:.0f}), from the costs measured here:")
        print(f"  coarse step on this CPU: {coarse_per_centroid * 1e9:.2f} ns per query-centroid pair "
              f"-> {images * k_paper * coarse_per_centroid / 3600:,.0f} CPU-hours")
        for nprobe, _, _, seconds in rows:
            scanned = min(nprobe, meta["clusters"]) * n / meta["clusters"]
            fine_per_vector = max(seconds - coarse_seconds, 0) / nq / scanned
            print(f"  fine step at nprobe {nprobe}: {fine_per_vector * 1e9:.2f} ns per scanned vector "
                  f"-> {images * nprobe * list_len * fine_per_vector / 3600:,.0f} CPU-hours")
        brute_per_pair = brute_seconds / nq / n
        print(f"  brute force on this CPU: {brute_per_pair * 1e9:.3f} ns per query-sentence pair "
              f"-> {images * n_paper * brute_per_pair / 3600:,.0f} CPU-hours")
        # one GPU: the same operations at an A100's rates (assumed, not measured: no GPU here)
        tflops, bandwidth = 15e12, 1.5e12  # sustained fp32 GEMM, HBM bytes/s
        coarse_h = 2 * images * k_paper * dim / tflops / 3600
        fine_h = images * list_len * dim * 4 / bandwidth / 3600
        brute_h = 2 * images * n_paper * dim / tflops / 3600
        print(f"  one A100 (assumed {tflops / 1e12:.0f} TFLOP/s fp32 GEMM, {bandwidth / 1e12:.1f} TB/s): coarse "
              f"{coarse_h:.1f} h + fine {fine_h:.2f} h per unit of nprobe; brute force {brute_h:,.0f} h. "
              f"Paper: about 40 GPU-hours (8 A100s) vs more than 10,000 for brute force.")

    if args.rss_sentences:
        end_to_end(args, dim)


def end_to_end(args, dim: int) -> None:
    """The real commands on JSONL records at two sizes: the RSS slope is the memory per vector."""
    print()
    peaks = []
    for size in (args.rss_sentences // 4, args.rss_sentences):
        with tempfile.TemporaryDirectory(prefix="rsyn-bench-e2e-") as tmp_name:
            tmp = Path(tmp_name)
            sentences, queries = make_data(size, 10_000, dim, max(10, size // 1000), args.zipf, args.seed)
            write_records(tmp / "sentences.jsonl", sentences, "text")
            write_records(tmp / "images.jsonl", queries, "image")
            peak, seconds = timed_command("index", str(tmp / "sentences.jsonl"), "-o", str(tmp / "index"))
            peaks.append(peak)
            print(f"rsyn index on {size:,} JSONL records ({dim}-d): {seconds:.1f}s ({size / seconds:,.0f} records/s), "
                  f"peak RSS {peak / 2**20:,.0f} MiB")
            peak, seconds = timed_command("retrieve", "--index", str(tmp / "index"), str(tmp / "images.jsonl"),
                                          "-o", str(tmp / "out.jsonl.zst"))
            print(f"rsyn retrieve of {len(queries):,} image records (nprobe default): {seconds:.1f}s "
                  f"({len(queries) / seconds:,.0f} records/s), peak RSS {peak / 2**20:,.0f} MiB")
    slope = (peaks[1] - peaks[0]) / (args.rss_sentences * 3 / 4)
    print(f"rsyn index peak RSS per million {dim}-d vectors: {slope * 1e6 / 2**30:.2f} GiB "
          f"(+ {(peaks[0] - slope * args.rss_sentences / 4) / 2**20:,.0f} MiB fixed); the float32 IVF lists alone "
          f"are {(4 * dim + 8) / 2**30 * 1e6:.2f} GiB per million")


if __name__ == "__main__":
    main()
