from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.embed import EmbedOptions


@rsyn_command(app, "embed", "Add CLIP embeddings to image and text records.", options=EmbedOptions)
def embed(run: Run, opts: EmbedOptions) -> None:
    """Add an L2-normalised CLIP embedding (`emb`, base64 float16) and the model spec (`emb_model`) to
    every image and text record. Images come from `path`, an img2dataset folder (--images) or their
    `url`; an image that cannot be had is dropped with its reason. Images whose size was unknown get the
    paper's size rule (shorter side >= 100 px, 1/3 <= w/h <= 3) and their width/height filled in."""
    from rsyn.stages.embed import run_embed

    run_embed(run, opts)
