from rsyn.cli import app
from rsyn.command import Run, rsyn_command
from rsyn.options.retrieve import RetrieveOptions


@rsyn_command(
    app, "retrieve", "Add the top-k realistic texts to each image by hierarchical retrieval.", options=RetrieveOptions
)
def retrieve(run: Run, opts: RetrieveOptions) -> None:
    """Read image records with embeddings and add `texts`: the top-k sentences of the index as
    {id, text, score} (score = cosine), best first. Other records pass through unchanged; every field is kept.

    Retrieval is hierarchical: the nearest text semantic clusters (k-means centroids) first, then the
    nearest sentences inside them. Image embeddings must come from the model that embedded the index's
    sentences; a different model is refused.
    """
    from rsyn.stages.retrieve import run_retrieve

    run_retrieve(run, opts)
