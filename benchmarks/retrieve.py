#!/usr/bin/env python
"""Benchmark of rsyn index + rsyn retrieve against brute-force faiss IndexFlatIP, in one run.

Generates clustered unit vectors the way CLIP text embeddings of web sentences
look: topics of Zipf-distributed sizes, each a few sub-topics, with per-cluster
noise; image queries drawn from the same topics with more noise (an image is
never as close to a sentence as two paraphrases are). Builds the index through
the same passes that `rsyn index` runs (a collect part written from the arrays,
then train, add, merge), searches through the same IndexDirectory that
`rsyn retrieve` uses, and prints:

  - k-means and index build time;
  - for each nprobe: recall@3 against exact search and queries/s of both, in-process;
  - with --commands: the same as whole processes, `rsyn retrieve` against a brute-force command
    (same JSONL in and out, faiss IndexFlatIP over the float16 vectors loaded from disk);
  - peak RSS of the real `rsyn index` command (subprocess, JSONL input) per million vectors;
  - an estimate for the paper's scale (198M images x 0.84B sentences) on one GPU.

Full size (the issue's): benchmarks/retrieve.py --sentences 1000000 --queries 2000 --dim 1024 --commands

--data-dir DIR keeps the generated data and each built index (by its options) in DIR and reuses them in
later runs: at 1M x 1024 the data is 2 GiB and the index build takes minutes. Delete DIR after changing
the generator or the index code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rsyn.stages.index import (  # noqa: E402
    Budget,
    PartWriter,
    add_parts,
    default_clusters,
    merge_index,
    open_parts,
    row_chunks,
    train_index,
)
from rsyn.stages.retrieve import IndexDirectory  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure  # noqa: E402

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
            out[start : start + m] = unit(x)
        return out

    # an image sits farther from its topic than its sentences do (cosine to the centre about 0.45 to 0.65)
    return draw(n, 1.0), draw(n_queries, 1.7).astype(np.float32)


def build_index(
    vectors16: np.ndarray, out: Path, *, clusters: int, index_type: str, pq_bytes: int, seed: int
) -> tuple[dict, float]:
    """The index of `vectors16` through rsyn index's passes (one part written from the array); meta, seconds."""
    work = out.parent / f"{out.name}.passes"
    for name in ("collect", "train", "add"):
        (work / name).mkdir(parents=True)
    out.mkdir()
    writer = PartWriter(work / "collect")
    for start in range(0, len(vectors16), 100_000):
        chunk = vectors16[start : start + 100_000]
        rows = [(f"s{start + i}", f"synthetic sentence {start + i}", None) for i in range(len(chunk))]
        writer.add(chunk, np.arange(start, start + len(chunk)), rows)
    writer.finish(model=MODEL, inputs=["synthetic"], shard=None, ignored={}, errors={})
    parts = open_parts([work / "collect"])
    t = time.perf_counter()
    train_index(
        parts,
        work / "train",
        clusters=clusters,
        budget=Budget(1 << 40, "benchmark"),
        index_type="pq" if pq_bytes else index_type,
        pq_bytes=pq_bytes or None,
        points_per_cluster=64,
        niter=20,
        seed=seed,
        device="cpu",
        note=lambda m: print(f"# {m}", flush=True),
    )
    add_parts(parts, range(1), work / "train", work / "add", device="cpu")
    meta = merge_index(parts, work / "train", [work / "add"], out, on_disk=False, note=print)
    seconds = time.perf_counter() - t
    shutil.rmtree(work)
    return meta, seconds


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return hits / truth.size


def write_records(path: Path, vectors: np.ndarray, kind: str) -> None:
    from rsyn.records import encode_embeddings

    with open(path, "wb") as fh:
        for start in range(0, len(vectors), 50_000):
            embs = encode_embeddings(vectors[start : start + 50_000].astype(np.float32))
            if kind == "text":
                records = (
                    {
                        "id": f"s{start + i}",
                        "kind": "text",
                        "doc": f"d{(start + i) // 20}",
                        "text": f"synthetic sentence {start + i}",
                        "emb": e,
                        "emb_model": MODEL,
                    }
                    for i, e in enumerate(embs)
                )
            else:
                records = (
                    {
                        "id": f"i{start + i}",
                        "kind": "image",
                        "url": f"http://example.com/{start + i}.jpg",
                        "emb": e,
                        "emb_model": MODEL,
                    }
                    for i, e in enumerate(embs)
                )
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in records))


def timed_command(*args: str) -> tuple[int, float]:
    """Peak RSS (bytes, of this one child, by GNU time) and wall seconds of `rsyn ARGS`."""
    command = [sys.executable, "-m", "rsyn", *args, "-q", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *command],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return int(proc.stderr.decode().strip().splitlines()[-1]) * 1024, time.perf_counter() - start


def brute_force_command(directory: Path) -> None:
    """The reference as a whole command: the same JSONL in and out as `rsyn retrieve`, exact top 3 by
    faiss IndexFlatIP over the float16 vectors loaded from disk, texts from the same SQLite table."""
    import sqlite3

    import faiss

    from rsyn.records import decode_embeddings
    from rsyn.stream import RecordWriter, read_records

    vectors = np.load(directory / "vectors.npy")
    flat = faiss.IndexFlatIP(vectors.shape[1])
    for start in range(0, len(vectors), 100_000):
        flat.add(unit(vectors[start : start + 100_000].astype(np.float32)))
    db = sqlite3.connect(directory / "index" / "sentences.sqlite")
    out = RecordWriter(str(directory / "brute.jsonl.zst"))
    batch: list[dict] = []

    def flush() -> None:
        queries = unit(decode_embeddings([r["emb"] for r in batch]))
        scores, rows = flat.search(queries, 3)
        for record, q_rows, q_scores in zip(batch, rows.tolist(), scores.tolist()):
            found = dict(
                (
                    (r, (i, t))
                    for r, i, t in db.execute(
                        f"SELECT row, id, text FROM sentences WHERE row IN ({','.join('?' * len(q_rows))})", q_rows
                    )
                )
            )
            record["texts"] = [
                {"id": found[r][0], "text": found[r][1], "score": round(s, 5)} for r, s in zip(q_rows, q_scores)
            ]
            out.write(record)
        batch.clear()

    for record in read_records([str(directory / "images.jsonl")]):
        batch.append(record)
        if len(batch) >= 4096:
            flush()
    if batch:
        flush()
    out.close()


def whole_commands(
    tmp: Path,
    vectors: Path,
    index_dir: Path,
    queries: np.ndarray,
    truth: np.ndarray,
    nprobes: list[int],
    rerank: int | None,
    repeat: int,
) -> None:
    """`rsyn retrieve` and the brute-force command as whole processes (start-up, index open, JSONL in and out),
    interleaved `repeat` times (median seconds of each), so that a change of the machine's load hits both."""
    from rsyn.stream import read_records

    (tmp / "vectors.npy").symlink_to(vectors.resolve())
    (tmp / "index").symlink_to(index_dir.resolve())
    write_records(tmp / "images.jsonl", queries, "image")
    here = Path(__file__).resolve()

    os.chdir(here.parent.parent)  # `python -m rsyn` imports this checkout

    def brute_command() -> tuple[float, float]:
        wall, cpu, _ = measure([sys.executable, str(here), "--brute-force-command", str(tmp)])
        return wall, cpu

    def retrieve_command(nprobe: int, verify: str) -> tuple[float, float]:
        extra = ["--rerank", str(rerank)] if rerank else []
        wall, cpu, _ = measure(
            [sys.executable, "-m", "rsyn", "retrieve", "--index", str(tmp / "index"), str(tmp / "images.jsonl"),
             "-o", str(tmp / "out.jsonl.zst"), "--nprobe", str(nprobe), verify, *extra, "-q", "--device", "cpu"]
        )  # fmt: skip
        return wall, cpu

    def found_rows(path: Path) -> np.ndarray:
        return np.array([[int(t["id"][1:]) for t in r["texts"]] for r in read_records([str(path)])])

    brute_times: list[tuple[float, float]] = []
    times: dict[tuple[int, str], list[tuple[float, float]]] = {}
    recalls: dict[int, float] = {}
    for _ in range(repeat):
        brute_times.append(brute_command())
        for nprobe in nprobes:
            for verify in ("--verify", "--no-verify"):
                times.setdefault((nprobe, verify), []).append(retrieve_command(nprobe, verify))
            recalls[nprobe] = recall_at(found_rows(tmp / "out.jsonl.zst"), truth)
    brute, brute_cpu = np.median(brute_times, axis=0)
    print()
    print(
        f"whole commands on {len(queries):,} image records (JSONL in, zstd JSONL out), median of {repeat} "
        f"interleaved runs, wall and CPU (user + system) seconds; load average before: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"brute-force command (IndexFlatIP over the float16 vectors loaded from disk): {brute:.1f}s wall "
        f"(runs: {', '.join(f'{t[0]:.1f}' for t in brute_times)}), {brute_cpu:.1f}s CPU, "
        f"recall@3 {recall_at(found_rows(tmp / 'brute.jsonl.zst'), truth):.4f}"
    )
    print()
    print(
        "| nprobe | recall@3 | rsyn retrieve s | --no-verify s | brute-force command s | speed-up (wall) "
        "| rsyn retrieve CPU s | brute-force CPU s | speed-up (CPU) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for nprobe in nprobes:
        verified, verified_cpu = np.median(times[(nprobe, "--verify")], axis=0)
        unverified = float(np.median([t[0] for t in times[(nprobe, "--no-verify")]]))
        print(
            f"| {nprobe} | {recalls[nprobe]:.4f} | {verified:.1f} | {unverified:.1f} | {brute:.1f} "
            f"| {brute / verified:.1f}x | {verified_cpu:.1f} | {brute_cpu:.1f} | {brute_cpu / verified_cpu:.1f}x |"
        )


def cached_data(store: Path | None, n: int, nq: int, dim: int, topics: int, zipf: float, seed: int):
    """(float16 sentences, float32 queries, path of the sentences' .npy), generated or read from `store`."""
    if store is not None and (store / "queries.npy").exists():
        print(f"# data reused from {store}", flush=True)
        return np.load(store / "vectors.npy", mmap_mode="r"), np.load(store / "queries.npy"), store / "vectors.npy"
    t = time.perf_counter()
    sentences16, queries = make_data(n, nq, dim, topics, zipf, seed)
    print(f"# data generated in {time.perf_counter() - t:.1f}s", flush=True)
    np.save(store / "vectors.npy", sentences16)
    np.save(store / "queries.npy", queries)  # last: it marks the data complete
    return sentences16, queries, store / "vectors.npy"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--topics", type=int, default=0, help="true topics (default: sentences / 1000)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the topic sizes")
    p.add_argument("--clusters", type=int, default=0, help="k-means clusters (default: rsyn's, sentences / 420)")
    p.add_argument("--nprobe", default="1,4,16,64")
    p.add_argument(
        "--index-type", default="auto", choices=["auto", "flat", "pq", "sq8"], help="rsyn index --index-type"
    )
    p.add_argument(
        "--pq-bytes", type=int, default=0, help="build PQ lists of this many bytes (re-ranked) instead of flat"
    )
    p.add_argument("--rerank", type=int, default=None, help="rsyn retrieve --rerank (default: rsyn's)")
    p.add_argument("--data-dir", help="keep the generated data and built indexes here and reuse them (see above)")
    p.add_argument("--repeat", type=int, default=1, help="with --commands: interleaved runs of each command (median)")
    p.add_argument(
        "--rss-sentences",
        type=int,
        default=100_000,
        help="size of the end-to-end `rsyn index` run whose peak RSS is measured (0: skip)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--commands",
        action="store_true",
        help="also time whole `rsyn retrieve` processes against a brute-force command",
    )
    p.add_argument("--brute-force-command", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.brute_force_command:
        brute_force_command(Path(args.brute_force_command))
        return

    import faiss

    n, nq, dim = args.sentences, args.queries, args.dim
    if n == 0:
        end_to_end(args, dim)
        return
    topics = args.topics or max(10, n // 1000)
    print(
        f"# bench_retrieve: {n:,} sentences x {dim}-d, {nq:,} queries, {topics:,} Zipf({args.zipf}) topics, "
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} cores",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="rsyn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp
        if args.data_dir:
            store = Path(args.data_dir) / f"n{n}-q{nq}-d{dim}-t{topics}-z{args.zipf}-s{args.seed}"
            store.mkdir(parents=True, exist_ok=True)
        sentences16, queries, vectors_file = cached_data(store, n, nq, dim, topics, args.zipf, args.seed)
        k = args.clusters or default_clusters(n)
        index_dir = store / f"index-{args.index_type}-pq{args.pq_bytes}-c{k}-s{args.seed}"
        build_seconds = None
        if (index_dir / "meta.json").exists():
            meta = orjson.loads((index_dir / "meta.json").read_bytes())
            print(f"# index reused from {index_dir}", flush=True)
        else:
            for stale in (index_dir, index_dir.parent / f"{index_dir.name}.passes"):
                shutil.rmtree(stale, ignore_errors=True)
            meta, build_seconds = build_index(
                sentences16,
                index_dir,
                clusters=k,
                index_type=args.index_type,
                pq_bytes=args.pq_bytes,
                seed=args.seed,
            )
        index = IndexDirectory(index_dir)

        # exact search: brute-force IndexFlatIP over the same float32 vectors (its answers kept in --data-dir)
        brute_seconds = None
        if (store / "truth.npy").exists():
            truth = np.load(store / "truth.npy")
            print("# exact answers reused: the in-process brute force is not timed in this run", flush=True)
        else:
            flat = faiss.IndexFlatIP(dim)
            for _, chunk in row_chunks(sentences16, 100_000):
                flat.add(unit(chunk))
            t = time.perf_counter()
            _, truth = flat.search(queries, 3)
            brute_seconds = time.perf_counter() - t
            del flat
            np.save(store / "truth.npy", truth)
        del sentences16

        rows = []
        for nprobe in [int(x) for x in args.nprobe.split(",")]:
            t = time.perf_counter()
            _, found = index.search(queries, 3, nprobe=nprobe, rerank=args.rerank)
            seconds = time.perf_counter() - t
            rows.append((nprobe, recall_at(found, truth), nq / seconds, seconds))

        # the coarse step alone (queries x centroids), to split the cost for the estimate below
        centroids = np.load(index_dir / "centroids.npy")
        coarse = faiss.IndexFlatIP(dim)
        coarse.add(centroids)
        t = time.perf_counter()
        coarse.search(queries, 1)
        coarse_seconds = time.perf_counter() - t
        index.close()
        if args.commands:
            whole_commands(
                tmp,
                vectors_file,
                index_dir,
                queries,
                truth,
                [int(x) for x in args.nprobe.split(",")],
                args.rerank,
                args.repeat,
            )

        print()
        print(
            f"index {meta['index_type']}"
            + (f" ({args.pq_bytes}-byte codes, {args.rerank} re-ranked)" if args.pq_bytes else "")
        )
        print(
            f"sentences {n:,}  dim {dim}  clusters {meta['clusters']:,} (median list {meta['cluster_sizes']['median']:.0f}, "
            f"max {meta['cluster_sizes']['max']:,})  queries {nq:,}"
        )
        if build_seconds is not None:
            timings = meta["seconds"]
            print(
                f"k-means {timings['kmeans_seconds']:.1f}s ({meta['parameters']['training_points']:,} training "
                f"points, {meta['parameters']['niter']} iterations)   merge {timings['lists_seconds']:.1f}s   "
                f"index build total {build_seconds:.1f}s"
            )
        brute_qps = nq / brute_seconds if brute_seconds else float("nan")
        print(f"brute force (faiss IndexFlatIP): {brute_seconds or float('nan'):.1f}s, {brute_qps:,.0f} queries/s")
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
        print(
            f"Paper scale (198M images x 0.84B sentences, 2M clusters of {list_len:.0f}), from the costs measured here:"
        )
        print(
            f"  coarse step on this CPU: {coarse_per_centroid * 1e9:.2f} ns per query-centroid pair "
            f"-> {images * k_paper * coarse_per_centroid / 3600:,.0f} CPU-hours"
        )
        for nprobe, _, _, seconds in rows:
            scanned = min(nprobe, meta["clusters"]) * n / meta["clusters"]
            fine_per_vector = max(seconds - coarse_seconds, 0) / nq / scanned
            print(
                f"  fine step at nprobe {nprobe}: {fine_per_vector * 1e9:.2f} ns per scanned vector "
                f"-> {images * nprobe * list_len * fine_per_vector / 3600:,.0f} CPU-hours"
            )
        brute_per_pair = (brute_seconds or float("nan")) / nq / n
        print(
            f"  brute force on this CPU: {brute_per_pair * 1e9:.3f} ns per query-sentence pair "
            f"-> {images * n_paper * brute_per_pair / 3600:,.0f} CPU-hours"
        )
        # one GPU: the same operations at an A100's rates (assumed, not measured: no GPU here)
        tflops, bandwidth = 15e12, 1.5e12  # sustained fp32 GEMM, HBM bytes/s
        coarse_h = 2 * images * k_paper * dim / tflops / 3600
        fine_h = images * list_len * dim * 4 / bandwidth / 3600
        brute_h = 2 * images * n_paper * dim / tflops / 3600
        print(
            f"  one A100 (assumed {tflops / 1e12:.0f} TFLOP/s fp32 GEMM, {bandwidth / 1e12:.1f} TB/s): coarse "
            f"{coarse_h:.1f} h + fine {fine_h:.2f} h per unit of nprobe; brute force {brute_h:,.0f} h. "
            f"Paper: about 40 GPU-hours (8 A100s) vs more than 10,000 for brute force."
        )

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
            print(
                f"rsyn index on {size:,} JSONL records ({dim}-d): {seconds:.1f}s ({size / seconds:,.0f} records/s), "
                f"peak RSS {peak / 2**20:,.0f} MiB"
            )
            peak, seconds = timed_command(
                "retrieve", "--index", str(tmp / "index"), str(tmp / "images.jsonl"), "-o", str(tmp / "out.jsonl.zst")
            )
            print(
                f"rsyn retrieve of {len(queries):,} image records (nprobe default): {seconds:.1f}s "
                f"({len(queries) / seconds:,.0f} records/s), peak RSS {peak / 2**20:,.0f} MiB"
            )
    slope = (peaks[1] - peaks[0]) / (args.rss_sentences * 3 / 4)
    print(
        f"rsyn index peak RSS per million {dim}-d vectors: {slope * 1e6 / 2**30:.2f} GiB "
        f"(+ {(peaks[0] - slope * args.rss_sentences / 4) / 2**20:,.0f} MiB fixed); the float32 IVF lists alone "
        f"are {(4 * dim + 8) / 2**30 * 1e6:.2f} GiB per million"
    )


if __name__ == "__main__":
    main()
