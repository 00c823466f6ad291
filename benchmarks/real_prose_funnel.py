"""The sentence-filter funnel of `rsyn extract` on real web prose, and where the entropy drops fall by length.

    python benchmarks/real_prose_funnel.py [--docs tests/data/mmc4_shard151_107docs.jsonl.zst] \
        [--spacy-model auto] [--min-entropy 0.3]

Runs the real CLI twice on the documents (perplexity off): once with the paper's thresholds for the funnel,
once with the entropy threshold at 0 so that every sentence reaching the entropy filter keeps its score; then
buckets those sentences by word count. Prints markdown tables (docs/extract.md, "The funnel on real web prose").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUCKETS = [(3, 5), (6, 8), (9, 12), (13, 20), (21, 40), (41, 81)]


def extract(docs: str, out: Path, stats: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "rsyn",
            "extract",
            docs,
            "--ppl-model",
            "none",
            "-o",
            out,
            "--stats",
            stats,
            "--quiet",
            *extra,
        ],
        check=True,
        env=env,
    )
    return json.loads(stats.read_text())


def main() -> None:
    from rsyn.stream import read_records

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default=str(ROOT / "tests/data/mmc4_shard151_107docs.jsonl.zst"))
    parser.add_argument("--spacy-model", default="auto")
    parser.add_argument("--min-entropy", type=float, default=0.3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        funnel = extract(
            args.docs,
            tmp / "a.jsonl.zst",
            tmp / "a.json",
            "--spacy-model",
            args.spacy_model,
            "--min-entropy",
            str(args.min_entropy),
        )
        extract(args.docs, tmp / "b.jsonl.zst", tmp / "b.json", "--spacy-model", args.spacy_model, "--min-entropy", "0")
        reached = [r for r in read_records([str(tmp / "b.jsonl.zst")]) if r["kind"] == "text"]
    sentences = funnel["stage"]["sentences_in"]
    print(
        f"{funnel['stage']['documents']} documents, {funnel['stage']['paragraphs']} paragraphs, "
        f"{sentences} sentences; CAT model {funnel['stage']['cat']['spacy_model']}\n"
    )
    print("| step | dropped | of the sentences reaching it | of all sentences |")
    print("|---|---:|---:|---:|")
    left = sentences
    for reasons, name in [
        (("has_emoji",), "emoji"),
        (("has_url",), "URL"),
        (("too_few_words", "too_many_words"), "3..81 words"),
        (("cat_low_complexity",), "CAT: complexity"),
        (("cat_no_action",), "CAT: action"),
        (("low_entropy",), f"entropy >= {args.min_entropy}"),
    ]:
        dropped = sum(funnel["dropped"].get(r, 0) for r in reasons)
        print(f"| {name} | {dropped} | {dropped / left:.1%} | {dropped / sentences:.1%} |")
        left -= dropped
    print(f"| kept | {left} | | {left / sentences:.1%} |\n")
    words = np.array([r["scores"]["words"] for r in reached])
    entropy = np.array([r["scores"]["entropy"] for r in reached])
    drop = entropy < args.min_entropy
    print("| words | sentences reaching entropy | share | dropped by entropy | drop rate | share of all drops |")
    print("|---|---:|---:|---:|---:|---:|")
    for low, high in BUCKETS:
        inside = (words >= low) & (words <= high)
        n, d = int(inside.sum()), int(drop[inside].sum())
        share_of_drops = d / max(int(drop.sum()), 1)
        print(f"| {low}-{high} | {n} | {n / len(words):.1%} | {d} | {d / max(n, 1):.1%} | {share_of_drops:.1%} |")
    print(
        f"\nmedian words: kept {np.median(words[~drop]):.0f}, dropped {np.median(words[drop]):.0f}; "
        f"median entropy {np.median(entropy):.3f} nats"
    )


if __name__ == "__main__":
    main()
