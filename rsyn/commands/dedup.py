from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "dedup", "Remove exact, near (MinHash LSH) and semantic duplicates.")
def dedup(run: Run) -> None:
    not_built("dedup", 5)(run)
