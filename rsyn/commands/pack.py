from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.image_limits import DEFAULT_MAX_BYTES
from rsyn.image_options import MaxBytesOption, PathRootOption
from rsyn.textstyle import TextStyle


@rsyn_command(app, "pack", "Write the RealSyn release format (parquet shards or webdataset tars).")
def pack(
    run: Run,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="parquet|webdataset",
            help="parquet: the released RealSyn columns, for img2dataset; webdataset: tars of KEY.jpg, KEY.txt "
            "(text1), KEY.json (text2, text3, syn_text, provenance), from each record's local image `path`.",
        ),
    ] = "parquet",
    rows_per_shard: Annotated[
        int | None,
        typer.Option(
            "--rows-per-shard", min=1, help="Rows per shard (default 100000 for parquet, 10000 for webdataset)."
        ),
    ] = None,
    extra_columns: Annotated[
        bool,
        typer.Option(
            "--extra-columns", help="Add provenance: id, doc, text1..3_id, text1..3_score, caption, tags, cluster, sim."
        ),
    ] = False,
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            metavar="DIR",
            help="For --format webdataset: take each record's image from this img2dataset output (webdataset, "
            "parquet or files output_format), matched by URL; records whose URL it could not download are dropped "
            "(not_downloaded). A record's own `path` comes first.",
        ),
    ] = None,
    text_style: Annotated[
        TextStyle,
        typer.Option(
            "--text-style",
            help="original: the texts as they are. release: the published RealSyn parquet's style: text1..3 "
            'lowercased Penn Treebank tokens ("it \'s just epcot now )"), syn_text lowercased.',
        ),
    ] = TextStyle.original,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace an earlier pack output (a directory holding its _SUCCESS; any other "
            "non-empty directory is refused), swapped in only when the new one is complete.",
        ),
    ] = False,
    path_root: PathRootOption = None,
    max_bytes: MaxBytesOption = DEFAULT_MAX_BYTES,
) -> None:
    """Pack image records into the RealSyn release format: -o DIR gets zero-padded shards, _stats.json and _SUCCESS.

    parquet rows are exactly raw_image_url, text1, text2, text3, syn_text (strings; text1..3 the retrieved texts,
    best first; a missing one is null). Fetch the images with img2dataset --input_format parquet
    --url_col raw_image_url --caption_col text1 --save_additional_columns '["text2","text3","syn_text"]'.
    _stats.json (rows, texts per image, mean tokens per text) and the empty done marker _SUCCESS are written last,
    and the directory appears under its name only then; readers such as pq.read_table(DIR) and `datasets` skip
    both (leading underscore). Non-image records are dropped (counted as not_image).
    """
    from rsyn.stages.pack import run_pack

    run_pack(
        run,
        fmt=fmt,
        rows_per_shard=rows_per_shard,
        extra_columns=extra_columns,
        overwrite=overwrite,
        images=images,
        path_root=path_root,
        max_bytes=max_bytes,
        text_style=text_style.value,
    )
