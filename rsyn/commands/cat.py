from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.cat import CatOptions


@rsyn_command(app, "cat", "Concatenate and convert record streams (any compression in, zstd out).", options=CatOptions)
def cat(run: Run, opts: CatOptions) -> None:
    """Concatenate and convert record streams: zstd, gzip or plain JSONL in (detected from the bytes), zstd out.

    With --kind, split a mixed stream (e.g. `rsyn extract` output) into its images and its sentences.
    """
    from rsyn.stages.cat import run_cat

    run_cat(run, opts)
