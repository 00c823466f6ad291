from enum import Enum
from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command


class Dtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


@rsyn_command(
    app, "export", "Write embeddings as .npy + parquet (clip-retrieval, autofaiss) and an img2dataset url list."
)
def export(
    run: Run,
    dtype: Annotated[
        Dtype,
        typer.Option(
            "--dtype",
            help="Type of the .npy rows. rsyn's embeddings are float16, so float16 is exact; float32 "
            "doubles the size for tools that want it.",
        ),
    ] = Dtype.float16,
    rows_per_shard: Annotated[
        int, typer.Option("--rows-per-shard", min=1, help="Rows per .npy / parquet file.")
    ] = 1_000_000,
    emb_field: Annotated[
        str,
        typer.Option(
            "--emb-field",
            help="Embedding field to export (syn_emb: the synthetic texts'); its model is in EMB_FIELD_model.",
        ),
    ] = "emb",
    caption: Annotated[
        str,
        typer.Option(
            "--caption",
            metavar="auto|syn_text|text1|caption",
            help="The image caption in the metadata and the img2dataset parquet; auto: the first of syn_text, text1 "
            "(best retrieved text), caption the record has.",
        ),
    ] = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an earlier export (a directory holding its _SUCCESS; any other non-empty "
            "directory is refused), swapped in only when the new one is complete.",
        ),
    ] = False,
) -> None:
    """Export records for the tools of the field: -o DIR gets clip-retrieval's embeddings layout
    (img_emb/img_emb_N.npy with metadata/metadata_N.parquet, text_emb/text_emb_N.npy with
    text_metadata/text_metadata_N.parquet; rows in the same order) and img2dataset/N.parquet (url, caption, id)
    of every image record with a url, then _stats.json and _SUCCESS. With --shard K/N give each shard its own -o:
    the shards' files in shard order hold the rows of the one-process export."""
    from rsyn.stages.export import CAPTION_FIELDS, run_export

    if caption not in ("auto", *CAPTION_FIELDS):
        raise typer.BadParameter(f"{caption!r}: expected auto, {', '.join(CAPTION_FIELDS)}", param_hint="--caption")
    run_export(
        run,
        dtype=dtype.value,
        rows_per_shard=rows_per_shard,
        emb_field=emb_field,
        caption_field=caption,
        overwrite=overwrite,
    )
