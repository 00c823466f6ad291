# rsyn with the GPU extra: faiss on CUDA and vLLM for the LLM fusion step.
#
#   docker build -t rsyn .
#   docker run --gpus all --rm rsyn                                   # rsyn --help
#   docker run --gpus all --rm -v $PWD/data:/data -v $HOME/.cache/huggingface:/root/.cache/huggingface \
#     rsyn rsyn embed /data/sentences.jsonl.zst --device cuda -o /data/embedded.jsonl.zst --stats /data/embed.json
#
# Weights come from the Hugging Face cache mounted at /root/.cache/huggingface (or any local path
# given to --model / --ppl-model / --captioner / --llm-model); set HF_HUB_OFFLINE=1 on machines
# without internet.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/rsyn PATH=/opt/rsyn/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/rsyn

WORKDIR /src
# vLLM first: it pins the torch / transformers it was built against, and rsyn accepts those.
RUN pip install --upgrade pip && pip install "vllm>=0.6"
COPY pyproject.toml README.md ./
COPY rsyn ./rsyn
RUN pip install ".[gpu,spacy-model]" && rsyn --version

WORKDIR /data
CMD ["rsyn", "--help"]
