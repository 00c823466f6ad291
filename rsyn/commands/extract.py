from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.extract import ExtractOptions


@rsyn_command(
    app,
    "extract",
    "Extract image and sentence records from OBELICS / MMC4 documents, with the paper's filters.",
    options=ExtractOptions,
)
def extract(run: Run, opts: ExtractOptions) -> None:
    """Read OBELICS (parquet or JSONL) or MMC4 (JSONL) documents and write one record per image and per
    sentence, after the RealSyn filters: image size and aspect; no emoji, no URL, 3..81 words; CAT
    (complexity >= 1 and an action); information entropy >= 0.3; perplexity in [30, 200] under gpt2-large.
    Every score is kept on the record; --stats has the funnel. See docs/extract.md."""
    from rsyn.stages.extract import run_extract

    run_extract(run, opts)
