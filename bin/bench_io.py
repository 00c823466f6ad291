#!/usr/bin/env python
"""Throughput of `rsyn cat` against a bare zstandard+orjson read/write loop, in one run.

    .venv/bin/python bin/bench_io.py [--records 1000000] [--repeat 3]

Both read the same zstd JSONL file of ~250-byte records, parse every record
and write it back zstd-compressed to a file. Prints records/s, MB/s (of
uncompressed JSONL) and the ratio rsyn / bare (target >= 0.8). Best of
--repeat runs each, alternating, so a noisy neighbour hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

BARE_LOOP = r"""
import io, sys, orjson, zstandard
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f, open(dst, "wb") as g:
    lines = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True), 1 << 20)
    out = zstandard.ZstdCompressor(level=3).stream_writer(g, closefd=False)
    for line in lines:
        record = orjson.loads(line)
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    out.flush(zstandard.FLUSH_FRAME)
"""


def make_input(path: str, n: int) -> int:
    import random

    import orjson
    import zstandard

    rng = random.Random(0)
    words = "a dog runs across the green field while two children play with red kites near old river".split()
    raw = 0
    with open(path, "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as out:
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(12, 22)))
            rec = {
                "id": f"{rng.getrandbits(80):020x}",
                "kind": "text",
                "doc": f"https://example.org/page/{i // 40}",
                "pos": i % 40,
                "text": text,
                "scores": {"words": len(text.split()), "entropy": round(rng.random(), 4)},
            }
            line = orjson.dumps(rec) + b"\n"
            raw += len(line)
            out.write(line)
    return raw


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.jsonl.zst")
        raw = make_input(src, args.records)
        print(
            f"input: {args.records:,} records, {raw / args.records:.0f} bytes each, "
            f"{raw / 1e6:.0f} MB uncompressed, {os.path.getsize(src) / 1e6:.0f} MB zstd"
        )
        bare_cmd = [sys.executable, "-c", BARE_LOOP, src, os.path.join(tmp, "bare.zst")]
        rsyn_cmd = [sys.executable, "-m", "rsyn", "cat", src, "-o", os.path.join(tmp, "rsyn.jsonl.zst"), "--quiet"]
        bare, rsyn = [], []
        for _ in range(args.repeat):
            bare.append(timed(bare_cmd))
            rsyn.append(timed(rsyn_cmd))
        b, r = min(bare), min(rsyn)
        print(f"{'':14}{'seconds':>9}{'records/s':>12}{'MB/s':>8}")
        for name, t in (("bare loop", b), ("rsyn cat", r)):
            print(f"{name:14}{t:9.2f}{args.records / t:12,.0f}{raw / 1e6 / t:8.1f}")
        print(f"ratio rsyn/bare: {b / r:.2f}x (target >= 0.8x)")


if __name__ == "__main__":
    main()
