from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.error_rate import DEFAULT_MAX_ERROR_RATE, MIN_RECORDS
from rsyn.image_limits import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
    MAX_ASPECT,
    MIN_SIDE,
)
from rsyn.image_options import (
    AllowPrivateUrlsOption,
    DeadlineOption,
    MaxBytesOption,
    PathRootOption,
    RetriesOption,
    TimeoutOption,
)

_MODEL = "Model"
KINDS = ("image", "text")


def _parse_kinds(value: str) -> str:
    """--kinds is a comma-separated subset of KINDS: an unknown kind is a usage error, not an empty run."""
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise typer.BadParameter(f"{value!r}: give one or more of {', '.join(KINDS)}, comma-separated")
    return value


_IMAGES = "Images"


@rsyn_command(app, "embed", "Add CLIP embeddings to image and text records.")
def embed(
    run: Run,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            rich_help_panel=_MODEL,
            help="open_clip model name (with --pretrained), NAME@PRETRAINED, hf-hub:ORG/REPO, local-dir:DIR "
            "or a model folder.",
        ),
    ] = "EVA02-E-14-plus",
    pretrained: Annotated[
        str | None,
        typer.Option(
            "--pretrained",
            rich_help_panel=_MODEL,
            help="Pretrained tag, checkpoint file, or 'random' (seeded random weights). "
            "Default: laion2b_s9b_b144k for the default model.",
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            "--precision", rich_help_panel=_MODEL, help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."
        ),
    ] = "auto",
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=0, rich_help_panel=_MODEL, help="Records per model call; 0: 256 on GPU, 32 on CPU."
        ),
    ] = 0,
    text_field: Annotated[
        str,
        typer.Option(
            "--text-field",
            rich_help_panel=_MODEL,
            help="Text field to embed. Another field than 'text' (e.g. syn_text) embeds that field of every "
            "record and loads no image.",
        ),
    ] = "text",
    emb_field: Annotated[
        str | None,
        typer.Option(
            "--emb-field",
            rich_help_panel=_MODEL,
            help="Field for the embedding; default emb for text, syn_emb for syn_text, FIELD_emb otherwise. "
            "The model goes in EMB_FIELD_model (emb_model, syn_emb_model).",
        ),
    ] = None,
    kinds: Annotated[
        str,
        typer.Option(
            "--kinds",
            rich_help_panel=_MODEL,
            callback=_parse_kinds,
            metavar="image,text",
            help="Comma-separated record kinds to embed (image, text); other records pass through untouched.",
        ),
    ] = "image,text",
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            metavar="DIR",
            rich_help_panel=_IMAGES,
            help="img2dataset output folder (any output_format: webdataset, parquet or files): images are "
            "found there by URL, never fetched. A folder with no img2dataset output in it is refused.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            rich_help_panel=_IMAGES,
            help="Threads fetching and decoding images; 0: 4 per CPU core, 8 to 64.",
        ),
    ] = 0,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    deadline: DeadlineOption = DEFAULT_DEADLINE,
    retries: RetriesOption = DEFAULT_RETRIES,
    max_bytes: MaxBytesOption = DEFAULT_MAX_BYTES,
    path_root: PathRootOption = None,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels",
            min=1,
            rich_help_panel=_IMAGES,
            help="Largest width x height decoded (bigger: dropped as too_many_pixels).",
        ),
    ] = DEFAULT_MAX_PIXELS,
    user_agent: Annotated[
        str, typer.Option("--user-agent", rich_help_panel=_IMAGES, help="User-Agent header for downloads.")
    ] = DEFAULT_USER_AGENT,
    allow_private_urls: AllowPrivateUrlsOption = False,
    max_error_rate: Annotated[
        float,
        typer.Option(
            "--max-error-rate",
            min=0.0,
            max=1.0,
            rich_help_panel=_IMAGES,
            help=f"Stop (exit 2) when more than this share of the images could not be had (fetched, read or "
            f"decoded; not_downloaded and size_rule drops are not counted), once at least {MIN_RECORDS} were "
            f"tried; 1 = never.",
        ),
    ] = DEFAULT_MAX_ERROR_RATE,
    min_side: Annotated[
        int,
        typer.Option(
            "--min-side",
            min=0,
            rich_help_panel=_IMAGES,
            help="Size rule (images of unknown size): smallest shorter side in pixels.",
        ),
    ] = MIN_SIDE,
    max_aspect: Annotated[
        float,
        typer.Option(
            "--max-aspect",
            min=1.0,
            rich_help_panel=_IMAGES,
            help="Size rule: largest width/height (and height/width) ratio.",
        ),
    ] = MAX_ASPECT,
    draft: Annotated[
        bool,
        typer.Option(
            "--draft/--no-draft",
            rich_help_panel=_IMAGES,
            help="Decode large JPEGs at a reduced scale (never below the model's input size).",
        ),
    ] = True,
) -> None:
    """Add an L2-normalised CLIP embedding (`emb`, base64 float16) and the model spec (`emb_model`) to
    every image and text record. Images come from `path`, an img2dataset folder (--images) or their
    `url`; an image that cannot be had is dropped with its reason. Images whose size was unknown get the
    paper's size rule (shorter side >= 100 px, 1/3 <= w/h <= 3) and their width/height filled in."""
    from rsyn.stages.embed import EmbedOptions, run_embed

    run_embed(
        run,
        EmbedOptions(
            model=model,
            pretrained=pretrained,
            precision=precision,
            batch_size=batch_size,
            text_field=text_field,
            emb_field=emb_field,
            kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
            images=images,
            workers=workers,
            timeout=timeout,
            deadline=deadline,
            retries=retries,
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            user_agent=user_agent,
            draft=draft,
            min_side=min_side,
            max_aspect=max_aspect,
            allow_private_urls=allow_private_urls,
            max_error_rate=max_error_rate,
            path_root=path_root,
        ),
    )
