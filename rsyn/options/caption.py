"""Options of `rsyn caption` (rsyn.stages.caption), declared once."""

import os
from dataclasses import dataclass, field
from typing import Annotated

from rsyn.error_rate import DEFAULT_MAX_ERROR_RATE, MIN_RECORDS
from rsyn.llm import DEFAULT_MAX_REPLY_BYTES, DEFAULT_MAX_SYN_CHARS
from rsyn.options import INTERNAL, opt
from rsyn.options.images import DownloadOptions, ImageFolderOptions, ImageWorkerOptions, LocalFileOptions

TAGS = "Semantic tags"
CAPTION = "Caption"
LLM = "LLM fusion"


@dataclass
class CaptionOptions(ImageFolderOptions, ImageWorkerOptions, LocalFileOptions, DownloadOptions):
    # tags
    tags_file: Annotated[
        str | None,
        opt("--tags", metavar="FILE", help="Tag vocabulary, one tag per line (e.g. the RAM++ tag list).", panel=TAGS),
    ] = None
    mine_tags_from: Annotated[
        str | None,
        opt(
            "--mine-tags-from",
            "--index",
            metavar="DIR",
            help="Add tags mined from this `rsyn index` directory's sentences (frequent noun phrases; cached).",
            panel=TAGS,
        ),
    ] = None
    mined_tags: Annotated[int, opt("--mined-tags", min=1, help="How many tags to mine.", panel=TAGS)] = 4000
    mine_sample: Annotated[
        int, opt("--mine-sample", min=1, help="Sentences sampled (seeded) for mining.", panel=TAGS)
    ] = 100_000
    mine_min_count: Annotated[
        int,
        opt("--mine-min-count", min=1, help="A mined tag occurs in at least this many sampled sentences.", panel=TAGS),
    ] = 3
    save_tags: Annotated[
        str | None,
        opt("--save-tags", metavar="FILE", help="Write the tag vocabulary in use (given + mined).", panel=TAGS),
    ] = None
    max_tags: Annotated[int, opt("--max-tags", min=0, help="Tags per image at most; 0 = no tagging.", panel=TAGS)] = 10
    tag_threshold: Annotated[
        float,
        opt(
            "--tag-threshold",
            help="Keep tags whose cosine(image, tag prompt) is at least this (model-specific).",
            panel=TAGS,
        ),
    ] = 0.25
    tag_template: Annotated[str, opt("--tag-template", help="Text prompt of a tag; {} is the tag.", panel=TAGS)] = (
        "a photo of {}."
    )
    clip_model: Annotated[
        str | None,
        opt("--model", help="CLIP model for tags (as in `rsyn embed`); default: the records' emb_model.", panel=TAGS),
    ] = None
    clip_pretrained: Annotated[str | None, opt("--pretrained", help="Weights of --model.", panel=TAGS)] = None
    # caption
    captioner: Annotated[
        str,
        opt(
            "--captioner",
            help="Image captioner: Hugging Face id or local directory; 'none' = no caption.",
            panel=CAPTION,
        ),
    ] = "Salesforce/blip-image-captioning-base"
    fetch: Annotated[
        bool,
        opt(
            "--fetch/--no-fetch",
            panel=CAPTION,
            help="Download by URL an image found neither at `path` nor in --images.",
        ),
    ] = True
    caption_max_tokens: Annotated[
        int, opt("--caption-max-tokens", min=1, panel=CAPTION, help="Longest caption, in tokens.")
    ] = 30
    caption_beams: Annotated[
        int, opt("--caption-beams", min=1, panel=CAPTION, help="Beam search width of the captioner (1 = greedy).")
    ] = 3
    # fusion
    llm_backend: Annotated[
        str,
        opt(
            "--llm-backend",
            help="vllm (GPU, offline engine), openai (a server) or hf (transformers generate, CPU).",
            panel=LLM,
        ),
    ] = "hf"
    llm_model: Annotated[
        str | None,
        opt(
            "--llm-model",
            metavar="ID",
            help="LLM: Hugging Face id or local directory (openai: the served name; "
            "default: the server's first model).",
            panel=LLM,
        ),
    ] = None
    llm_url: Annotated[
        str | None,
        opt("--llm-url", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.", panel=LLM),
    ] = None
    llm_api: Annotated[str, opt("--llm-api", help="auto, chat or completion prompts.", panel=LLM)] = "auto"
    llm_concurrency: Annotated[
        int, opt("--llm-concurrency", min=1, panel=LLM, help="openai: requests in flight at once.")
    ] = 16
    llm_timeout: Annotated[
        float,
        opt(
            "--llm-timeout",
            min=0.001,
            panel=LLM,
            help="openai: seconds for one whole request (connecting, headers and body; each retry gets its own).",
        ),
    ] = 60.0
    llm_max_reply_bytes: Annotated[
        int,
        opt(
            "--llm-max-reply-bytes",
            min=1024,
            panel=LLM,
            help="openai: largest reply read; a longer one fails its record (too_large), unread.",
        ),
    ] = DEFAULT_MAX_REPLY_BYTES
    llm_retries: Annotated[
        int, opt("--llm-retries", min=0, panel=LLM, help="openai: retries of a failed request (exponential backoff).")
    ] = 3
    llm_max_tokens: Annotated[int, opt("--llm-max-tokens", min=1, panel=LLM, help="Longest generation, in tokens.")] = (
        160
    )
    temperature: Annotated[float, opt("--temperature", min=0.0, panel=LLM, help="0 = greedy decoding.")] = 0.0
    top_p: Annotated[float, opt("--top-p", min=0.0, max=1.0, panel=LLM)] = 1.0
    llm_batch_size: Annotated[int, opt("--llm-batch-size", min=1, panel=LLM, help="hf: prompts per generate call.")] = (
        16
    )
    tensor_parallel_size: Annotated[
        int, opt("--tensor-parallel-size", min=1, panel=LLM, help="vllm: GPUs per model.")
    ] = 1
    gpu_memory_utilization: Annotated[
        float,
        opt(
            "--gpu-memory-utilization",
            min=0.05,
            max=1.0,
            panel=LLM,
            help="vllm: share of the GPU it may take (the captioner and CLIP need the rest).",
        ),
    ] = 0.6
    max_model_len: Annotated[
        int | None, opt("--max-model-len", min=64, panel=LLM, help="vllm: context length to reserve.")
    ] = None
    prompt_file: Annotated[
        str | None,
        opt("--prompt-file", metavar="FILE", panel=LLM, help="Replace the fusion instruction (see docs/caption.md)."),
    ] = None
    max_syn_words: Annotated[int, opt("--max-syn-words", min=1, panel=LLM, help="Cut syn_text to this many words.")] = (
        80
    )
    max_syn_chars: Annotated[
        int, opt("--max-syn-chars", min=1, panel=LLM, help="Cut syn_text to this many characters.")
    ] = DEFAULT_MAX_SYN_CHARS
    max_error_rate: Annotated[
        float,
        opt(
            "--max-error-rate",
            min=0.0,
            max=1.0,
            help=f"With --on-error skip: stop (exit 2) when more than this share of the LLM generations failed "
            f"(llm_failed, empty_generation), once at least {MIN_RECORDS} were made; 1 = never.",
        ),
    ] = DEFAULT_MAX_ERROR_RATE
    # run
    batch_size: Annotated[int, opt("--batch-size", min=1, help="Image records per batch.")] = 64
    cache_dir: Annotated[
        str | None,
        opt(
            "--cache-dir",
            metavar="DIR",
            help="Mined tags and tag embeddings (default $RSYN_CACHE_DIR or ~/.cache/rsyn).",
        ),
    ] = None
    # the openai backend sends it when it is set; never a command-line option (it would show in `ps`)
    api_key: str | None = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY"), metadata=INTERNAL)
