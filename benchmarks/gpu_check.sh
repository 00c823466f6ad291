#!/usr/bin/env bash
# One command that verifies and measures every GPU path of rsyn and prints one table (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh [--device cuda:0] [--only clip_embed,perplexity] [--json rows.json]
#
# Needs the working tree and a Python with torch, torchvision, transformers, timm, numpy and pillow
# (PYTHON=/path/to/python to pick one); what else it needs (open_clip, orjson, zstandard, typer, regex, ...)
# travels in .gpu-deps, built by benchmarks/gpu_deps.sh. spaCy, pyarrow and scipy are not needed; faiss and vLLM
# are checked when importable. No network: the models are built here.
# Without CUDA every line says "skipped: no CUDA" and it exits 0; with CUDA it exits 1 on a mismatch or error.
# The run is capped at 8 minutes (the checks themselves stop starting new work after --budget, 420 s).
set -euo pipefail
cd "$(dirname "$0")/.."
# .gpu-deps (benchmarks/gpu_deps.sh): open_clip and rsyn's light dependencies, for a machine that lacks them
DEPS=""
[ -d .gpu-deps ] && DEPS=":$PWD/.gpu-deps"
export PYTHONPATH="$PWD$DEPS${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false NO_ALBUMENTATIONS_UPDATE=1
exec timeout --kill-after=10 480 "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
