#!/usr/bin/env python
"""Throughput of `rsyn cat` against a bare zstandard+orjson read/write loop, in one run.

    .venv/bin/python benchmarks/stream_io.py [--records 1000000] [--repeat 3]

Both read the same zstd JSONL file of ~250-byte records, parse every record
and write it back zstd-compressed to a file, each as its own process. Prints
records/s, MB/s (of uncompressed JSONL), peak RSS and the ratio rsyn / bare
(target >= 0.8). Best of --repeat runs each, alternating, so a noisy neighbour
hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import harness  # benchmarks/harness.py

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
        commands = {
            "bare zstandard+orjson loop": [sys.executable, "-c", BARE_LOOP, src, os.path.join(tmp, "bare.zst")],
            "rsyn cat": harness.rsyn("cat", src, "-o", os.path.join(tmp, "rsyn.jsonl.zst"), "--quiet"),
        }
        best = dict.fromkeys(commands, (float("inf"), 0.0))
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                wall, _cpu, rss = harness.measure(cmd)
                best[name] = min(best[name], (wall, rss))
        print(f"best of {args.repeat}, {harness.machine()}")
        reference = best["bare zstandard+orjson loop"][0]
        harness.print_table(
            ["", "seconds", "records/s", "MB/s", "peak RSS MiB", "ratio to bare"],
            [
                [name, wall, round(args.records / wall), raw / 1e6 / wall, rss, harness.ratio(reference, wall)]
                for name, (wall, rss) in best.items()
            ],
        )
        print("target: rsyn cat >= 0.8x the bare loop")


if __name__ == "__main__":
    main()
