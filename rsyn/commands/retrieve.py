from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "retrieve", "Add the top-k realistic texts to each image by hierarchical retrieval.")
def retrieve(run: Run) -> None:
    not_built("retrieve", 6)(run)
