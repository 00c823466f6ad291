#!/usr/bin/env bash
# One command that verifies and measures every GPU path of rsyn and prints one table (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh [--device cuda:0] [--only clip_embed,perplexity] [--json rows.json]
#
# Needs the working tree and a Python with torch, transformers, timm, numpy, open_clip_torch, faiss and
# spaCy-free rsyn dependencies (PYTHON=/path/to/python to pick one). No network: the models are built here.
# Without CUDA every line says "skipped: no CUDA" and it exits 0; with CUDA it exits 1 on a mismatch or error.
# The run is capped at 8 minutes (the checks themselves stop starting new work after --budget, 420 s).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       TOKENIZERS_PARALLELISM=false NO_ALBUMENTATIONS_UPDATE=1
exec timeout --kill-after=10 480 "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
