#!/usr/bin/env python
"""CPU time and peak RSS of `rsyn balance` with default options as the corpus grows (issue 18), and of each pass.

    .venv/bin/python benchmarks/balance_scaling.py [--sizes 100000,200000,400000,800000] [--passes] [--tmp DIR]

Input: the synthetic records of benchmarks/balance_vs_bare.py (512-d `emb` and `syn_emb`, ~3.4 KB per record,
Zipf-sized true clusters), written as files of --file-records records; size N reads the first N / file-records
files, so every size is a prefix of the next.

Options are the defaults: `--sim-range auto --per-cluster 35` and nothing else, so clusters = images in the
window / 168 and the k-means sample is the default (capped). For every N the table gives CPU seconds (user +
system, os.wait4 of the child) and peak RSS of the whole `rsyn balance`, per record, and their ratio to the
smallest N (flat = 1.00). The reference is `rsyn cat` over the same files (one streaming read-parse-write pass,
the floor of any stage), measured in the same run.

--passes also runs the five passes as separate processes (one shard) and prints each one's CPU seconds and peak
RSS; the marginal bytes per record of a pass is the RSS slope between the smallest and the largest N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from harness import measure  # benchmarks/harness.py

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,200000,400000,800000")
    ap.add_argument("--file-records", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--per-cluster", type=int, default=35)
    ap.add_argument("--passes", action="store_true", help="also run the five passes as separate processes")
    ap.add_argument("--tmp", default=None, help="scratch directory (about 3.2 KB per record)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(n % args.file_records for n in sizes):
        sys.exit("every size must be a multiple of --file-records")
    py = sys.executable
    rsyn = [py, "-m", "rsyn"]
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-balance-scaling-") as tmp:
        files = []
        clock = time.perf_counter()
        for f in range(max(sizes) // args.file_records):
            path = os.path.join(tmp, f"in{f:03d}.jsonl.zst")
            # a child per file: this process stays small, and each file has its own seed (records differ)
            subprocess.run(
                [
                    py,
                    os.path.join(HERE, "balance_vs_bare.py"),
                    "--make-input",
                    path,
                    "--records",
                    str(args.file_records),
                    "--dim",
                    str(args.dim),
                    "--seed",
                    str(f),
                ],
                check=True,
                capture_output=True,
            )
            files.append(path)
        print(
            f"input: {len(files)} files x {args.file_records:,} records ({args.dim}-d), "
            f"{sum(os.path.getsize(p) for p in files) / 1e9:.2f} GB zstd, made in "
            f"{time.perf_counter() - clock:.0f}s",
            flush=True,
        )
        rows, pass_rows = [], {}
        for n in sizes:
            inputs = files[: n // args.file_records]
            out, stats = os.path.join(tmp, "out.jsonl.zst"), os.path.join(tmp, "stats.json")
            cat = measure([*rsyn, "cat", *inputs, "-o", os.path.join(tmp, "cat.zst"), "--quiet"])
            os.unlink(os.path.join(tmp, "cat.zst"))
            whole = measure(
                [
                    *rsyn,
                    "balance",
                    *inputs,
                    "-o",
                    out,
                    "--quiet",
                    "--device",
                    "cpu",
                    "--sim-range",
                    "auto",
                    "--per-cluster",
                    str(args.per_cluster),
                    "--stats",
                    stats,
                    "--tmp-dir",
                    tmp,
                ]
            )
            stage = json.loads(open(stats).read())["stage"]
            rows.append((n, cat, whole, stage))
            print(
                f"N={n:,}: balance {whole[0]:.0f}s wall, {whole[1]:.0f}s CPU, {whole[2]:.0f} MiB; "
                f"k={stage['clusters']}, sample={stage['kmeans']['train_points']:,}; phases (s) "
                + ", ".join(f"{k} {v:.1f}" for k, v in stage["phase_seconds"].items()),
                flush=True,
            )
            if args.passes:
                pass_rows[n] = run_passes(rsyn, inputs, tmp, args.per_cluster)
        print_table(rows)
        if pass_rows:
            print_passes(pass_rows)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (CPU count {os.cpu_count()})")


def run_passes(rsyn: list[str], inputs: list[str], tmp: str, per_cluster: int) -> dict:
    work = os.path.join(tmp, "passes")
    d = {name: os.path.join(work, name) for name in ("scan", "plan", "assign", "cap")}
    out = os.path.join(work, "out.jsonl.zst")
    result = {
        "scan": measure([*rsyn, "balance", "scan", *inputs, "-o", d["scan"], "--quiet"]),
        "plan": measure(
            [*rsyn, "balance", "plan", d["scan"], "-o", d["plan"], "--sim-range", "auto", "--quiet", "--device", "cpu"]
        ),
        "assign": measure(
            [
                *rsyn,
                "balance",
                "assign",
                d["scan"],
                "--plan",
                d["plan"],
                "-o",
                d["assign"],
                "--quiet",
                "--device",
                "cpu",
            ]
        ),
        "cap": measure(
            [*rsyn, "balance", "cap", d["assign"], "--per-cluster", str(per_cluster), "-o", d["cap"], "--quiet"]
        ),
        "filter": measure([*rsyn, "balance", "filter", d["assign"], "--cap", d["cap"], "-o", out, "--quiet"]),
    }
    subprocess.run(["rm", "-rf", work], check=True)
    return result


def print_table(rows) -> None:
    n0, cat0, whole0, _ = rows[0]
    cpu0, rss0 = whole0[1] / n0, whole0[2] / n0
    print(
        f"\n{'N':>9} {'k':>6} {'sample':>7} {'CPU s':>8} {'peak RSS MiB':>13} {'CPU us/rec':>11} "
        f"{'x N0':>6} {'RSS B/rec':>10} {'x N0':>6} {'cat CPU us/rec':>15} {'balance/cat':>12}"
    )
    for n, cat, whole, stage in rows:
        cpu, rss = whole[1] / n, whole[2] / n
        print(
            f"{n:9,} {stage['clusters']:6,} {stage['kmeans']['train_points']:7,} {whole[1]:8.1f} {whole[2]:13.0f} "
            f"{cpu * 1e6:11.1f} {cpu / cpu0:6.2f} {rss * 2**20:10,.0f} {rss / rss0:6.2f} "
            f"{cat[1] / n * 1e6:15.1f} {whole[1] / cat[1]:12.2f}"
        )


def print_passes(pass_rows: dict) -> None:
    sizes = sorted(pass_rows)
    print(f"\n{'pass':8}" + "".join(f"{f'N={n:,} CPU s':>18}{'RSS MiB':>9}" for n in sizes) + f"{'marginal B/rec':>16}")
    for name in ("scan", "plan", "assign", "cap", "filter"):
        line = f"{name:8}" + "".join(f"{pass_rows[n][name][1]:18.1f}{pass_rows[n][name][2]:9.0f}" for n in sizes)
        if len(sizes) > 1:
            a, b = sizes[0], sizes[-1]
            slope = (pass_rows[b][name][2] - pass_rows[a][name][2]) * 2**20 / (b - a)
            line += f"{slope:16,.0f}"
        print(line)


if __name__ == "__main__":
    main()
