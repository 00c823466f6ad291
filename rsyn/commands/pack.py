from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "pack", "Write the RealSyn release format (parquet shards or webdataset tars).")
def pack(run: Run) -> None:
    not_built("pack", 8)(run)
