#!/usr/bin/env python
"""CPU time and peak RSS of `rsyn balance` with default options as the corpus grows (issue 18), and of each pass.

    .venv/bin/python benchmarks/balance_scaling.py [--sizes 100000,200000,400000,800000] [--passes] [--tmp DIR]

Input: the synthetic records of benchmarks/balance_vs_bare.py (512-d `emb` and `syn_emb`, ~3.4 KB per record,
Zipf-sized true clusters), written as files of --file-records records; size N reads the first N / file-records
files, so every size is a prefix of the next.

Options are the defaults: `--sim-range auto --per-cluster 35` and nothing else, so clusters = images in the
window / 168, the k-means sample is the default (capped) and the nearest-centroid search is the plan's choice
(exact below 2,048 clusters, through cells from there). For every N the table gives CPU seconds (user +
system, os.wait4 of the child) and peak RSS of the whole `rsyn balance`, per record, and their ratio to the
smallest N (flat = 1.00). The baseline is the same command on a 1-record input (interpreter, imports, faiss):
"net" columns subtract it before dividing by N. The reference is `rsyn cat` over the same files (one streaming
read-parse-write pass, the floor of any stage), measured in the same run.

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
    ap.add_argument("--input-dir", default=None, help="keep the input files here, and reuse them when they exist")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(n % args.file_records for n in sizes):
        sys.exit("every size must be a multiple of --file-records")
    py = sys.executable
    rsyn = [py, "-m", "rsyn"]
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench-balance-scaling-") as tmp:
        files = []
        clock = time.perf_counter()
        where = args.input_dir or tmp
        os.makedirs(where, exist_ok=True)
        for f in range(max(sizes) // args.file_records):
            path = os.path.join(where, f"in{f:03d}.jsonl.zst")
            files.append(path)
            if os.path.exists(path):
                continue
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
        print(
            f"input: {len(files)} files x {args.file_records:,} records ({args.dim}-d), "
            f"{sum(os.path.getsize(p) for p in files) / 1e9:.2f} GB zstd, made in "
            f"{time.perf_counter() - clock:.0f}s",
            flush=True,
        )
        one = os.path.join(where, "one.jsonl.zst")
        subprocess.run(
            [
                py,
                os.path.join(HERE, "balance_vs_bare.py"),
                "--make-input",
                one,
                "--records",
                "1",
                "--dim",
                str(args.dim),
            ],
            check=True,
            capture_output=True,
        )
        base = balance(rsyn, [one], tmp, args.per_cluster)[0]
        print(f"baseline (1 record): {base[1]:.2f}s CPU, {base[2]:.0f} MiB", flush=True)
        rows, pass_rows = [], {}
        for n in sizes:
            inputs = files[: n // args.file_records]
            whole, stage = balance(rsyn, inputs, tmp, args.per_cluster)
            cat = measure([*rsyn, "cat", *inputs, "-o", os.path.join(tmp, "cat.zst"), "--quiet"])
            os.unlink(os.path.join(tmp, "cat.zst"))
            rows.append((n, cat, whole, stage))
            print(
                f"N={n:,}: balance {whole[0]:.0f}s wall, {whole[1]:.0f}s CPU, {whole[2]:.0f} MiB; "
                f"k={stage['clusters']}, sample={stage['kmeans']['train_points']:,}, "
                f"two-level={stage['kmeans'].get('two_level')}, "
                f"search={stage['assign']['search']}; phases (s) "
                + ", ".join(f"{k} {v:.1f}" for k, v in stage["phase_seconds"].items()),
                flush=True,
            )
            if args.passes:
                pass_rows[n] = run_passes(rsyn, inputs, tmp, args.per_cluster)
        print_table(rows, base)
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


def balance(rsyn: list[str], inputs: list[str], tmp: str, per_cluster: int):
    """(wall, CPU, peak RSS MiB) and the --stats `stage` of one `rsyn balance` with default options."""
    out, stats = os.path.join(tmp, "out.jsonl.zst"), os.path.join(tmp, "stats.json")
    cmd = [*rsyn, "balance", *inputs, "-o", out, "--quiet", "--device", "cpu", "--sim-range", "auto"]
    result = measure([*cmd, "--per-cluster", str(per_cluster), "--stats", stats, "--tmp-dir", tmp])
    return result, json.loads(open(stats).read())["stage"]


def print_table(rows, base) -> None:
    n0, _, whole0, _ = rows[0]

    def per_record(whole, n):  # CPU us, RSS KB: raw, then net of the 1-record baseline
        return (
            whole[1] / n * 1e6,
            (whole[1] - base[1]) / n * 1e6,
            whole[2] * 1024 / n,
            (whole[2] - base[2]) * 1024 / n,
        )

    first = per_record(whole0, n0)
    print(
        f"\nbaseline (1 record): {base[1]:.2f} CPU s, {base[2]:.0f} MiB peak RSS\n"
        f"{'records':>9} {'clusters':>8} {'sample':>7} {'search':>6} {'CPU s':>7} {'us/rec':>7} {'x':>5} {'net us/rec':>10} "
        f"{'x':>5} {'RSS MiB':>8} {'KB/rec':>7} {'x':>5} {'net KB/rec':>10} {'x':>5} {'cat us/rec':>10}"
    )
    for n, cat, whole, stage in rows:
        cpu, cpu_net, rss, rss_net = per_record(whole, n)
        print(
            f"{n:9,} {stage['clusters']:8,} {stage['kmeans']['train_points']:7,} {stage['assign']['search']:>6} "
            f"{whole[1]:7.1f} {cpu:7.1f} "
            f"{cpu / first[0]:5.2f} {cpu_net:10.1f} {cpu_net / first[1]:5.2f} {whole[2]:8.0f} {rss:7.2f} "
            f"{rss / first[2]:5.2f} {rss_net:10.2f} {rss_net / first[3]:5.2f} {cat[1] / n * 1e6:10.1f}"
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
