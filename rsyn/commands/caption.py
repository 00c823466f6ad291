import os
from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.error_rate import DEFAULT_MAX_ERROR_RATE, MIN_RECORDS
from rsyn.image_limits import DEFAULT_DEADLINE, DEFAULT_MAX_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT
from rsyn.image_options import (
    AllowPrivateUrlsOption,
    DeadlineOption,
    MaxBytesOption,
    PathRootOption,
    RetriesOption,
    TimeoutOption,
)
from rsyn.llm import DEFAULT_MAX_REPLY_BYTES, DEFAULT_MAX_SYN_CHARS

TAGS = "Semantic tags"
CAPTION = "Caption"
LLM = "LLM fusion"


@rsyn_command(app, "caption", "Add caption, semantic tags and the LLM-fused synthetic text.")
def caption(
    run: Run,
    tags: Annotated[
        str | None,
        typer.Option(
            "--tags",
            metavar="FILE",
            help="Tag vocabulary, one tag per line (e.g. the RAM++ tag list).",
            rich_help_panel=TAGS,
        ),
    ] = None,
    mine_tags_from: Annotated[
        str | None,
        typer.Option(
            "--mine-tags-from",
            "--index",
            metavar="DIR",
            help="Add tags mined from this `rsyn index` directory's sentences (frequent noun phrases; cached).",
            rich_help_panel=TAGS,
        ),
    ] = None,
    mined_tags: Annotated[
        int, typer.Option("--mined-tags", min=1, help="How many tags to mine.", rich_help_panel=TAGS)
    ] = 4000,
    mine_sample: Annotated[
        int, typer.Option("--mine-sample", min=1, help="Sentences sampled (seeded) for mining.", rich_help_panel=TAGS)
    ] = 100_000,
    mine_min_count: Annotated[
        int,
        typer.Option(
            "--mine-min-count",
            min=1,
            help="A mined tag occurs in at least this many sampled sentences.",
            rich_help_panel=TAGS,
        ),
    ] = 3,
    save_tags: Annotated[
        str | None,
        typer.Option(
            "--save-tags", metavar="FILE", help="Write the tag vocabulary in use (given + mined).", rich_help_panel=TAGS
        ),
    ] = None,
    max_tags: Annotated[
        int, typer.Option("--max-tags", min=0, help="Tags per image at most; 0 = no tagging.", rich_help_panel=TAGS)
    ] = 10,
    tag_threshold: Annotated[
        float,
        typer.Option(
            "--tag-threshold",
            help="Keep tags whose cosine(image, tag prompt) is at least this (model-specific).",
            rich_help_panel=TAGS,
        ),
    ] = 0.25,
    tag_template: Annotated[
        str, typer.Option("--tag-template", help="Text prompt of a tag; {} is the tag.", rich_help_panel=TAGS)
    ] = "a photo of {}.",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="CLIP model for tags (as in `rsyn embed`); default: the records' emb_model.",
            rich_help_panel=TAGS,
        ),
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option("--pretrained", help="Weights of --model.", rich_help_panel=TAGS)
    ] = None,
    captioner: Annotated[
        str,
        typer.Option(
            "--captioner",
            help="Image captioner: Hugging Face id or local directory; 'none' = no caption.",
            rich_help_panel=CAPTION,
        ),
    ] = "Salesforce/blip-image-captioning-base",
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            metavar="DIR",
            rich_help_panel=CAPTION,
            help="img2dataset output folder (webdataset, parquet or files output_format): images without a `path` "
            "are found there by URL. A folder with no img2dataset output in it is refused.",
        ),
    ] = None,
    fetch: Annotated[
        bool,
        typer.Option(
            "--fetch/--no-fetch",
            rich_help_panel=CAPTION,
            help="Download by URL an image found neither at `path` nor in --images.",
        ),
    ] = True,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    retries: RetriesOption = DEFAULT_RETRIES,
    max_bytes: MaxBytesOption = DEFAULT_MAX_BYTES,
    path_root: PathRootOption = None,
    allow_private_urls: AllowPrivateUrlsOption = False,
    image_workers: Annotated[
        int,
        typer.Option(
            "--image-workers", min=1, rich_help_panel=CAPTION, help="Threads reading, fetching and decoding images."
        ),
    ] = 16,
    caption_max_tokens: Annotated[
        int, typer.Option("--caption-max-tokens", min=1, rich_help_panel=CAPTION, help="Longest caption, in tokens.")
    ] = 30,
    caption_beams: Annotated[
        int,
        typer.Option(
            "--caption-beams", min=1, rich_help_panel=CAPTION, help="Beam search width of the captioner (1 = greedy)."
        ),
    ] = 3,
    llm_backend: Annotated[
        str,
        typer.Option(
            "--llm-backend",
            help="vllm (GPU, offline engine), openai (a server) or hf (transformers generate, CPU).",
            rich_help_panel=LLM,
        ),
    ] = "hf",
    llm_model: Annotated[
        str | None,
        typer.Option(
            "--llm-model",
            metavar="ID",
            help="LLM: Hugging Face id or local directory (openai: the served name; "
            "default: the server's first model).",
            rich_help_panel=LLM,
        ),
    ] = None,
    llm_url: Annotated[
        str | None,
        typer.Option(
            "--llm-url",
            metavar="URL",
            help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.",
            rich_help_panel=LLM,
        ),
    ] = None,
    llm_api: Annotated[
        str, typer.Option("--llm-api", help="auto, chat or completion prompts.", rich_help_panel=LLM)
    ] = "auto",
    llm_concurrency: Annotated[
        int, typer.Option("--llm-concurrency", min=1, rich_help_panel=LLM, help="openai: requests in flight at once.")
    ] = 16,
    llm_timeout: Annotated[
        float,
        typer.Option(
            "--llm-timeout",
            min=0.001,
            rich_help_panel=LLM,
            help="openai: seconds for one whole request (connecting, headers and body; each retry gets its own).",
        ),
    ] = 60.0,
    llm_max_reply_bytes: Annotated[
        int,
        typer.Option(
            "--llm-max-reply-bytes",
            min=1024,
            rich_help_panel=LLM,
            help="openai: largest reply read; a longer one fails its record (too_large), unread.",
        ),
    ] = DEFAULT_MAX_REPLY_BYTES,
    llm_retries: Annotated[
        int,
        typer.Option(
            "--llm-retries",
            min=0,
            rich_help_panel=LLM,
            help="openai: retries of a failed request (exponential backoff).",
        ),
    ] = 3,
    llm_max_tokens: Annotated[
        int, typer.Option("--llm-max-tokens", min=1, rich_help_panel=LLM, help="Longest generation, in tokens.")
    ] = 160,
    temperature: Annotated[
        float, typer.Option("--temperature", min=0.0, rich_help_panel=LLM, help="0 = greedy decoding.")
    ] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, rich_help_panel=LLM)] = 1.0,
    llm_batch_size: Annotated[
        int, typer.Option("--llm-batch-size", min=1, rich_help_panel=LLM, help="hf: prompts per generate call.")
    ] = 16,
    tensor_parallel_size: Annotated[
        int, typer.Option("--tensor-parallel-size", min=1, rich_help_panel=LLM, help="vllm: GPUs per model.")
    ] = 1,
    gpu_memory_utilization: Annotated[
        float,
        typer.Option(
            "--gpu-memory-utilization",
            min=0.05,
            max=1.0,
            rich_help_panel=LLM,
            help="vllm: share of the GPU it may take (the captioner and CLIP need the rest).",
        ),
    ] = 0.6,
    max_model_len: Annotated[
        int | None,
        typer.Option("--max-model-len", min=64, rich_help_panel=LLM, help="vllm: context length to reserve."),
    ] = None,
    prompt_file: Annotated[
        str | None,
        typer.Option(
            "--prompt-file",
            metavar="FILE",
            rich_help_panel=LLM,
            help="Replace the fusion instruction (see docs/caption.md).",
        ),
    ] = None,
    max_syn_words: Annotated[
        int, typer.Option("--max-syn-words", min=1, rich_help_panel=LLM, help="Cut syn_text to this many words.")
    ] = 80,
    max_syn_chars: Annotated[
        int, typer.Option("--max-syn-chars", min=1, rich_help_panel=LLM, help="Cut syn_text to this many characters.")
    ] = DEFAULT_MAX_SYN_CHARS,
    max_error_rate: Annotated[
        float,
        typer.Option(
            "--max-error-rate",
            min=0.0,
            max=1.0,
            help=f"With --on-error skip: stop (exit 2) when more than this share of the LLM generations failed "
            f"(llm_failed, empty_generation), once at least {MIN_RECORDS} were made; 1 = never.",
        ),
    ] = DEFAULT_MAX_ERROR_RATE,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Image records per batch.")] = 64,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            "--cache-dir",
            metavar="DIR",
            help="Mined tags and tag embeddings (default $RSYN_CACHE_DIR or ~/.cache/rsyn).",
        ),
    ] = None,
) -> None:
    """Image semantic augmented generation: semantic tags (zero-shot CLIP over a tag vocabulary), a brief caption
    (an image-to-text model) and an LLM that merges the best retrieved text, the caption and the tags into one
    `syn_text`. Reads records from `rsyn retrieve` (with `emb`, `texts`, and for the captioner an image at `path`,
    in --images or at `url`); other records pass through. The openai backend sends $OPENAI_API_KEY when it is
    set. See docs/caption.md."""
    from rsyn.stages.caption import CaptionOptions, run_caption

    opts = CaptionOptions(
        tags_file=tags,
        mine_tags_from=mine_tags_from,
        mined_tags=mined_tags,
        mine_sample=mine_sample,
        mine_min_count=mine_min_count,
        save_tags=save_tags,
        max_tags=max_tags,
        tag_threshold=tag_threshold,
        tag_template=tag_template,
        clip_model=model,
        clip_pretrained=pretrained,
        captioner=captioner,
        images=images,
        fetch=fetch,
        image_workers=image_workers,
        path_root=path_root,
        max_bytes=max_bytes,
        caption_max_tokens=caption_max_tokens,
        caption_beams=caption_beams,
        llm_backend=llm_backend,
        llm_model=llm_model,
        llm_url=llm_url,
        llm_api=llm_api,
        llm_concurrency=llm_concurrency,
        llm_timeout=llm_timeout,
        llm_retries=llm_retries,
        llm_max_tokens=llm_max_tokens,
        temperature=temperature,
        top_p=top_p,
        llm_batch_size=llm_batch_size,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        prompt_file=prompt_file,
        max_syn_words=max_syn_words,
        max_syn_chars=max_syn_chars,
        llm_max_reply_bytes=llm_max_reply_bytes,
        timeout=timeout,
        deadline=deadline,
        retries=retries,
        allow_private_urls=allow_private_urls,
        max_error_rate=max_error_rate,
        batch_size=batch_size,
        cache_dir=cache_dir,
        api_key=os.environ.get("OPENAI_API_KEY"),
    )
    run_caption(run, opts)
