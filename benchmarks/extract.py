#!/usr/bin/env python
"""Throughput of `rsyn extract` on real web captions, CPU, with the CAT reference measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/extract.py [--captions 10000] [--cat-sample 1000]
        [--processes 2] [--ppl-model DIR]

Each caption of the sample data's laion-10k.parquet is treated as one paragraph.
Prints sentences/s for the Punkt splitter, each filter unit, and the whole
stage (`rsyn extract` on an OBELICS parquet built from the captions, one image
per caption, perplexity off), and compares the CAT filter against the naive
way: the full spaCy pipeline called once per sentence. Then the funnel of the
whole-stage run and what fraction each entropy threshold removes (log base e
and 2) among the sentences that reach the entropy filter.

The perplexity row uses the tiny RANDOM-WEIGHT GPT-2 of rsyn.models.lm unless
--ppl-model names a real model: it measures the batching, not gpt2-large.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import harness  # benchmarks/harness.py
from harness import timed


def row(name: str, n: int, seconds: float, reference: float | None = None, note: str = "") -> None:
    """One row of the table, printed as soon as it is measured (the whole run takes minutes)."""
    rate = n / seconds if seconds else float("inf")
    ratio = f"{harness.ratio(reference, seconds):>6}" if reference else "      "
    print(f"| {name:<44} | {n:>7} | {seconds:8.2f} | {rate:>10,.0f} | {ratio} | {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--cat-sample", type=int, default=1000, help="sentences for the CAT comparison")
    parser.add_argument("--processes", type=int, default=2, help="spaCy worker processes for the pooled rows")
    parser.add_argument("--ppl-model", default=None, help="a local causal LM directory (default: tiny random GPT-2)")
    args = parser.parse_args()

    import numpy as np
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rsyn.filters import (
        CatFilter,
        EmojiFilter,
        EntropyFilter,
        UrlFilter,
        WordCountFilter,
        cat_scores,
        count_words,
        resolve_spacy_model,
    )
    from rsyn.stages.extract import _sentence_splitter

    table = pq.read_table(harness.sample_data("laion-10k.parquet"), columns=["URL", "TEXT"]).slice(0, args.captions)
    captions = [c or "" for c in table.column("TEXT").to_pylist()]
    urls = table.column("URL").to_pylist()
    print(f"benchmarks/extract.py: {len(captions)} real LAION captions, each a paragraph; CPU, {harness.machine()}\n")
    print(f"| {'step':<44} | {'items':>7} | {'seconds':>8} | {'items/s':>10} | ratio  | note")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 10}|{'-' * 12}|{'-' * 8}|------")

    split = _sentence_splitter()
    sentences, seconds = timed(lambda: [" ".join(s.split()) for c in captions for s in split(c) if s.strip()])
    row("Punkt sentence splitter (nupunkt)", len(sentences), seconds, note="sentences out")

    def records():
        return [{"kind": "text", "text": s, "scores": {}} for s in sentences]

    for unit in (EmojiFilter(), UrlFilter(), WordCountFilter()):
        batch = records()
        _, seconds = timed(unit.apply, batch)
        row(f"filter {unit.name}", len(batch), seconds)
    counts, seconds_count = timed(count_words, captions)
    entropy = EntropyFilter(counts)
    batch = records()
    _, seconds = timed(entropy.apply, batch)
    row("word counts (first pass, per caption)", len(captions), seconds_count, note=f"{len(counts)} words")
    row("filter entropy", len(batch), seconds)

    # CAT: naive (full pipeline, one call per sentence) vs rsyn (pipes cut, nlp.pipe batches, worker pool)
    import spacy

    sample = sentences[: args.cat_sample]
    model = resolve_spacy_model("auto")
    full_nlp = spacy.load(model)
    naive, naive_seconds = timed(lambda: [cat_scores(full_nlp(s)) for s in sample])
    row("CAT naive: nlp(s) per sentence, all pipes", len(sample), naive_seconds, note="reference")
    batched_filter = CatFilter(model, processes=1)
    batched, seconds = timed(batched_filter.scores, sample)
    row("CAT rsyn: nlp.pipe batches, 4 pipes, 1 process", len(sample), seconds, naive_seconds)
    pooled_filter = CatFilter(model, processes=args.processes)
    pooled, seconds = timed(pooled_filter.scores, sample)
    pooled_filter.close()
    row(f"CAT rsyn: same, {args.processes} worker processes", len(sample), seconds, naive_seconds)
    same = naive == batched == pooled
    print(f"|   CAT scores identical across the three ways: {same}")

    from rsyn.models.lm import load_causal_lm, perplexities
    from rsyn.testing import build_tiny_gpt2

    with tempfile.TemporaryDirectory() as tmp:
        lm_path = args.ppl_model or build_tiny_gpt2(Path(tmp) / "tiny-gpt2")
        lm = load_causal_lm(lm_path, "cpu")
        ppl_sample = sentences[: args.cat_sample]
        _, seconds = timed(perplexities, ppl_sample, *lm)
        label = "tiny RANDOM GPT-2" if not args.ppl_model else Path(args.ppl_model).name
        row(
            f"perplexity ({label}), batch 32",
            len(ppl_sample),
            seconds,
            note="plumbing only" if not args.ppl_model else "",
        )

        # the whole stage through the CLI, on an OBELICS parquet: image, caption, image, caption, ...
        docs = []
        for start in range(0, len(captions), 10):
            images, texts = [], []
            for url, caption in zip(urls[start : start + 10], captions[start : start + 10]):
                images += [url, None]
                texts += [None, caption]
            docs.append(
                {
                    "images": images,
                    "texts": texts,
                    "general_metadata": orjson.dumps({"url": f"https://bench/{start // 10}"}).decode(),
                }
            )
        parquet = Path(tmp) / "docs.parquet"
        pq.write_table(pa.Table.from_pylist(docs), parquet, row_group_size=100)
        stats_by_processes = {}
        for processes in (1, args.processes):
            stats_path = Path(tmp) / f"stats-{processes}.json"
            out = Path(tmp) / f"out-{processes}.jsonl.zst"
            cmd = harness.rsyn(
                "extract",
                str(parquet),
                "--ppl-model",
                "none",
                "--min-entropy",
                "0",
                "--spacy-processes",
                str(processes),
                "-o",
                str(out),
                "--stats",
                str(stats_path),
                "--quiet",
            )
            seconds = harness.measure(cmd)[0]
            stats = orjson.loads(stats_path.read_bytes())
            stats_by_processes[processes] = (stats, out.read_bytes())
            row(
                f"whole stage, rsyn extract, {processes} spaCy process{'es' if processes > 1 else ''}",
                stats["stage"]["sentences_in"],
                seconds,
                note="incl. start-up, both passes",
            )
        identical = stats_by_processes[1][1] == stats_by_processes[args.processes][1]
        print(f"|   output bytes identical for 1 and {args.processes} processes: {identical}")

        # the paper's thresholds (entropy 0.3): paper order vs. the cheap entropy filter before the CAT parse
        from rsyn.stream import read_records

        outputs = {}
        for order in ("size,emoji,url,words,cat,entropy", "size,emoji,url,words,entropy,cat"):
            out = Path(tmp) / f"out-{len(outputs)}-paper.jsonl.zst"
            cmd = harness.rsyn(
                "extract",
                str(parquet),
                "--ppl-model",
                "none",
                "--filters",
                order,
                "-o",
                str(out),
                "--quiet",
            )
            seconds = harness.measure(cmd)[0]
            outputs[order] = list(read_records([str(out)]))
            row(
                f"whole stage, entropy >= 0.3, {order.split(',')[4]} before {order.split(',')[5]}",
                stats["stage"]["sentences_in"],
                seconds,
                note="1 process",
            )
        first, second = outputs.values()
        print(
            f"|   same records in both orders: {first == second} ({sum(r['kind'] == 'text' for r in first)} "
            "sentences kept)"
        )

        stats, output = stats_by_processes[1]
        print("\nfunnel of the whole-stage run (entropy threshold 0 here, see below):")
        print(f"  in {stats['in']} = {stats['stage']['images_in']} images + {stats['stage']['sentences_in']} sentences")
        for reason, n in stats["dropped"].items():
            print(f"  {reason:<24} {n:>6}")
        print(
            f"  out {stats['out']} = {stats['stage']['images_out']} images + {stats['stage']['sentences_out']} "
            "sentences"
        )

        out_path = Path(tmp) / "out-1.jsonl.zst"
        entropies = np.array([r["scores"]["entropy"] for r in read_records([str(out_path)]) if r["kind"] == "text"])
        all_sentence_entropy = np.array([b["scores"]["entropy"] for b in batch])
        print("\nfraction removed by the entropy threshold (p(w) counted over the same captions):")
        print("| threshold | base e, reaching the filter | base 2, reaching the filter | base e, all sentences |")
        print("|-----------|-----------------------------|-----------------------------|-----------------------|")
        for threshold in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
            in_bits = entropies / math.log(2)
            print(
                f"| {threshold:>9} | {np.mean(entropies < threshold):>27.1%} | {np.mean(in_bits < threshold):>27.1%} "
                f"| {np.mean(all_sentence_entropy < threshold):>21.1%} |"
            )
        print(
            f"({len(entropies)} sentences reach the entropy filter: after emoji, URL, 3..81 words and CAT; "
            f"median entropy {np.median(entropies):.3f} nats)"
        )


if __name__ == "__main__":
    main()
