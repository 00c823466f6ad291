# rsyn with the GPU extra: faiss on CUDA and vLLM for the LLM fusion step. Commands: README, "Docker".
#
# The pins hold together (tests/test_docker_pins.py checks them against the registry, no Docker needed):
# the base image's CUDA 12.8 is the CUDA that the torch pinned by the gpu extra's vLLM is built for
# (vllm==0.19.1 -> torch==2.10.0 -> nvidia-cuda-runtime-cu12 12.8); a later vLLM pins a torch built for CUDA 13.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/rsyn PATH=/opt/rsyn/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/rsyn

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rsyn ./rsyn
# Exactly one faiss: the base dependency faiss-cpu and the gpu extra's faiss-gpu-cu12 both install the module
# `faiss` into the same folder, so whichever unpacked last wins. Remove both, put the GPU wheel back alone,
# and fail the build unless `faiss` is the GPU build and faiss-cpu is gone. (DL3013: the versions are pinned
# in pyproject.toml, and faiss-gpu-cu12 goes back at the version pip just resolved.)
# hadolint ignore=DL3013
RUN pip install ".[gpu,spacy-model]" \
 && faiss_gpu="faiss-gpu-cu12==$(pip show faiss-gpu-cu12 | sed -n 's/^Version: //p')" \
 && pip uninstall -y faiss-cpu faiss-gpu-cu12 \
 && pip install --no-deps "$faiss_gpu" \
 && python -c "import importlib.metadata as m, faiss; \
names = {d.metadata['Name'].lower() for d in m.distributions()}; \
assert 'faiss-cpu' not in names and 'faiss-gpu-cu12' in names, 'not exactly one faiss'; \
assert hasattr(faiss, 'StandardGpuResources'), 'module faiss is not the GPU build'" \
 && rsyn --version

FROM nvidia/cuda:12.8.1-base-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/rsyn PATH=/opt/rsyn/bin:$PATH \
    HOME=/home/rsyn
# No make, g++ or the rest of build-essential. gcc, libc6-dev and python3-dev stay: Triton (vLLM's kernels,
# torch.compile) builds its small CUDA launcher module with the system C compiler and Python's headers at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --shell /usr/sbin/nologin --uid 10001 rsyn \
 && chmod 1777 /home/rsyn
COPY --from=build /opt/rsyn /opt/rsyn

# HOME is writable by any uid (`docker run -u $(id -u)` writes files as you): the torch, Triton and Hugging Face
# caches live there. Weights come from a Hugging Face cache mounted there or at $HF_HOME (or any local path
# given to --model / --ppl-model / --captioner / --llm-model); set HF_HUB_OFFLINE=1 on machines without internet.
USER 10001
WORKDIR /data
ENTRYPOINT ["rsyn"]
CMD ["--help"]
