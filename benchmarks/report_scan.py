#!/usr/bin/env python
"""Wall time, CPU time and peak RSS of `rsyn report --records` against `rsyn cat` over the same records.

    .venv/bin/python benchmarks/report_scan.py [--sentences 1000000] [--images 200000] [--tmp DIR]

Input (synthetic, seeded): sentence records with the four filter scores extract keeps (words, entropy,
ppl, cat.complexity) and image records with three scored texts, caption, tags, syn_text and 512-d `emb` /
`syn_emb` (no `sim`, so the report computes every cosine). The reference is `rsyn cat` over the same file: one
streaming read-parse-write pass, the floor of any command that reads every record, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

import numpy as np
import orjson
from harness import measure  # benchmarks/harness.py

from rsyn.records import encode_embeddings
from rsyn.stream import write_records


def records(n_sentences: int, n_images: int):
    rng = random.Random(0)
    vectors = encode_embeddings(np.random.default_rng(0).normal(size=(1000, 512)))
    for i in range(n_sentences):
        yield {
            "id": f"t{i}",
            "kind": "text",
            "text": "a sentence of a few words",
            "scores": {
                "words": rng.randint(3, 80),
                "entropy": rng.random() * 3,
                "ppl": rng.uniform(30, 200),
                "cat": {"complexity": rng.randint(1, 6), "actions": 1},
            },
        }
    for i in range(n_images):
        yield {
            "id": f"i{i}",
            "kind": "image",
            "url": f"http://x.invalid/{i}.jpg",
            "texts": [{"id": f"t{j}", "text": "a text", "score": rng.random()} for j in range(3)],
            "caption": "a caption",
            "tags": ["a", "b"],
            "syn_text": "a synthetic text",
            "emb": vectors[i % 1000],
            "syn_emb": vectors[(i * 7) % 1000],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    rsyn = [sys.executable, "-m", "rsyn"]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        data = os.path.join(tmp, "records.jsonl.zst")
        write_records(data, records(args.sentences, args.images))
        stats = os.path.join(tmp, "extract.stats.json")
        with open(stats, "wb") as fh:
            fh.write(orjson.dumps({"command": "extract", "in": 1, "out": 1, "dropped": {}, "errors": {}}))
        cat = measure(rsyn + ["cat", data, "-o", os.path.join(tmp, "copy.jsonl.zst"), "--quiet"])
        report = measure(rsyn + ["report", stats, "--records", data, "-o", os.path.join(tmp, "r.html"), "--quiet"])
        n = args.sentences + args.images
        print(
            f"{n:,} records ({args.sentences:,} sentences, {args.images:,} images), "
            f"{os.path.getsize(data) / 2**20:.0f} MiB zstd; load average {os.getloadavg()[0]:.1f}"
        )
        print(f"{'command':<14}{'wall s':>9}{'CPU s':>9}{'peak MiB':>10}{'CPU vs cat':>12}")
        for name, (wall, cpu, rss) in (("rsyn cat", cat), ("rsyn report", report)):
            print(f"{name:<14}{wall:>9.1f}{cpu:>9.1f}{rss:>10.0f}{cpu / cat[1]:>11.2f}x")


if __name__ == "__main__":
    main()
