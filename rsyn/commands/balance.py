from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "balance", "Keep image/syn_text pairs in the similarity window; cap each image cluster.")
def balance(run: Run) -> None:
    not_built("balance", 8)(run)
