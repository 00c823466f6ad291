from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "extract", "Extract image and sentence records from OBELICS / MMC4 documents, with the paper's filters.")
def extract(run: Run) -> None:
    not_built("extract", 3)(run)
