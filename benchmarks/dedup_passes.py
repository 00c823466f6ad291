#!/usr/bin/env python
"""dedup as passes against the one-process `rsyn dedup` (not run by CI). Prints tables.

    .venv/bin/python benchmarks/dedup_passes.py [--sentences 1000000] [--vectors 200000] [--flat 250000]
                                                [--only near,flat,semantic] [--jobs 2] [--tmp DIR]

near      exact+near dedup of --sentences synthetic sentences: one `rsyn dedup` process against the passes
          with 2 shards and 2 partitions, --jobs per-shard/per-partition passes at a time. Wall-time ratio,
          CPU seconds, peak RSS of every pass, and bytes per record of each pass (its peak RSS minus the same
          pass's on a 2,000-sentence corpus, divided by the records it handles). Outputs checked equal.
flat      the per-shard passes' peak RSS at --flat sentences in 2 shards and at 2 x --flat in 4 shards (fixed
          shard size): it must stay flat; the global passes grow with the duplicates only.
semantic  exact+semantic dedup of --vectors 512-d image embeddings (topics + planted copies): one process
          against 4 shards x 3 partitions. Outputs checked equal.

Peak RSS comes from GNU time around each process. The build machine is shared (2 cores, other jobs):
wall times are noisy, CPU seconds and RSS less so.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILES = 8


# --------------------------------------------------------------------------- corpora


def sentences(n: int, seed: int = 0) -> list[str]:
    """Zipf-distributed words, 5 to 20 per sentence; 15% exact copies (other case/punctuation), 15% one-word
    edits of an earlier sentence, 2% boilerplate lines."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20000)])
    lengths = rng.integers(5, 21, size=n)
    words = vocab[np.minimum(rng.zipf(1.3, size=int(lengths.sum())) - 1, len(vocab) - 1)]
    cuts = np.cumsum(lengths)[:-1]
    out = [" ".join(w) for w in np.split(words, cuts)]
    kind = rng.random(n)
    source = (rng.random(n) * np.arange(n)).astype(np.int64)
    boiler = ["subscribe to our newsletter for the latest news and offers", "all rights reserved privacy policy"]
    for i in np.flatnonzero(kind < 0.32).tolist():
        if kind[i] < 0.02:
            out[i] = boiler[i % 2]
        elif kind[i] < 0.17 and i:
            out[i] = out[source[i]].upper() + "!"
        elif i:
            w = out[source[i]].split()
            w[int(rng.integers(len(w)))] = vocab[int(rng.integers(len(vocab)))]
            out[i] = " ".join(w)
    return out


def write_files(directory: Path, records: list[dict], files: int = FILES) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, part in enumerate(np.array_split(np.arange(len(records)), files)):
        path = directory / f"in-{k}.jsonl.zst"
        data = b"".join(orjson.dumps(records[i]) + b"\n" for i in part.tolist())
        path.write_bytes(zstandard.ZstdCompressor(level=3, threads=-1).compress(data))
        paths.append(str(path))
    return paths


def text_corpus(directory: Path, n: int) -> list[str]:
    texts = sentences(n)
    return write_files(
        directory,
        [{"id": f"t{i}", "kind": "text", "doc": f"d{i // 30}", "pos": i % 30, "text": t} for i, t in enumerate(texts)],
    )


def vector_corpus(directory: Path, n: int, d: int = 512) -> list[str]:
    from rsyn.records import encode_embeddings

    rng = np.random.default_rng(1)
    base = int(n * 0.9)
    centers = rng.normal(size=(200, d)).astype(np.float32)
    x = centers[rng.integers(200, size=base)] + 2.0 * rng.normal(size=(base, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.integers(base, size=n - base)
    c = rng.uniform(0.85, 0.995, size=(n - base, 1)).astype(np.float32)
    w = rng.normal(size=(n - base, d)).astype(np.float32)
    w -= (w * x[src]).sum(1, keepdims=True) * x[src]
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    x = np.vstack([x, c * x[src] + np.sqrt(1 - c * c) * w])[rng.permutation(n)]
    records = [
        {"id": f"i{i}", "kind": "image", "url": f"http://img/{i}.jpg", "emb": e, "emb_model": "bench"}
        for i, e in enumerate(encode_embeddings(x))
    ]
    return write_files(directory, records)


# --------------------------------------------------------------------------- running


def start(args: list, cwd: Path) -> tuple:
    cmd = ["/usr/bin/time", "-f", "RSYN_BENCH %e %U %S %M", sys.executable, "-m", "rsyn", *map(str, args), "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, cwd=cwd, env=env), args


def finish(job) -> dict:
    proc, args = job
    err = proc.stderr.read().decode()
    if proc.wait():
        raise SystemExit(f"rsyn {' '.join(map(str, args))} failed:\n{err}")
    wall, user, system, rss = next(line.split()[1:] for line in err.splitlines() if line.startswith("RSYN_BENCH"))
    return {"wall": float(wall), "cpu": float(user) + float(system), "rss_mib": int(rss) / 1024}


def stage(name: str, commands: list[list], cwd: Path, jobs: int) -> dict:
    """Run the commands of one pass, `jobs` at a time; wall of the whole stage, each process's CPU and RSS."""
    t0 = time.perf_counter()
    results, pending = [], list(commands)
    while pending:
        batch = [start(c, cwd) for c in pending[:jobs]]
        pending = pending[jobs:]
        results += [finish(j) for j in batch]
    return {
        "pass": name,
        "processes": len(commands),
        "wall": time.perf_counter() - t0,
        "cpu": sum(r["cpu"] for r in results),
        "rss_mib": max(r["rss_mib"] for r in results),
    }


def near_passes(paths: list[str], work: Path, out: Path, shards: int, parts: int, jobs: int) -> list[dict]:
    w = ["--work", work]
    return [
        stage(
            "scan (per shard)",
            [["dedup-scan", *paths, *w, "--shard", f"{k}/{shards}"] for k in range(shards)],
            out,
            jobs,
        ),
        stage(
            "exact (per partition)", [["dedup-exact", *w, "--part", f"{m}/{parts}"] for m in range(parts)], out, jobs
        ),
        stage("settle exact (once)", [["dedup-settle", *w, "--mode", "exact"]], out, jobs),
        stage("near (per partition)", [["dedup-near", *w, "--part", f"{m}/{parts}"] for m in range(parts)], out, jobs),
        stage("settle near (once)", [["dedup-settle", *w, "--mode", "near"]], out, jobs),
        stage(
            "filter (per shard)",
            [
                [
                    "dedup-filter",
                    *w,
                    "--shard",
                    f"{k}/{shards}",
                    "-o",
                    out / f"out-{k}.jsonl.zst",
                    "--rejects",
                    out / f"rej-{k}.jsonl.zst",
                ]
                for k in range(shards)
            ],
            out,
            jobs,
        ),
    ]


def semantic_passes(paths, work, out, shards, parts, jobs, mode_args) -> list[dict]:
    w = ["--work", work]
    return [
        stage(
            "scan (per shard)",
            [["dedup-scan", *paths, *w, *mode_args, "--shard", f"{k}/{shards}"] for k in range(shards)],
            out,
            jobs,
        ),
        stage(
            "exact (per partition)", [["dedup-exact", *w, "--part", f"{m}/{parts}"] for m in range(parts)], out, jobs
        ),
        stage("settle exact (once)", [["dedup-settle", *w, "--mode", "exact"]], out, jobs),
        stage("train (once)", [["dedup-train", *w, "--device", "cpu"]], out, jobs),
        stage(
            "assign (per shard)",
            [["dedup-assign", *w, "--shard", f"{k}/{shards}", "--device", "cpu"] for k in range(shards)],
            out,
            jobs,
        ),
        stage(
            "pairs (per partition)",
            [["dedup-pairs", *w, "--part", f"{m}/{parts}", "--device", "cpu"] for m in range(parts)],
            out,
            jobs,
        ),
        stage("select (once)", [["dedup-select", *w]], out, jobs),
        stage(
            "filter (per shard)",
            [
                [
                    "dedup-filter",
                    *w,
                    "--shard",
                    f"{k}/{shards}",
                    "-o",
                    out / f"out-{k}.jsonl.zst",
                    "--rejects",
                    out / f"rej-{k}.jsonl.zst",
                ]
                for k in range(shards)
            ],
            out,
            jobs,
        ),
    ]


def lines(paths) -> list[bytes]:
    found = []
    for p in paths:
        if Path(p).exists():
            data = (
                zstandard.ZstdDecompressor()
                .stream_reader(io.BytesIO(Path(p).read_bytes()), read_across_frames=True)
                .read()
            )
            found += [x for x in data.splitlines() if x]
    return sorted(found)


def check_equal(out: Path, shards: int) -> bool:
    return lines([out / "one.jsonl.zst"]) == lines([out / f"out-{k}.jsonl.zst" for k in range(shards)]) and lines(
        [out / "one-rej.jsonl.zst"]
    ) == lines([out / f"rej-{k}.jsonl.zst" for k in range(shards)])


def one_process(paths, out: Path, extra=()) -> dict:
    return stage(
        "rsyn dedup (one process)",
        [["dedup", *paths, *extra, "-o", out / "one.jsonl.zst", "--rejects", out / "one-rej.jsonl.zst"]],
        out,
        1,
    )


def table(rows: list[dict], records: dict | None = None, small: dict | None = None) -> None:
    head = "| pass | processes | wall s | CPU s | peak RSS MiB (largest process) |"
    if records:
        head += " records per process | bytes per record |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = f"| {r['pass']} | {r['processes']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss_mib']:.0f} |"
        if records:
            n = records.get(r["pass"])
            base = small.get(r["pass"]) if small else None
            if n and base is not None:
                line += f" {n:,} | {max(0.0, (r['rss_mib'] - base) * 2**20 / n):.0f} |"
            else:
                line += " | |"
        print(line)


# --------------------------------------------------------------------------- benchmarks


def bench_near(tmp: Path, n: int, jobs: int) -> None:
    print(f"\n## near: exact+near dedup of {n:,} sentences, 2 shards x 2 partitions, {jobs} processes at a time\n")
    small_dir, big_dir = tmp / "near-small", tmp / "near-big"
    sizes = {}
    for directory, count in ((small_dir, 2000), (big_dir, n)):
        paths = text_corpus(directory / "in", count)
        out = directory / "out"
        out.mkdir()
        one = one_process(paths, out)
        rows = near_passes(paths, directory / "work", out, 2, 2, jobs)
        sizes[count] = (one, rows, check_equal(out, 2))
    one, rows, equal = sizes[n]
    small_one, small_rows, _ = sizes[2000]
    small = {r["pass"]: r["rss_mib"] for r in small_rows + [small_one]}
    per = {
        "rsyn dedup (one process)": n,
        "scan (per shard)": n // 2,
        "filter (per shard)": n // 2,
        "exact (per partition)": n // 2,
        "near (per partition)": n // 2,
    }
    table([one], per, small)
    print()
    table(rows, per, small)
    total = sum(r["wall"] for r in rows)
    print(
        f"\npasses total: {total:.1f} s wall, {sum(r['cpu'] for r in rows):.1f} CPU s; one process "
        f"{one['wall']:.1f} s wall, {one['cpu']:.1f} CPU s; wall ratio passes / one process = "
        f"{total / one['wall']:.2f}; outputs equal: {equal}"
    )


def bench_flat(tmp: Path, n: int, jobs: int) -> None:
    print(f"\n## flat: per-shard peak RSS at a fixed shard size ({n // 2:,} sentences per shard)\n")
    print(
        "| corpus | shards x partitions | "
        + " | ".join(["scan", "exact", "settle exact", "near", "settle near", "filter"])
        + " |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for count, shards in ((n, 2), (2 * n, 4)):
        directory = tmp / f"flat-{count}"
        paths = text_corpus(directory / "in", count)
        out = directory / "out"
        out.mkdir()
        rows = near_passes(paths, directory / "work", out, shards, shards, jobs)
        print(f"| {count:,} | {shards} x {shards} | " + " | ".join(f"{r['rss_mib']:.0f}" for r in rows) + " |")
    print("\n(peak RSS MiB of the largest process of each pass)")


def bench_semantic(tmp: Path, n: int, jobs: int) -> None:
    print(f"\n## semantic: exact+semantic dedup of {n:,} 512-d image embeddings, 4 shards x 3 partitions\n")
    directory = tmp / "semantic"
    paths = vector_corpus(directory / "in", n)
    out = directory / "out"
    out.mkdir()
    args = ["--mode", "exact,semantic", "--device", "cpu"]
    one = one_process(paths, out, args)
    rows = semantic_passes(paths, directory / "work", out, 4, 3, jobs, ["--mode", "exact,semantic"])
    table([one] + rows)
    total = sum(r["wall"] for r in rows)
    print(
        f"\npasses total: {total:.1f} s wall, {sum(r['cpu'] for r in rows):.1f} CPU s; one process "
        f"{one['wall']:.1f} s wall, {one['cpu']:.1f} CPU s; ratio {total / one['wall']:.2f}; "
        f"outputs equal: {check_equal(out, 4)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1_000_000)
    parser.add_argument("--flat", type=int, default=250_000)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="near,flat,semantic")
    parser.add_argument("--tmp", default=None)
    a = parser.parse_args()
    print(
        f"# dedup_passes ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"{time.strftime('%Y-%m-%d %H:%M')})"
    )
    with tempfile.TemporaryDirectory(prefix="rsyn-bench-dedup-", dir=a.tmp) as tmp:
        only = a.only.split(",")
        if "near" in only:
            bench_near(Path(tmp), a.sentences, a.jobs)
        if "flat" in only:
            bench_flat(Path(tmp), a.flat, a.jobs)
        if "semantic" in only:
            bench_semantic(Path(tmp), a.vectors, a.jobs)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
