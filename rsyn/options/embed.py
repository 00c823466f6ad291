"""Options of `rsyn embed` (rsyn.stages.embed), declared once."""

from dataclasses import dataclass
from typing import Annotated

from rsyn.error_rate import DEFAULT_MAX_ERROR_RATE, MIN_RECORDS
from rsyn.image_limits import DEFAULT_MAX_PIXELS, DEFAULT_USER_AGENT, MAX_ASPECT, MIN_SIDE
from rsyn.options import comma_list, joined, opt
from rsyn.options.images import DownloadOptions, ImageFolderOptions, ImageWorkerOptions, LocalFileOptions

_MODEL = "Model"
_IMAGES = "Images"
KINDS = ("image", "text")


def parse_kinds(value: str) -> tuple[str, ...]:
    """--kinds is a comma-separated subset of KINDS: an unknown kind is a usage error, not an empty run."""
    kinds = comma_list(value)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"{value!r}: give one or more of {', '.join(KINDS)}, comma-separated")
    return tuple(kinds)


@dataclass
class EmbedOptions(ImageFolderOptions, ImageWorkerOptions, LocalFileOptions, DownloadOptions):
    model: Annotated[
        str,
        opt(
            "--model",
            "-m",
            panel=_MODEL,
            help="open_clip model name (with --pretrained), NAME@PRETRAINED, hf-hub:ORG/REPO, local-dir:DIR "
            "or a model folder.",
        ),
    ] = "EVA02-E-14-plus"
    pretrained: Annotated[
        str | None,
        opt(
            "--pretrained",
            panel=_MODEL,
            help="Pretrained tag, checkpoint file, or 'random' (seeded random weights). "
            "Default: laion2b_s9b_b144k for the default model.",
        ),
    ] = None
    precision: Annotated[
        str, opt("--precision", panel=_MODEL, help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")
    ] = "auto"
    batch_size: Annotated[
        int, opt("--batch-size", min=0, panel=_MODEL, help="Records per model call; 0: 256 on GPU, 32 on CPU.")
    ] = 0
    text_field: Annotated[
        str,
        opt(
            "--text-field",
            panel=_MODEL,
            help="Text field to embed. Another field than 'text' (e.g. syn_text) embeds that field of every "
            "record and loads no image.",
        ),
    ] = "text"
    emb_field: Annotated[
        str | None,
        opt(
            "--emb-field",
            panel=_MODEL,
            help="Field for the embedding; default emb for text, syn_emb for syn_text, FIELD_emb otherwise. "
            "The model goes in EMB_FIELD_model (emb_model, syn_emb_model).",
        ),
    ] = None
    kinds: Annotated[
        tuple[str, ...],
        opt(
            "--kinds",
            panel=_MODEL,
            parse=parse_kinds,
            shown=joined,
            metavar="image,text",
            help="Comma-separated record kinds to embed (image, text); other records pass through untouched.",
        ),
    ] = KINDS
    max_pixels: Annotated[
        int,
        opt(
            "--max-pixels",
            min=1,
            panel=_IMAGES,
            help="Largest width x height decoded (bigger: dropped as too_many_pixels).",
        ),
    ] = DEFAULT_MAX_PIXELS
    user_agent: Annotated[str, opt("--user-agent", panel=_IMAGES, help="User-Agent header for downloads.")] = (
        DEFAULT_USER_AGENT
    )
    max_error_rate: Annotated[
        float,
        opt(
            "--max-error-rate",
            min=0.0,
            max=1.0,
            panel=_IMAGES,
            help=f"Stop (exit 2) when more than this share of the images could not be had (fetched, read or "
            f"decoded; not_downloaded and size_rule drops are not counted), once at least {MIN_RECORDS} were "
            f"tried; 1 = never.",
        ),
    ] = DEFAULT_MAX_ERROR_RATE
    min_side: Annotated[
        int,
        opt(
            "--min-side",
            min=0,
            panel=_IMAGES,
            help="Size rule (images of unknown size): smallest shorter side in pixels.",
        ),
    ] = MIN_SIDE
    max_aspect: Annotated[
        float,
        opt(
            "--max-aspect",
            min=1.0,
            panel=_IMAGES,
            help="Size rule: largest width/height (and height/width) ratio.",
        ),
    ] = MAX_ASPECT
    draft: Annotated[
        bool,
        opt(
            "--draft/--no-draft",
            panel=_IMAGES,
            help="Decode large JPEGs at a reduced scale (never below the model's input size).",
        ),
    ] = True
