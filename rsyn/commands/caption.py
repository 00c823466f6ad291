from rsyn.cli import app
from rsyn.command import Run, not_built, rsyn_command


@rsyn_command(app, "caption", "Add caption, semantic tags and the LLM-fused synthetic text.")
def caption(run: Run) -> None:
    not_built("caption", 7)(run)
