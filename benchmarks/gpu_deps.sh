#!/usr/bin/env bash
# Build .gpu-deps/: the packages benchmarks/gpu_check.sh needs beyond what a GPU machine usually has
# (torch, torchvision, transformers, timm, numpy, pillow, huggingface_hub), at the versions of this
# machine's environment, for the GPU machine's Python (PYVER, default this Python's). gpu_check.sh puts
# .gpu-deps on PYTHONPATH when it exists. About 50 MB; faiss and vLLM are not included (their checks say
# "skipped" without them; install faiss-gpu / vllm on the GPU machine to check those paths).
#
#   PYVER=3.11 benchmarks/gpu_deps.sh && (copy the tree with .gpu-deps to the GPU machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PYVER="${PYVER:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}"
PACKAGES="open_clip_torch ftfy wcwidth orjson zstandard typer click rich shellingham markdown-it-py mdurl pygments
          regex annotated-doc"
pins=$("$PY" - $PACKAGES <<'PY'
import importlib.metadata, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(name)
PY
)
rm -rf .gpu-deps
"$PY" -m pip install --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --target .gpu-deps $pins
find .gpu-deps -name __pycache__ -prune -exec rm -rf {} +
du -sh .gpu-deps
