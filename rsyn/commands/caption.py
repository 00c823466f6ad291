from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.caption import CaptionOptions


@rsyn_command(app, "caption", "Add caption, semantic tags and the LLM-fused synthetic text.", options=CaptionOptions)
def caption(run: Run, opts: CaptionOptions) -> None:
    """Image semantic augmented generation: semantic tags (zero-shot CLIP over a tag vocabulary), a brief caption
    (an image-to-text model) and an LLM that merges the best retrieved text, the caption and the tags into one
    `syn_text`. Reads records from `rsyn retrieve` (with `emb`, `texts`, and for the captioner an image at `path`,
    in --images or at `url`); other records pass through. The openai backend sends $OPENAI_API_KEY when it is
    set. See docs/caption.md."""
    from rsyn.stages.caption import run_caption

    run_caption(run, opts)
