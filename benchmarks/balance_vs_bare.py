#!/usr/bin/env python
"""Time and peak memory of `rsyn balance` and rows/s of `rsyn pack`, each against a bare in-memory loop.

    .venv/bin/python benchmarks/balance_vs_bare.py [--records 1000000] [--dim 512] [--clusters 1000]

Input: synthetic image records with --dim-dimensional `emb` and `syn_emb`
(float16 base64, as `rsyn embed` writes them) drawn around Zipf-sized true
clusters, so the balance has real imbalance to remove, and sims spread
around 0.56. Measured in the same run:

- `rsyn cat`: one read-parse-write pass over the same file (the floor of any streaming stage);
- bare balance: the notebook version: every line and every image embedding (float32) in memory, the same
  sims and window, the same faiss k-means (same k, same training-set size), numpy cap, orjson+zstd output;
- `rsyn balance`: two passes through a disk spill;
- bare pack / `rsyn pack`: the kept records to the five-column parquet (pyarrow) in 100k-row shards.

Peak memory is each child process's max RSS (os.wait4). Ratio = bare seconds / rsyn seconds (> 1: rsyn faster).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import harness  # benchmarks/harness.py

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BARE_BALANCE = r"""
import sys, numpy as np, orjson, zstandard, io
sys.path.insert(0, sys.argv[5])
from rsyn.records import decode_embeddings
from rsyn.vectors import train_kmeans, nearest_centroid
src, dst, k, t = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sample_size = int(sys.argv[6])
lines = list(io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(src, "rb"),
             read_across_frames=True), 1 << 20))
embs, sims = [], []
for start in range(0, len(lines), 10000):
    recs = [orjson.loads(l) for l in lines[start:start + 10000]]
    e = decode_embeddings([r["emb"] for r in recs])
    y = decode_embeddings([r["syn_emb"] for r in recs])
    embs.append(e)
    sims.append((e * y).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(y, axis=1))
emb, sim = np.concatenate(embs), np.round(np.concatenate(sims).astype(np.float64), 4)
del embs
lo, hi = np.quantile(sim, [0.075, 0.925], method="inverted_cdf")
rows = np.flatnonzero((sim >= lo) & (sim <= hi))
rng = np.random.default_rng(0)
train = emb[rng.choice(rows, min(sample_size, len(rows)), replace=False)]
cent = train_kmeans(train, k, seed=0, niter=20, max_points_per_centroid=max(256, len(train) // k + 1))
labels, _ = nearest_centroid(emb[rows], cent)
order = np.lexsort((rng.random(len(rows)), labels))
first = np.concatenate(([0], np.cumsum(np.bincount(labels, minlength=k))[:-1]))
rank = np.empty(len(rows), np.int64); rank[order] = np.arange(len(rows)) - first[labels[order]]
keep = rows[rank < t]
with open(dst, "wb") as f:
    out = zstandard.ZstdCompressor(level=3).stream_writer(f)
    for i, lab in zip(keep.tolist(), labels[rank < t].tolist()):
        r = orjson.loads(lines[i]); r["sim"] = float(sim[i]); r["cluster"] = lab
        out.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
    out.flush(zstandard.FLUSH_FRAME)
"""

BARE_PACK = r"""
import sys, os, io, orjson, zstandard, pyarrow as pa, pyarrow.parquet as pq
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
cols = {c: [] for c in ["raw_image_url", "text1", "text2", "text3", "syn_text"]}
n = shard = 0
def flush():
    global shard
    pq.write_table(pa.table({c: pa.array(v, pa.string()) for c, v in cols.items()}), f"{dst}/{shard:05d}.parquet")
    shard += 1
    for v in cols.values(): v.clear()
for line in io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(src, "rb"), read_across_frames=True), 1 << 20):
    r = orjson.loads(line); texts = [t["text"] for t in r["texts"][:3]] + [None] * 3
    cols["raw_image_url"].append(r["url"]); cols["syn_text"].append(r.get("syn_text"))
    for j in range(3): cols[f"text{j + 1}"].append(texts[j])
    n += 1
    if n % 100000 == 0: flush()
if cols["raw_image_url"]: flush()
"""

WORDS = (
    "a dog runs across the green field while two children play with red kites near the old river under a "
    "bright summer sky and people walk by"
).split()


def make_input(path: str, n: int, dim: int, true_clusters: int, seed: int = 0) -> int:
    """Write n records; seed S > 0 draws other records (ids from S * n on) around the same true clusters."""
    import numpy as np
    import orjson
    import zstandard

    sys.path.insert(0, HERE)
    from rsyn.records import encode_embeddings

    centres = np.random.default_rng(0).standard_normal((true_clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, true_clusters + 1) ** 1.1  # Zipf: a few huge clusters, a long tail
    weights /= weights.sum()
    raw = 0
    batch = 20_000
    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            which = rng.choice(true_clusters, m, p=weights)
            image = centres[which] + 0.6 * rng.standard_normal((m, dim)).astype(np.float32)
            image /= np.linalg.norm(image, axis=1, keepdims=True)
            other = rng.standard_normal((m, dim)).astype(np.float32)
            other -= (other * image).sum(1, keepdims=True) * image
            other /= np.linalg.norm(other, axis=1, keepdims=True)
            s = np.clip(rng.normal(0.56, 0.05, (m, 1)), -1, 1).astype(np.float32)
            syn = s * image + np.sqrt(1 - s * s) * other
            embs, syns = encode_embeddings(image), encode_embeddings(syn)
            words = rng.integers(0, len(WORDS), (m, 3, 14))
            lines = []
            for j in range(m):
                i = seed * n + start + j
                texts = [
                    {"id": f"{i:012x}{t}", "text": " ".join(WORDS[w] for w in words[j, t]), "score": 0.3 - 0.01 * t}
                    for t in range(3)
                ]
                rec = {
                    "id": f"{i:020x}",
                    "kind": "image",
                    "doc": f"https://example.org/p/{i // 5}",
                    "url": f"https://img.example.org/{i}.jpg",
                    "emb": embs[j],
                    "emb_model": "ViT-B-16/bench",
                    "syn_emb": syns[j],
                    "texts": texts,
                    "caption": "a dog in a field",
                    "tags": ["dog", "field"],
                    "syn_text": "a dog runs across a green field while children fly red kites by the river",
                }
                lines.append(orjson.dumps(rec) + b"\n")
            data = b"".join(lines)
            raw += len(data)
            out.write(data)
    return raw


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GiB) of one child process."""
    seconds, _cpu, rss_mib = harness.measure(cmd)
    return seconds, rss_mib / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--per-cluster", type=int, default=300)
    ap.add_argument("--kmeans-sample", type=int, default=100_000)
    ap.add_argument("--true-clusters", type=int, default=2000)
    ap.add_argument("--tmp", default=None, help="scratch directory (needs ~3 KB per record)")
    ap.add_argument("--make-input", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_input:
        print(make_input(args.make_input, args.records, args.dim, args.true_clusters, seed=args.seed))
        return
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-balance-") as tmp:
        src = os.path.join(tmp, "in.jsonl.zst")
        t0 = time.perf_counter()
        # made in a child: peak RSS survives exec, so this process must stay small for the children's numbers
        made = subprocess.run(
            [
                py,
                __file__,
                "--make-input",
                src,
                "--records",
                str(args.records),
                "--dim",
                str(args.dim),
                "--true-clusters",
                str(args.true_clusters),
            ],
            check=True,
            capture_output=True,
        )
        raw = int(made.stdout)
        print(
            f"input: {args.records:,} image records, {args.dim}-d emb + syn_emb, {raw / args.records:,.0f} bytes "
            f"each, {raw / 1e9:.2f} GB JSONL, {os.path.getsize(src) / 1e9:.2f} GB zstd "
            f"(made in {time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        k, t = str(args.clusters), str(args.per_cluster)
        out, bare_out = os.path.join(tmp, "out.jsonl.zst"), os.path.join(tmp, "bare.jsonl.zst")
        stats = os.path.join(tmp, "stats.json")
        results = {}
        results["rsyn cat (one pass)"] = measure(
            [py, "-m", "rsyn", "cat", src, "-o", os.path.join(tmp, "cat.zst"), "--quiet"]
        )
        os.unlink(os.path.join(tmp, "cat.zst"))
        results["bare balance (in memory)"] = measure(
            [py, "-c", BARE_BALANCE, src, bare_out, k, t, HERE, str(args.kmeans_sample)]
        )
        results["rsyn balance"] = measure(
            [
                py,
                "-m",
                "rsyn",
                "balance",
                src,
                "-o",
                out,
                "--quiet",
                "--device",
                "cpu",
                "--sim-range",
                "auto",
                "--clusters",
                k,
                "--per-cluster",
                t,
                "--kmeans-sample",
                str(args.kmeans_sample),
                "--stats",
                stats,
                "--tmp-dir",
                tmp,
            ]
        )
        import orjson

        s = orjson.loads(open(stats, "rb").read())
        kept = s["out"]
        results["bare pack"] = measure([py, "-c", BARE_PACK, out, os.path.join(tmp, "bare-pack")])
        results["rsyn pack"] = measure([py, "-m", "rsyn", "pack", out, "-o", os.path.join(tmp, "pack"), "--quiet"])

        print(f"\n{'':26}{'seconds':>9}{'records/s':>12}{'peak RSS GiB':>14}")
        for name, (sec, rss) in results.items():
            n = kept if "pack" in name else args.records
            print(f"{name:26}{sec:9.1f}{n / sec:12,.0f}{rss:14.2f}")
        b, r = results["bare balance (in memory)"], results["rsyn balance"]
        print(f"\nbalance ratio bare/rsyn: {b[0] / r[0]:.2f}x time, memory {r[1]:.2f} vs {b[1]:.2f} GiB")
        bp, rp = results["bare pack"], results["rsyn pack"]
        print(f"pack ratio bare/rsyn: {bp[0] / rp[0]:.2f}x ({kept / rp[0]:,.0f} rows/s)")
        st = s["stage"]
        print(
            f"\nbalance kept {kept:,} of {s['in']:,}; window {st['sim_window']['lo']}..{st['sim_window']['hi']} "
            f"({st['sim_window']['chosen']}); {st['clusters']} clusters, t = {st['per_cluster']}"
        )
        print("  rsyn balance phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in st["phase_seconds"].items()))
        for when in ("before", "after"):
            d = st[when]
            print(
                f"  {when:6} max share {d['max_share']:.2%}  Gini {d['gini']:.3f}  singletons {d['singletons']}  "
                f"largest {d['largest']}  median {d['median']}"
            )


if __name__ == "__main__":
    main()
