from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "report", "Turn the --stats files of a run into one HTML report.")
def report(run: Run) -> None:
    not_built("report", 9)(run)
