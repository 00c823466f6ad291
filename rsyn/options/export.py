"""Options of `rsyn export` (rsyn.stages.export), declared once."""

from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from rsyn.options import opt

CAPTION_FIELDS = ("syn_text", "text1", "caption")


class Dtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


def parse_caption(value: str) -> str:
    if value not in ("auto", *CAPTION_FIELDS):
        raise ValueError(f"{value!r}: expected auto, {', '.join(CAPTION_FIELDS)}")
    return value


@dataclass
class ExportOptions:
    dtype: Annotated[
        Dtype,
        opt(
            "--dtype",
            help="Type of the .npy rows. rsyn's embeddings are float16, so float16 is exact; float32 "
            "doubles the size for tools that want it.",
        ),
    ] = Dtype.float16
    rows_per_shard: Annotated[int, opt("--rows-per-shard", min=1, help="Rows per .npy / parquet file.")] = 1_000_000
    emb_field: Annotated[
        str,
        opt(
            "--emb-field",
            help="Embedding field to export (syn_emb: the synthetic texts'); its model is in EMB_FIELD_model.",
        ),
    ] = "emb"
    caption_field: Annotated[
        str,
        opt(
            "--caption",
            metavar="auto|syn_text|text1|caption",
            parse=parse_caption,
            help="The image caption in the metadata and the img2dataset parquet; auto: the first of syn_text, text1 "
            "(best retrieved text), caption the record has.",
        ),
    ] = "auto"
    overwrite: Annotated[
        bool,
        opt(
            "--overwrite",
            help="Replace an earlier export (a directory holding its _SUCCESS; any other non-empty "
            "directory is refused), swapped in only when the new one is complete.",
        ),
    ] = False
