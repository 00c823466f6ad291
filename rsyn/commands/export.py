from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.export import ExportOptions


@rsyn_command(
    app,
    "export",
    "Write embeddings as .npy + parquet (clip-retrieval, autofaiss) and an img2dataset url list.",
    options=ExportOptions,
)
def export(run: Run, opts: ExportOptions) -> None:
    """Export records for the tools of the field: -o DIR gets clip-retrieval's embeddings layout
    (img_emb/img_emb_N.npy with metadata/metadata_N.parquet, text_emb/text_emb_N.npy with
    text_metadata/text_metadata_N.parquet; rows in the same order) and img2dataset/N.parquet (url, caption, id)
    of every image record with a url, then _stats.json and _SUCCESS. With --shard K/N give each shard its own -o:
    the shards' files in shard order hold the rows of the one-process export."""
    from rsyn.stages.export import run_export

    run_export(run, opts)
