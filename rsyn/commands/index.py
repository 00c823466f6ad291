from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "index", "Cluster sentence embeddings (k-means) and build the retrieval index.")
def index(run: Run) -> None:
    not_built("index", 6)(run)
