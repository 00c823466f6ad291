#!/usr/bin/env python
"""Throughput of `rsyn caption` on CPU: orchestration overhead, and the server backend as concurrency grows.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/caption.py [--records 192] [--repeat 2] [--latency 0.05]

1. Overhead: `rsyn caption` (the real command, in this process, reading and
   writing zstd JSONL) against a bare loop that calls the same tiny random
   models on the same inputs held in memory: CLIP tag scores over the RAM++
   tag list (text embeddings computed once for both), BLIP captions (batches
   of 32, greedy; JPEGs decoded at the captioner's scale on both sides), GPT-2
   generation (batches of 16, 16 new tokens, greedy).
   Records/s of each, best of --repeat alternating runs, and the ratio
   rsyn / bare (target >= 0.9).
2. Server backend: records/s of `rsyn caption --llm-backend openai` against a
   loopback OpenAI-compatible server (benchmarks/loopback.py, its own process)
   that answers every request after a fixed --latency, as --llm-concurrency
   grows; the ideal is concurrency / latency. The reference is a bare thread
   pool of httpx clients sending the same requests.

Inputs are real: raw texts are LAION alt-texts and images the web JPEGs of the
sample data (cycled; benchmarks/harness.py says where it is). The models are tiny and random, so this measures
the pipeline around the models, not caption quality.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import harness  # benchmarks/harness.py
import loopback  # benchmarks/loopback.py


def build_inputs(work: Path, n: int):
    import orjson
    import pyarrow.parquet as pq
    from PIL import Image

    from rsyn.models.clip import load_clip
    from rsyn.records import encode_embeddings
    from rsyn.testing import build_tiny_captioner, build_tiny_clip, build_tiny_gpt2

    models = {
        "clip": build_tiny_clip(work / "clip"),
        "captioner": build_tiny_captioner(work / "blip"),
        "gpt2": build_tiny_gpt2(work / "gpt2"),
    }
    texts = [
        t
        for t in pq.read_table(harness.sample_data("laion-10k.parquet"), columns=["TEXT"]).column("TEXT").to_pylist()
        if t and 5 <= len(t.split()) <= 40
    ][:n]
    images = sorted(str(p) for p in harness.sample_data("images").glob("*.jpg"))
    clip = load_clip(models["clip"], None, "cpu")
    embeddings = encode_embeddings(clip.encode_images([Image.open(p).convert("RGB") for p in images]))
    records = []
    for i in range(n):
        records.append(
            {
                "id": f"{i:08x}",
                "kind": "image",
                "doc": f"https://example.org/{i}",
                "pos": 0,
                "url": f"https://example.org/{i}.jpg",
                "path": images[i % len(images)],
                "emb": embeddings[i % len(images)],
                "emb_model": models["clip"],
                "texts": [{"id": f"t{i}", "text": texts[i % len(texts)], "score": 0.3}],
            }
        )
    source = work / "retrieved.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    tags = harness.sample_data("ram_tag_list.txt")
    return models, records, str(source), str(tags)


def rsyn_caption(args: list[str]) -> None:
    """`rsyn caption ARGS` in this process; exits unless every record came out (a skipped record is not work
    done, and would flatter rsyn)."""
    import json

    from typer.testing import CliRunner

    from rsyn.cli import app

    with tempfile.NamedTemporaryFile(suffix=".json") as stats:
        argv = ["caption", *map(str, args), "--stats", stats.name, "--quiet"]
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        if result.exit_code != 0:
            raise SystemExit(f"rsyn caption failed: {result.output}")
        summary = json.loads(Path(stats.name).read_text())
    if summary["out"] != summary["in"] or summary["errors"]:
        raise SystemExit(f"rsyn caption lost records: {summary['dropped']} {summary['errors']}")


def _open(path: str, side: int | None):
    from PIL import Image

    image = Image.open(path)
    if side and image.format == "JPEG":
        image.draft("RGB", (side, side))  # what rsyn does too: decode a JPEG at the scale the model needs
    return image.convert("RGB")


def bare_loop(models, records, tags_file, cache_dir):
    """The same models on the same inputs, no stream, no validation, no cleaning: the reference."""
    import numpy as np
    import torch

    from rsyn.models.captioner import load_captioner
    from rsyn.models.clip import load_clip
    from rsyn.models.lm import load_causal_lm
    from rsyn.prompts import PromptTemplate
    from rsyn.records import decode_embeddings
    from rsyn.tags import read_tag_file, tag_embeddings

    tags = read_tag_file(tags_file)
    template = PromptTemplate()
    tag_matrix = tag_embeddings(tags, load_clip(models["clip"], None, "cpu"), "a photo of {}.", Path(cache_dir))
    captioner = load_captioner(models["captioner"], "cpu")
    lm, tokenizer = load_causal_lm(models["gpt2"], "cpu")
    context = lm.config.n_positions - 16
    out = []
    for start in range(0, len(records), 64):
        batch = records[start : start + 64]
        scores = decode_embeddings([r["emb"] for r in batch]) @ tag_matrix.T
        top = np.argsort(-scores, axis=1)[:, :3]
        images = [_open(r["path"], captioner.input_side) for r in batch]
        captions = []
        with torch.inference_mode():
            for i in range(0, len(images), 32):
                pixels = captioner.image_processor(images=images[i : i + 32], return_tensors="pt")["pixel_values"]
                ids = captioner.model.generate(pixel_values=pixels, max_new_tokens=30, num_beams=1, do_sample=False)
                captions.extend(captioner.tokenizer.batch_decode(ids, skip_special_tokens=True))
            # the same prompt text as rsyn's (what the model reads must be the same on both sides)
            prompts = [
                template.render(r["texts"][0]["text"], c, [tags[j] for j in row]).completion
                for r, c, row in zip(batch, captions, top)
            ]
            for i in range(0, len(prompts), 16):
                ids = [x[-context:] for x in tokenizer(prompts[i : i + 16], verbose=False)["input_ids"]]
                width = max(map(len, ids))
                tokens = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
                new = lm.generate(
                    input_ids=tokens,
                    attention_mask=mask,
                    max_new_tokens=16,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )[:, width:]
                out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def chat_requests(records: list[dict], count: int) -> list[dict]:
    """The chat requests rsyn's server backend sends for `count` records (no caption, no tags)."""
    from rsyn.prompts import PromptTemplate

    template = PromptTemplate()
    return [
        {
            "model": "m",
            "max_tokens": 160,
            "temperature": 0.0,
            "seed": i,
            "messages": template.render(records[i % len(records)]["texts"][0]["text"], None, []).messages(),
        }
        for i in range(count)
    ]


def bare_client(url: str, bodies: list[dict], concurrency: int) -> None:
    """A bare thread pool of httpx clients sending the requests (no stream, no cleaning): the reference."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    with (
        httpx.Client(limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        replies = list(pool.map(lambda body: client.post(f"{url}/chat/completions", json=body).json(), bodies))
    assert all(r["choices"][0]["message"]["content"] for r in replies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=192)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (tiny models gain nothing from more; 0 = torch default)",
    )
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)

    with tempfile.TemporaryDirectory(prefix="rsyn-bench-caption-") as tmp:
        work = Path(tmp)
        models, records, source, tags = build_inputs(work, opts.records)
        cache = work / "cache"
        local = [
            source,
            "-o",
            work / "out.jsonl.zst",
            "--tags",
            tags,
            "--tag-threshold",
            "-1",
            "--max-tags",
            "3",
            "--captioner",
            models["captioner"],
            "--caption-beams",
            "1",
            "--llm-backend",
            "hf",
            "--llm-model",
            models["gpt2"],
            "--llm-max-tokens",
            "16",
            "--llm-api",
            "completion",
            "--cache-dir",
            cache,
            "--device",
            "cpu",
            "--path-root",
            harness.sample_data("images"),
            "--on-error",
            "skip",
            "--temperature",
            "0",
        ]
        rsyn_caption(local)  # warm-up: loads the models, fills the tag-embedding cache
        bare_loop(models, records[:32], tags, cache)
        best = harness.best_of(
            {
                "rsyn caption (CLI)": lambda: rsyn_caption(local),
                "bare model loop": lambda: bare_loop(models, records, tags, cache),
            },
            opts.repeat,
        )
        n = len(records)
        print(
            f"\n1. orchestration overhead, CPU ({torch.get_num_threads()} torch threads), {n} records, "
            f"{len(Path(tags).read_text().splitlines())} tags, best of {opts.repeat}; {harness.machine()}"
        )
        harness.print_table(
            ["", "seconds", "records/s", "ratio to bare"],
            [[name, s, n / s, harness.ratio(best["bare model loop"], s)] for name, s in best.items()],
        )
        print("target: rsyn caption >= 0.9x the bare loop")

        print(f"\n2. server backend against a loopback server answering after {opts.latency * 1000:.0f} ms")
        light = ["--max-tags", "0", "--captioner", "none", "--llm-backend", "openai", "--llm-model", "m"]
        light += ["--llm-timeout", "30"]
        rows = []
        for concurrency in map(int, opts.concurrency.split(",")):
            count = max(256, 64 * concurrency)  # 64+ latencies of work: fixed start-up costs fade
            server_input = work / f"server-{count}.jsonl"
            if not server_input.exists():
                import orjson

                server_input.write_bytes(
                    b"".join(orjson.dumps({**records[i % n], "id": f"s{i}"}) + b"\n" for i in range(count))
                )
            bodies = chat_requests(records, count)
            with loopback.serve("llm", opts.latency) as url:
                rsyn_args = [server_input, "-o", work / "server.jsonl.zst", *light]
                rsyn_args += ["--llm-url", url, "--llm-concurrency", concurrency]
                seconds = harness.best_of(
                    {
                        "rsyn": lambda args=rsyn_args: rsyn_caption(args),
                        "bare": lambda url=url, bodies=bodies, c=concurrency: bare_client(url, bodies, c),
                    },
                    opts.repeat,
                )
            ideal = concurrency / opts.latency
            rate, bare = count / seconds["rsyn"], count / seconds["bare"]
            rows.append(
                [concurrency, count, rate, bare, ideal, f"{rate / ideal:.0%}", harness.ratio(1 / bare, 1 / rate)]
            )
        harness.print_table(
            ["concurrency", "records", "rsyn records/s", "bare records/s", "ideal", "rsyn / ideal", "rsyn / bare"],
            rows,
        )


if __name__ == "__main__":
    main()
