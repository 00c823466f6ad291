#!/usr/bin/env python
"""Benchmark `rsyn embed` against a bare open_clip loop, in one run, on the same data and model.

    .venv/bin/python benchmarks/embed_vs_bare.py [--images 512] [--texts 2048] [--model ViT-B-32] [--device cpu]

Reference: the model alone (open_clip's encode_image / encode_text), called on
batches that were decoded, preprocessed (or tokenized, padded to the full
context) and stacked before the clock starts. For images that is the most a
pipeline could reach; for texts rsyn beats it by cutting the padding. Measured: the `rsyn embed` command line on image records pointing to
JPEG files (real web photos from the sample data's images/, copied under
distinct names) and on text records (real LAION captions), timed by its own
--stats (`embed_seconds`: reading, loading, decoding, preprocessing,
tokenizing, model, encoding and writing; not the process start or the model
load, which are reported apart). Random weights (`--pretrained random`): the
speed of a model does not depend on its weights. Each side runs --rounds
times, alternating, best taken (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import harness  # benchmarks/harness.py


def make_inputs(work: Path, n_images: int, n_texts: int) -> tuple[Path, Path, list[Path], list[str]]:
    import pyarrow.parquet as pq

    photos = sorted(harness.sample_data("images").glob("*.jpg"))
    image_dir = work / "images"
    image_dir.mkdir()
    paths = []
    sizes = []
    for i in range(n_images):
        photo = photos[i % len(photos)]
        path = image_dir / f"{i:06d}.jpg"
        shutil.copyfile(photo, path)
        paths.append(path)
        sizes.append(tuple(int(x) for x in photo.stem.split("_")))  # the sample photos are named W_H.jpg
    captions = [
        t for t in pq.read_table(harness.sample_data("laion-10k.parquet"), columns=["TEXT"])["TEXT"].to_pylist() if t
    ]
    texts = [captions[i % len(captions)] for i in range(n_texts)]
    image_records = work / "images.jsonl"
    with open(image_records, "w") as fh:
        for i, (path, (width, height)) in enumerate(zip(paths, sizes)):
            # sizes known, as extract gives them: every image is embedded, as in the bare loop
            fh.write(
                json.dumps(
                    {
                        "id": f"i{i}",
                        "kind": "image",
                        "doc": "bench",
                        "pos": i,
                        "path": str(path),
                        "width": width,
                        "height": height,
                    }
                )
                + "\n"
            )
    text_records = work / "texts.jsonl"
    with open(text_records, "w") as fh:
        for i, text in enumerate(texts):
            fh.write(json.dumps({"id": f"t{i}", "kind": "text", "doc": "bench", "pos": i, "text": text}) + "\n")
    return image_records, text_records, paths, texts


def bare_loop(model_name: str, device: str, batch: int, paths: list[Path], texts: list[str]):
    """Items/s of the model alone on pre-made batches (images, texts)."""
    import torch
    from PIL import Image

    from rsyn.models.clip import load_clip

    clip = load_clip(model_name, "random", device)  # the same loader, so the same model and precision
    image_batches = []
    for start in range(0, len(paths), batch):
        tensors = [clip.preprocess(Image.open(p).convert("RGB")) for p in paths[start : start + batch]]
        image_batches.append(torch.stack(tensors))
    token_batches = [clip.tokenize(texts[s : s + batch]) for s in range(0, len(texts), batch)]
    model = clip.model

    def run_images():
        with torch.inference_mode():
            for b in image_batches:
                f = model.encode_image(b.to(device, dtype=clip.dtype))
                (f / f.norm(dim=-1, keepdim=True)).float().cpu()

    def run_texts():
        with torch.inference_mode():
            for t in token_batches:
                f = model.encode_text(t.to(device))
                (f / f.norm(dim=-1, keepdim=True)).float().cpu()

    with torch.inference_mode():  # first calls set up kernels: not part of the steady state
        model.encode_image(image_batches[0][:2].to(device, dtype=clip.dtype))
        model.encode_text(token_batches[0][:2].to(device))

    def rate(fn, n):
        """Items/s of fn, the GPU's queue drained before and after."""

        def synced():
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return n / harness.timed(synced)[1]

    return rate(run_images, len(paths)), rate(run_texts, len(texts))


def rsyn_embed(records: Path, out: Path, model_name: str, device: str, batch: int) -> dict:
    """The command's --stats "stage" numbers, with its wall seconds and peak RSS (MiB) as a process."""
    stats = out.with_suffix(".stats.json")
    wall, _cpu, rss = harness.measure(
        harness.rsyn(
            "embed", records, "--model", model_name, "--pretrained", "random", "--device", device,
            "--batch-size", batch, "--path-root", records.parent, "-o", out, "--stats", stats, "--quiet",
        )
    )  # fmt: skip
    summary = json.loads(stats.read_text())
    if summary["out"] != summary["in"]:
        sys.exit(f"rsyn embed dropped records of {records}: {summary['dropped']} {summary['errors']}")
    return {**summary["stage"], "wall": wall, "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=0, help="0: 256 on GPU, 32 on CPU (rsyn's default)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import torch

    from rsyn.models.device import resolve_device

    device = resolve_device(args.device)
    batch = args.batch_size or (256 if device.startswith("cuda") else 32)
    card = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory(prefix="rsyn-bench-embed-") as tmp:
        work = Path(tmp)
        image_records, text_records, paths, texts = make_inputs(work, args.images, args.texts)
        best = {"bare_images": 0.0, "bare_texts": 0.0, "rsyn_images": 0.0, "rsyn_texts": 0.0}
        walls = {}
        for _ in range(args.rounds):
            bare_images, bare_texts = bare_loop(args.model, device, batch, paths, texts)
            best["bare_images"] = max(best["bare_images"], bare_images)
            best["bare_texts"] = max(best["bare_texts"], bare_texts)
            r = rsyn_embed(image_records, work / "images.out.zst", args.model, device, batch)
            best["rsyn_images"] = max(best["rsyn_images"], r["images_per_second"])
            best["share_images"] = max(best.get("share_images", 0), r["model_seconds"] / r["embed_seconds"])
            walls["images"] = (r["wall"], r["model_load_seconds"], r["rss"])
            r = rsyn_embed(text_records, work / "texts.out.zst", args.model, device, batch)
            best["rsyn_texts"] = max(best["rsyn_texts"], r["texts_per_second"])
            best["share_texts"] = max(best.get("share_texts", 0), r["model_seconds"] / r["embed_seconds"])
            walls["texts"] = (r["wall"], r["model_load_seconds"], r["rss"])
    print(
        f"rsyn embed benchmark: {args.model} (random weights), {card}, device {device}, batch {batch}, "
        f"torch {torch.__version__}, best of {args.rounds}; {harness.machine()}"
    )
    print()
    # "in model calls": the share of rsyn's embed time spent inside the model; the rest is what the
    # pipeline failed to hide (reading, decoding, tokenizing, writing)
    harness.print_table(
        ["workload", "bare open_clip loop (items/s)", "rsyn embed (items/s)", "ratio", "rsyn time in model calls"],
        [
            [
                f"{args.images} images: JPEG files -> decode, preprocess, embed",
                best["bare_images"],
                best["rsyn_images"],
                harness.ratio(1 / best["bare_images"], 1 / best["rsyn_images"]),
                f"{best['share_images']:.0%}",
            ],
            [
                f"{args.texts} texts: LAION captions -> tokenize, embed",
                best["bare_texts"],
                best["rsyn_texts"],
                harness.ratio(1 / best["bare_texts"], 1 / best["rsyn_texts"]),
                f"{best['share_texts']:.0%}",
            ],
        ],
    )
    print()
    for kind, (wall, load, rss) in walls.items():
        print(
            f"{kind}: whole command {wall:.1f}s, of which model load {load:.1f}s (process start and imports apart), "
            f"peak RSS {rss:.0f} MiB"
        )


if __name__ == "__main__":
    main()
