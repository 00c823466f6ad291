from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.pack import PackOptions


@rsyn_command(app, "pack", "Write the RealSyn release format (parquet shards or webdataset tars).", options=PackOptions)
def pack(run: Run, opts: PackOptions) -> None:
    """Pack image records into the RealSyn release format: -o DIR gets zero-padded shards, _stats.json and _SUCCESS.

    parquet rows are exactly raw_image_url, text1, text2, text3, syn_text (strings; text1..3 the retrieved texts,
    best first; a missing one is null). Fetch the images with img2dataset --input_format parquet
    --url_col raw_image_url --caption_col text1 --save_additional_columns '["text2","text3","syn_text"]'.
    _stats.json (rows, texts per image, mean tokens per text) and the empty done marker _SUCCESS are written last,
    and the directory appears under its name only then; readers such as pq.read_table(DIR) and `datasets` skip
    both (leading underscore). Non-image records are dropped (counted as not_image).

    --format webdataset takes each record's image from its `path`, else from --images DIR by URL; a record
    whose image is in neither is dropped (not_downloaded).
    """
    from rsyn.stages.pack import run_pack

    run_pack(run, opts)
