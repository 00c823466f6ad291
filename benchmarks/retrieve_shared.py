#!/usr/bin/env python
"""Memory of concurrent `rsyn retrieve` processes on one index: PSS of 1, 2 and 4 processes together.

PSS (proportional set size, /proc/PID/smaps_rollup) counts a page shared by k processes 1/k in each, so
the PSS of processes running together adds up to the physical memory they use together. Each process
probes every list (the whole index is touched) on one batch of queries, then waits on its input while
it is measured. Uses the helpers of tests/test_retrieve_shared.py (the test runs the same at a small size).

benchmarks/retrieve_shared.py --sentences 300000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(root), str(root / "tests")]

from test_retrieve_shared import build_index, query_stream, retrieve_together  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=256)
    args = p.parse_args()
    print(
        f"# retrieve_shared: {args.sentences:,} x {args.dim}-d ivf_flat, load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="rsyn-bench-shared-") as name:
        tmp = Path(name)
        build_index(tmp / "index", n=args.sentences, dim=args.dim, clusters=args.clusters)
        build_index(tmp / "tiny", n=1_000, dim=args.dim, clusters=4)
        size = (tmp / "index" / "ivf.faiss").stat().st_size / 2**20
        stream = query_stream(args.dim)
        fixed, _ = retrieve_together(tmp / "tiny", stream, 1)
        rows = []
        for count in (1, 2, 4):
            total, outputs = retrieve_together(tmp / "index", stream, count)
            assert all(out == outputs[0] for out in outputs)
            rows.append((count, total))
        one = rows[0][1]
        print(f"\nivf.faiss {size:,.0f} MiB; a retrieve on a 1,000-sentence index: {fixed / 1024:,.0f} MiB PSS\n")
        print("| processes | PSS together (MiB) | vs one process | index's share vs one (fixed cost taken out) |")
        print("|---:|---:|---:|---:|")
        for count, total in rows:
            print(
                f"| {count} | {total / 1024:,.0f} | {total / one:.2f}x | "
                f"{(total - count * fixed) / (one - fixed):.2f}x |"
            )


if __name__ == "__main__":
    main()
