from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "embed", "Add CLIP embeddings to image and text records.")
def embed(run: Run) -> None:
    not_built("embed", 4)(run)
