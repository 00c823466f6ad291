#!/usr/bin/env python
"""Peak RSS, wall time and disk of every `rsyn index` pass, as real commands, at two corpus sizes.

The corpus is JSONL sentence records with 512-d embeddings (synthetic, clustered). At each size the
passes run as separate processes (collect --shard K/N for every K, train, add --part K/N for every K,
merge in RAM, merge --on-disk) next to the one-process `rsyn index`; the slope between the two sizes is
the memory per record (the fixed cost of a Python process drops out). Peak RSS is GNU time's maximum
resident set, which counts file pages a process has mapped and touched (the on-disk merge's lists).

benchmarks/index_passes.py --sizes 25000,100000 --shards 4
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

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))

from rsyn.records import encode_embeddings  # noqa: E402


def write_corpus(path: Path, n: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(10, n // 1000), dim)).astype(np.float32)
    with open(path, "wb") as fh:
        for start in range(0, n, 20_000):
            m = min(20_000, n - start)
            x = centers[rng.integers(0, len(centers), m)] + rng.normal(size=(m, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            fh.write(
                b"".join(
                    orjson.dumps(
                        {
                            "id": f"s{start + i}",
                            "kind": "text",
                            "doc": f"d{(start + i) // 20}",
                            "text": f"synthetic sentence number {start + i} of the corpus",
                            "emb": e,
                            "emb_model": "synthetic",
                        }
                    )
                    + b"\n"
                    for i, e in enumerate(encode_embeddings(x))
                )
            )


def command(*args) -> tuple[int, float]:
    """Peak RSS (bytes) and wall seconds of `rsyn ARGS`."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "rsyn", *map(str, args), "-q", "--device", "cpu"],
        capture_output=True,
        cwd=root,
    )
    if proc.returncode:
        raise SystemExit(proc.stderr.decode())
    return int(proc.stderr.decode().split()[-1]) * 1024, time.perf_counter() - start


def disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_size(tmp: Path, n: int, dim: int, shards: int) -> dict:
    corpus = tmp / "s.jsonl"
    write_corpus(corpus, n, dim)
    out: dict[str, tuple[int, float, int]] = {}  # pass -> (max peak RSS over its processes, total seconds, disk)
    parts = [tmp / f"collect-{k}" for k in range(shards)]
    runs = [command("index", "collect", corpus, "--shard", f"{k}/{shards}", "-o", parts[k]) for k in range(shards)]
    out["collect (per shard)"] = (max(r[0] for r in runs), sum(r[1] for r in runs), sum(disk(p) for p in parts))
    rss, secs = command("index", "train", *parts, "-o", tmp / "train")
    out["train"] = (rss, secs, disk(tmp / "train"))
    adds = [tmp / f"add-{k}" for k in range(shards)]
    runs = [
        command("index", "add", *parts, "--trained", tmp / "train", "--part", f"{k}/{shards}", "-o", adds[k])
        for k in range(shards)
    ]
    out["add (per part)"] = (max(r[0] for r in runs), sum(r[1] for r in runs), sum(disk(a) for a in adds))
    added = [x for a in adds for x in ("--added", a)]
    rss, secs = command("index", "merge", *parts, "--trained", tmp / "train", *added, "-o", tmp / "ram")
    out["merge (in RAM)"] = (rss, secs, disk(tmp / "ram"))
    rss, secs = command("index", "merge", *parts, "--trained", tmp / "train", *added, "-o", tmp / "disk", "--on-disk")
    out["merge --on-disk"] = (rss, secs, disk(tmp / "disk"))
    rss, secs = command("index", corpus, "-o", tmp / "whole")
    out["rsyn index (one process)"] = (rss, secs, disk(tmp / "whole"))
    same = all(
        (tmp / "ram" / f).read_bytes() == (tmp / "whole" / f).read_bytes()
        for f in ("ivf.faiss", "centroids.npy", "sentences.sqlite", "meta.json")
    )
    print(f"# {n:,} records: passes give the one-process index byte for byte: {same}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="25000,100000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--shards", type=int, default=4)
    args = p.parse_args()
    small, large = (int(s) for s in args.sizes.split(","))
    print(
        f"# index_passes: {small:,} and {large:,} records x {args.dim}-d, {args.shards} shards; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
        flush=True,
    )
    results = {}
    for n in (small, large):
        with tempfile.TemporaryDirectory(prefix="rsyn-bench-index-") as name:
            results[n] = run_size(Path(name), n, args.dim, args.shards)
    print()
    print(
        f"| pass | peak RSS at {small:,} (MiB) | at {large:,} (MiB) | RSS bytes per record (slope) | "
        f"seconds at {large:,} (all processes) | output disk bytes per record |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in results[small]:
        (r1, _, _), (r2, s2, d2) = results[small][name], results[large][name]
        # add reads only its parts; collect's record-position shards each read (and parse) the whole input
        per_shard = args.shards if name.startswith("add") else 1
        slope = (r2 - r1) / ((large - small) / per_shard)
        print(f"| {name} | {r1 / 2**20:,.0f} | {r2 / 2**20:,.0f} | {slope:,.0f} | {s2:,.1f} | {d2 / large:,.0f} |")
    print("\n(RSS slope per input record, for add per record of its part; disk: all parts together)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
