"""Verify and measure every GPU path of rsyn in one run, with models built on the spot (no download).

    benchmarks/gpu_check.sh                      # on a CUDA machine: the whole check, one table
    python benchmarks/gpu_check.py --device cpu --quick   # CPU against CPU, tiny sizes: the code paths only

Each line of the table says ok, mismatch, skipped (why) or error (why), with its numbers:

- clip_embed    `rsyn embed` on DEVICE (fp16) against CPU fp32: the same embeddings within tolerance
                (min cosine); images/s of `rsyn embed` against a bare open_clip loop (a torch DataLoader
                with workers, the same model, batch and precision) on the same device.
- perplexity    perplexities on DEVICE (bf16, else fp16) against CPU fp32: the same keep/drop decisions
                for thresholds at the CPU quartiles, except where the CPU value lies within 2% of a
                threshold; the median relative difference under 2%.
- faiss_kmeans  k-means with faiss on the GPU against the CPU: objectives within 1%, speed ratio.
- faiss_search  exact inner-product search on the GPU against the CPU: the same top-10 ids, speed ratio.
- captioner     the image captioner on DEVICE: in fp32 the same captions as on CPU; captions/s in auto dtype.
- hf_llm        `--llm-backend hf` on DEVICE: in fp32 the same greedy generations as on CPU; prompts/s.
- vllm          `--llm-backend vllm` when vLLM imports: it generates; prompts/s.

The models have random weights (bin/make-tiny-models' builders; the CLIP checks use ViT-B-32 with seeded
random weights saved to one checkpoint, a real-size tower): their outputs mean nothing, but the numeric paths,
dtypes and batching are the real ones. Without CUDA every line says "skipped: no CUDA" and the exit status
is 0; on a GPU it is 1 when a line says mismatch or error. The whole run stays within --budget seconds
(default 420): a check that would start after it is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHECKS = ["clip_embed", "perplexity", "faiss_kmeans", "faiss_search", "captioner", "hf_llm", "vllm"]
FIXTURE = ROOT / "tests" / "data" / "mmc4_shard151_107docs.jsonl.zst"


class Sizes:
    """How much work each check does: the full check on a GPU, or --quick (CI, CPU)."""

    def __init__(self, quick: bool, clip_model: str | None = None):
        self.quick = quick
        # the CLIP of the clip checks: the tiny one (quick), or a real-size tower with seeded random weights
        self.clip_model = clip_model or (None if quick else "ViT-B-32")
        self.equal_images = 4 if quick else 64  # images compared between devices
        self.speed_images = 4 if quick else 4096  # images for the images/s comparison (quick: the same 4)
        self.image_side = 64 if quick else 256
        self.texts = 32 if quick else 512
        self.faiss_n, self.faiss_d, self.faiss_k = (2000, 32, 16) if quick else (200_000, 512, 1024)
        self.faiss_queries = 200 if quick else 10_000
        self.captions = 2 if quick else 64
        self.caption_tokens = 8 if quick else 30
        self.prompts = 4 if quick else 64


def row(check: str, status: str, numbers: str = "", note: str = "") -> dict:
    return {"check": check, "status": status, "numbers": numbers, "note": note}


# --------------------------------------------------------------------------- inputs made on the spot


def make_images(directory: Path, count: int, side: int) -> list[Path]:
    """Seeded JPEGs with structure (gradients and blocks), so that encoders see varied inputs."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    y, x = np.mgrid[0:side, 0:side] / side
    for i in range(count):
        a, b, c = rng.uniform(0, 1, 3)
        pixels = np.stack([np.sin(6 * a * x + i), np.cos(6 * b * y), (x * c + y * (1 - c))], axis=-1)
        pixels = (pixels - pixels.min()) / (np.ptp(pixels) + 1e-9) * 255
        block = rng.integers(0, side // 2)
        pixels[block : block + side // 4, block : block + side // 4] = rng.integers(0, 255, 3)
        path = directory / f"{i:05d}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def real_sentences(count: int) -> list[str]:
    """Paragraphs of the real-prose fixture, cut to 300 characters (the perplexity inputs)."""
    from rsyn.stream import read_records

    texts = []
    for doc in read_records([str(FIXTURE)]):
        for text in doc.get("text_list", []):
            if len(text.split()) >= 3:
                texts.append(text[:300])
            if len(texts) == count:
                return texts
    return texts


def rsyn_cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "rsyn", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


# --------------------------------------------------------------------------- checks


def check_clip_embed(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    from rsyn.records import decode_embeddings
    from rsyn.stream import read_records

    images = make_images(work / "images", max(sizes.equal_images, sizes.speed_images), sizes.image_side)
    with open(work / "images.jsonl", "w") as fh:
        for i, path in enumerate(images):
            fh.write(
                json.dumps(
                    {
                        "id": f"i{i}",
                        "kind": "image",
                        "doc": "d",
                        "pos": i,
                        "path": str(path),
                        "width": sizes.image_side,
                        "height": sizes.image_side,
                    }
                )
                + "\n"
            )
    with open(work / "equal.jsonl", "w") as fh:
        fh.writelines(open(work / "images.jsonl").readlines()[: sizes.equal_images])

    def embed(inputs: str, dev: str, model: str, pretrained: str | None, tag: str) -> tuple[np.ndarray, float]:
        out, stats = work / f"{tag}.jsonl.zst", work / f"{tag}.stats.json"
        args = ["embed", work / inputs, "--model", model, "--device", dev, "-o", out, "--stats", stats, "--quiet"]
        if pretrained:
            args += ["--pretrained", pretrained]
        proc = rsyn_cli(args, work)
        if proc.returncode != 0:
            raise RuntimeError(f"rsyn embed on {dev}: {proc.stderr.strip().splitlines()[-1:]}")
        records = [r for r in read_records([str(out)]) if "emb" in r]
        return decode_embeddings([r["emb"] for r in records]), json.loads(stats.read_text())["seconds"]

    rows = []
    model, pretrained = models["clip"], None
    if sizes.clip_model:
        # one checkpoint file for both devices: random weights drawn on CPU, so CPU and GPU load the same ones
        model, pretrained = sizes.clip_model, str(random_clip_checkpoint(sizes.clip_model, work))
    cpu, _ = embed("equal.jsonl", "cpu", model, pretrained, "cpu")
    dev, seconds = embed("equal.jsonl", device, model, pretrained, "dev")
    cosine = float(np.min(np.sum(cpu * dev, axis=1))) if len(cpu) == len(dev) and len(cpu) else float("nan")
    # fp16 against fp32; fp32 against itself still differs in the last bits with batch composition and threads
    tolerance = 0.99 if device.startswith("cuda") else 0.999
    rows.append(
        row(
            "clip_embed",
            "ok" if cosine >= tolerance else "mismatch",
            f"{len(cpu)} images, min cosine {cosine:.5f} (>= {tolerance})",
            f"{model}: {device} {'fp16' if device.startswith('cuda') else 'fp32'} vs cpu fp32",
        )
    )
    if not sizes.quick:
        _, seconds = embed("images.jsonl", device, model, pretrained, "speed")
    ours = sizes.speed_images / seconds
    bare = bare_open_clip_rate(images[: sizes.speed_images], model, pretrained, device)
    rows.append(
        row(
            "clip_embed_speed",
            "ok",
            f"rsyn {ours:,.1f} img/s, bare open_clip loop {bare:,.1f} img/s, ratio {ours / bare:.2f}",
            f"{sizes.speed_images} images of {sizes.image_side}px; model load in both, rsyn's imports too",
        )
    )
    return rows


def random_clip_checkpoint(name: str, work: Path) -> Path:
    import open_clip
    import torch

    path = work / f"{name}-random.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(name, pretrained=None).state_dict(), path)
    return path


def bare_open_clip_rate(paths: list[Path], model: str, pretrained: str | None, device: str) -> float:
    """The reference: open_clip's own model and transform, a DataLoader with workers, batches of 256."""
    import open_clip
    import torch
    from PIL import Image

    start = time.perf_counter()
    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained)
    half = device.startswith("cuda")
    net = net.to(device).eval()
    if half:
        net = net.half()

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return preprocess(Image.open(paths[i]).convert("RGB"))

    workers = min(8, os.cpu_count() or 1) if half else 0
    loader = torch.utils.data.DataLoader(Files(), batch_size=256, num_workers=workers, pin_memory=half)
    with torch.inference_mode():
        for batch in loader:
            batch = batch.to(device, non_blocking=True)
            features = net.encode_image(batch.half() if half else batch)
            features = torch.nn.functional.normalize(features.float(), dim=-1).cpu()
    if half:
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


# A flip of a keep/drop decision is excused only for a text whose CPU perplexity lies this close (relative)
# to a threshold; the median relative difference must stay under it too.
HALF_PRECISION_PPL_ERROR = 0.02


def check_perplexity(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    from rsyn.models.lm import load_causal_lm, perplexities

    texts = real_sentences(sizes.texts)
    model, tokenizer = load_causal_lm(models["gpt2"], "cpu", "float32")
    start = time.perf_counter()
    cpu = perplexities(texts, model, tokenizer)
    cpu_rate = len(texts) / (time.perf_counter() - start)
    model, tokenizer = load_causal_lm(models["gpt2"], device, "auto")
    start = time.perf_counter()
    dev = perplexities(texts, model, tokenizer)
    dev_rate = len(texts) / (time.perf_counter() - start)
    low, high = np.quantile(cpu, [0.25, 0.75])
    keep_cpu, keep_dev = (cpu >= low) & (cpu <= high), (dev >= low) & (dev <= high)
    relative = np.abs(dev - cpu) / cpu
    flips = np.flatnonzero(keep_cpu != keep_dev)
    near = np.minimum(np.abs(cpu - low) / low, np.abs(cpu - high) / high)
    unexplained = [int(i) for i in flips if near[i] > HALF_PRECISION_PPL_ERROR]
    dtype = str(model.dtype).replace("torch.", "")
    close = float(np.median(relative)) <= HALF_PRECISION_PPL_ERROR
    return [
        row(
            "perplexity",
            "ok" if close and not unexplained else "mismatch",
            f"{len(texts)} texts, {len(flips)} decisions differ ({len(unexplained)} not within "
            f"{HALF_PRECISION_PPL_ERROR:.0%} of a threshold), rel. diff median {np.median(relative):.1e} max "
            f"{relative.max():.1e}; {dev_rate:,.0f} vs {cpu_rate:,.0f} texts/s",
            f"{device} {dtype} vs cpu float32, thresholds at the CPU quartiles",
        )
    ]


def faiss_gpu_reason(device: str) -> str | None:
    import importlib.util

    from rsyn.vectors import use_faiss_gpu

    if importlib.util.find_spec("faiss") is None:
        return "skipped: faiss is not installed"

    if device.startswith("cuda") and not use_faiss_gpu(device):
        return "skipped: faiss has no GPU support here (faiss-cpu build or no GPU visible to faiss)"
    return None


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def check_faiss_kmeans(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    from rsyn.vectors import nearest_centroid, train_kmeans

    reason = faiss_gpu_reason(device)
    if reason:
        return [row("faiss_kmeans", reason)]
    x = unit_vectors(sizes.faiss_n, sizes.faiss_d, 0)
    timings, objectives = {}, {}
    for dev in ("cpu", device):
        start = time.perf_counter()
        centroids = train_kmeans(x, sizes.faiss_k, seed=0, niter=10, device=dev)
        timings[dev] = time.perf_counter() - start
        objectives[dev] = float(nearest_centroid(x, centroids, device="cpu")[1].mean())
    gap = abs(objectives[device] - objectives["cpu"]) / abs(objectives["cpu"])
    return [
        row(
            "faiss_kmeans",
            "ok" if gap <= 0.01 else "mismatch",
            f"objective {objectives[device]:.4f} vs {objectives['cpu']:.4f} (gap {gap:.2%}); "
            f"{timings['cpu'] / timings[device]:.1f}x faster than cpu",
            f"{sizes.faiss_n:,} x {sizes.faiss_d}, k={sizes.faiss_k}, 10 iterations",
        )
    ]


def check_faiss_search(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    from rsyn.vectors import flat_ip_index

    reason = faiss_gpu_reason(device)
    if reason:
        return [row("faiss_search", reason)]
    base = unit_vectors(sizes.faiss_n // 2, sizes.faiss_d, 1)
    queries = unit_vectors(sizes.faiss_queries, sizes.faiss_d, 2)
    ids, timings = {}, {}
    for dev in ("cpu", device):
        index = flat_ip_index(base, dev)
        start = time.perf_counter()
        _, ids[dev] = index.search(queries, 10)
        timings[dev] = time.perf_counter() - start
    same = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids["cpu"], ids[device])]))
    return [
        row(
            "faiss_search",
            "ok" if same >= 0.999 else "mismatch",
            f"top-10 overlap {same:.4f}; {timings['cpu'] / max(timings[device], 1e-9):.1f}x faster than cpu",
            f"{len(queries):,} queries over {len(base):,} x {sizes.faiss_d}",
        )
    ]


def check_captioner(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    from PIL import Image

    from rsyn.models.captioner import load_captioner

    paths = make_images(work / "caption_images", sizes.captions, 64)
    images = [Image.open(p).convert("RGB") for p in paths]
    tokens = sizes.caption_tokens
    cpu = load_captioner(models["captioner"], "cpu", "float32").caption(images, max_new_tokens=tokens)
    exact = load_captioner(models["captioner"], device, "float32").caption(images, max_new_tokens=tokens)
    fast = load_captioner(models["captioner"], device, "auto")
    start = time.perf_counter()
    captions = fast.caption(images, max_new_tokens=tokens)
    rate = len(images) / (time.perf_counter() - start)
    same = sum(a == b for a, b in zip(cpu, exact))
    return [
        row(
            "captioner",
            "ok" if same == len(images) and all(captions) else "mismatch",
            f"{same}/{len(images)} fp32 captions equal to cpu; {rate:,.1f} captions/s ({fast.dtype})",
            "tiny random BLIP, beam search 3",
        )
    ]


def _prompts(count: int):
    from rsyn.prompts import Prompt

    texts = real_sentences(count)
    # short: the tiny GPT-2 has 128 positions, and vLLM does not cut a prompt that is too long
    return [Prompt(system="", user=t[:60], completion=f"Describe: {t[:60]}\nDescription:") for t in texts]


def check_hf_llm(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    from rsyn.llm import HFBackend, Sampling

    prompts = _prompts(sizes.prompts)
    seeds = list(range(len(prompts)))
    sampling = Sampling(max_tokens=24)
    cpu = HFBackend(models["gpt2"], sampling, device="cpu", dtype="float32").generate(prompts, seeds)
    exact = HFBackend(models["gpt2"], sampling, device=device, dtype="float32").generate(prompts, seeds)
    fast = HFBackend(models["gpt2"], sampling, device=device, dtype="auto")
    start = time.perf_counter()
    out = fast.generate(prompts, seeds)
    rate = len(prompts) / (time.perf_counter() - start)
    same = sum(a.text == b.text for a, b in zip(cpu, exact))
    failed = sum(g.text is None for g in out)
    return [
        row(
            "hf_llm",
            "ok" if same == len(prompts) and not failed else "mismatch",
            f"{same}/{len(prompts)} fp32 greedy generations equal to cpu; {rate:,.1f} prompts/s",
            "tiny random GPT-2, greedy",
        )
    ]


def check_vllm(device: str, work: Path, sizes: Sizes, models: dict) -> list[dict]:
    import importlib.util

    if not device.startswith("cuda"):
        return [row("vllm", "skipped: vLLM needs CUDA")]
    if importlib.util.find_spec("vllm") is None:
        return [row("vllm", "skipped: vLLM is not installed")]
    from rsyn.llm import Sampling, VLLMBackend

    prompts = _prompts(sizes.prompts)
    backend = VLLMBackend(
        models["gpt2"], Sampling(max_tokens=24), device=device, gpu_memory_utilization=0.3, max_model_len=128
    )
    start = time.perf_counter()
    out = backend.generate(prompts, list(range(len(prompts))))
    rate = len(prompts) / (time.perf_counter() - start)
    backend.close()
    failed = sum(g.text is None for g in out)
    return [
        row(
            "vllm",
            "ok" if not failed else "mismatch",
            f"{len(prompts) - failed}/{len(prompts)} generated; {rate:,.1f} prompts/s",
            "tiny random GPT-2",
        )
    ]


# --------------------------------------------------------------------------- the run


def build_models(work: Path) -> dict:
    from rsyn.testing import build_tiny_captioner, build_tiny_clip, build_tiny_gpt2

    return {
        "clip": build_tiny_clip(work / "clip", seed=0),
        "gpt2": str(build_tiny_gpt2(work / "gpt2", seed=0)),
        "captioner": str(build_tiny_captioner(work / "captioner", seed=0)),
    }


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def run_checks(device: str, quick: bool, budget: float, only: list[str], clip_model: str | None = None) -> list[dict]:
    if device.startswith("cuda") and not cuda_available():
        return [row(name, "skipped: no CUDA") for name in only]
    start = time.perf_counter()
    sizes = Sizes(quick, clip_model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsyn-gpu-check-") as tmp:
        work = Path(tmp)
        models = build_models(work)
        rows.append(row("build_models", "ok", f"{time.perf_counter() - start:.1f} s", "tiny CLIP, GPT-2, BLIP"))
        for name in only:
            if time.perf_counter() - start > budget:
                rows.append(row(name, f"skipped: the time budget ({budget:.0f} s) is spent"))
                continue
            began = time.perf_counter()
            try:
                found = globals()[f"check_{name}"](device, work, sizes, models)
            except Exception as exc:  # one broken path must not hide the others
                message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                found = [row(name, f"error: {type(exc).__name__}: {message}")]
            for line in found:
                line["seconds"] = round(time.perf_counter() - began, 1)
            rows.extend(found)
    return rows


def render(rows: list[dict], device: str) -> str:
    widths = [
        max(len("check"), *(len(r["check"]) for r in rows)),
        max(len("status"), *(len(r["status"]) for r in rows)),
    ]
    lines = [f"rsyn GPU check on {device}", f"{'check':<{widths[0]}}  {'status':<{widths[1]}}  numbers"]
    for r in rows:
        extra = "; ".join(part for part in (r["numbers"], r["note"]) if part)
        seconds = f" [{r['seconds']} s]" if "seconds" in r else ""
        lines.append(f"{r['check']:<{widths[0]}}  {r['status']:<{widths[1]}}  {extra}{seconds}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Verify and measure rsyn's GPU paths (one table).")
    parser.add_argument("--device", default="cuda", help="the device to check against cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: exercises the code paths (CI)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later checks are skipped after it")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--clip-model",
        help="open_clip architecture for the clip checks, with seeded random "
        "weights (default ViT-B-32; --quick: the tiny CLIP)",
    )
    args = parser.parse_args()
    only = [name for name in args.only.split(",") if name]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks: {', '.join(unknown)}")
    rows = run_checks(args.device, args.quick, args.budget, only, args.clip_model)
    print(render(rows, args.device))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(r["status"].startswith(("mismatch", "error")) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
