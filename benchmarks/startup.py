#!/usr/bin/env python
"""Start-up of every rsyn stage: wall time and peak RSS of the command on a 1-record input.

    make -C examples            # once: the example's models, corpus and intermediate files
    PYTHONPATH=$PWD python benchmarks/startup.py [--work examples/work] [--repeat 3]

On a 1-record input a command's whole run is its start-up: the interpreter, the imports, the
device question, the model load (if any) and the first record. Each stage is compared with
`python -c pass` and with a bare import of the libraries the stage needs (what any program using
them pays before its first line of work). Inputs are the first record of the right kind from the
example pipeline's files in --work, so every stage sees a real record. Each command runs --repeat
times; the median wall time and the largest peak RSS are shown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "OMP_NUM_THREADS": "1",
}
SEMDEDUP = ["--perceptual-threshold", "0.9995", "--semantic-threshold", "0.999"]


# A fork of this process would start with this process's memory counted in its peak RSS (Linux
# keeps the high-water mark across exec): a tiny interpreter forks and execs each command instead.
_LAUNCH = (
    "import os, sys, time\n"
    "start = time.perf_counter(); pid = os.fork()\n"
    "if pid == 0: os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(f'{time.perf_counter() - start} {usage.ru_utime + usage.ru_stime} "
    "{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}')\n"
)


def measure(argv: list[str], repeat: int, env: dict) -> tuple[float, float, float]:
    """(median wall seconds, median CPU seconds (user + system), peak RSS MiB) of a command run `repeat` times.

    On a loaded machine the wall time grows with the load; the CPU time much less, so both are shown."""
    walls, cpus, peaks = [], [], []
    with tempfile.NamedTemporaryFile() as result:
        for _ in range(repeat):
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _LAUNCH, result.name, *argv],
                env=env,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            )
            wall, cpu, rss, code = Path(result.name).read_text().split()
            if proc.returncode or int(code):
                sys.exit(f"failed ({code}): {' '.join(argv)}\n{proc.stderr.decode(errors='replace')[-2000:]}")
            walls.append(float(wall))
            cpus.append(float(cpu))
            peaks.append(int(rss) / 1024)  # KiB on Linux
    return statistics.median(walls), statistics.median(cpus), max(peaks)


def first_record(path: Path, out: Path, keep=lambda r: True) -> Path:
    from rsyn.stream import read_records, write_records

    for record in read_records([str(path)]):
        if keep(record):
            write_records(str(out), [record])
            return out
    sys.exit(f"no suitable record in {path}")


def one_document(corpus: Path, out: Path) -> Path:
    import pyarrow.parquet as pq

    table = pq.read_table(sorted((corpus / "obelics").glob("*.parquet"))[0])
    pq.write_table(table.slice(0, 1), out)
    return out


def stages(work: Path, tmp: Path) -> list[tuple[str, bool, list[str], str]]:
    """(name, the model it runs (True: a torch model, "spaCy", False: none), rsyn arguments, the libraries
    imported bare as the reference)."""
    m = work / "models"
    clip = f"local-dir:{(m / 'clip').resolve()}"
    doc = one_document(work / "corpus", tmp / "doc.parquet")
    extracted = first_record(work / "extracted.jsonl.zst", tmp / "extracted.jsonl")
    embedded = first_record(work / "embedded.jsonl.zst", tmp / "embedded.jsonl")
    sentence = first_record(work / "sentences.jsonl.zst", tmp / "sentence.jsonl")
    image = first_record(work / "images.jsonl.zst", tmp / "image.jsonl")
    retrieved = first_record(work / "retrieved.jsonl.zst", tmp / "retrieved.jsonl", lambda r: r.get("texts"))
    captioned = first_record(work / "captioned.jsonl.zst", tmp / "captioned.jsonl")
    syn = first_record(work / "syn_embedded.jsonl.zst", tmp / "syn.jsonl")
    balanced = first_record(work / "balanced.jsonl.zst", tmp / "balanced.jsonl")
    images = str(work / "corpus" / "images")
    return [
        ("extract (no ppl model)", "spaCy", ["extract", str(doc), "--disable", "ppl"], "pyarrow.parquet, spacy"),
        (
            "extract --ppl-model",
            True,
            ["extract", str(doc), "--ppl-model", str(m / "gpt2"), "--min-ppl", "0", "--max-ppl", "1e12"],
            "pyarrow.parquet, spacy, torch, transformers",
        ),
        ("dedup exact,near", False, ["dedup", str(extracted), "--mode", "exact,near"], "datasketch"),
        ("embed (text)", True, ["embed", str(sentence), "--model", clip], "open_clip"),
        ("embed (image)", True, ["embed", str(image), "--model", clip, "--images", images], "open_clip"),
        ("dedup semantic", False, ["dedup", str(embedded), "--mode", "semantic", *SEMDEDUP], "numpy, faiss"),
        ("cat", False, ["cat", str(embedded), "--kind", "text"], "orjson, zstandard"),
        ("index", False, ["index", str(sentence), "--clusters", "1", "-o", str(tmp / "index")], "numpy, faiss"),
        ("retrieve", False, ["retrieve", str(image), "--index", str(work / "index")], "numpy, faiss"),
        (
            "caption",
            True,
            [
                "caption",
                str(retrieved),
                "--images",
                images,
                "--tags",
                "examples/tags.txt",
                "--tag-threshold",
                "-1",
                "--max-tags",
                "5",
                "--model",
                clip,
                "--captioner",
                str(m / "captioner"),
                "--llm-backend",
                "hf",
                "--llm-model",
                str(m / "gpt2"),
            ],
            "open_clip, transformers",
        ),
        (
            "embed (syn_text)",
            True,
            ["embed", str(captioned), "--model", clip, "--text-field", "syn_text", "--emb-field", "syn_emb"],
            "open_clip",
        ),
        (
            "balance",
            False,
            ["balance", str(syn), "--sim-range", "auto", "--clusters", "1", "--per-cluster", "20"],
            "numpy, faiss",
        ),
        (
            "pack",
            False,
            ["pack", str(balanced), "--extra-columns", "--overwrite", "-o", str(tmp / "packed")],
            "pyarrow.parquet",
        ),
        (
            "report",
            False,
            [
                "report",
                str(work / "stats" / "pack.json"),
                "--packed",
                str(work / "packed"),
                "-o",
                str(tmp / "report.html"),
            ],
            "numpy, pyarrow.parquet",  # no figure to draw from one stats file: no matplotlib
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT / "examples" / "work",
        help="the example pipeline's work directory (make -C examples)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated stage names (prefixes) to run")
    args = ap.parse_args()
    if not (args.work / "balanced.jsonl.zst").exists():
        sys.exit(f"{args.work}: run the example pipeline first (make -C examples)")
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    py = sys.executable
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rsyn-bench-startup-") as tmp:
        rows = stages(args.work.resolve(), Path(tmp))
        if args.only:
            rows = [r for r in rows if any(r[0].startswith(p) for p in args.only.split(","))]
        base_wall, base_cpu, base_rss = measure([py, "-c", "pass"], args.repeat, env)
        print(
            f"rsyn start-up on a 1-record input: median of {args.repeat}, peak RSS the largest; "
            f"{os.cpu_count()} cores, load average {load[0]:.1f} at start"
        )
        print()
        print(
            "| stage | model | rsyn: seconds | rsyn: CPU seconds | rsyn: peak MiB | bare import: seconds | "
            "bare import: CPU seconds | bare import: MiB | rsyn / bare import (s) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| `python -c pass` | | {base_wall:.2f} | {base_cpu:.2f} | {base_rss:.0f} | | | | |")
        bare_cache: dict[str, tuple[float, float, float]] = {}
        for name, model, argv, libraries in rows:
            wall, cpu, rss = measure([py, "-m", "rsyn", *argv, "--quiet"], args.repeat, env)
            if libraries not in bare_cache:
                bare_cache[libraries] = measure([py, "-c", f"import {libraries}"], args.repeat, env)
            bare_wall, bare_cpu, bare_rss = bare_cache[libraries]
            kind = model if isinstance(model, str) else "yes" if model else "no"
            print(
                f"| {name} | {kind} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {bare_wall:.2f} "
                f"(`{libraries}`) | {bare_cpu:.2f} | {bare_rss:.0f} | {wall / bare_wall:.2f}x |",
                flush=True,
            )
        print()
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
