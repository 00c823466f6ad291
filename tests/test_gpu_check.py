"""benchmarks/gpu_check.sh: on a machine without CUDA every GPU line is skipped and it exits 0; with
--device cpu --quick it runs every check's code (CPU against CPU, tiny sizes) and each comes out ok."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["clip_embed", "perplexity", "faiss_kmeans", "faiss_search", "captioner", "hf_llm", "vllm"]


def test_without_cuda_every_line_is_skipped():
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a GPU machine
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "rsyn GPU check on cuda"
    body = {line.split()[0]: line for line in lines[2:]}
    assert sorted(body) == sorted(CHECKS)
    assert all("skipped: no CUDA" in line for line in body.values())


def test_every_check_runs_cpu_against_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--json", rows_file],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = {row["check"]: row["status"] for row in json.loads(rows_file.read_text())}
    assert status.pop("vllm").startswith("skipped")  # vLLM needs CUDA
    assert status == {
        name: "ok"
        for name in [
            "build_models",
            "clip_embed",
            "clip_embed_speed",
            "perplexity",
            "faiss_kmeans",
            "faiss_search",
            "captioner",
            "hf_llm",
        ]
    }
