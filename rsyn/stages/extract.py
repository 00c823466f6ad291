"""`rsyn extract`: documents in, filtered image and sentence records out (docs/design.md, steps 1, 2, 4, 5).

Flow: read documents (rsyn.documents) -> candidate records in reading order
(images; paragraphs split into sentences by Punkt) -> a window of candidates
goes through the filters (rsyn.filters) in the paper's order -> survivors are
written in document order. Windows keep memory bounded and let the spaCy and
language-model filters run batched.

Entropy needs corpus-wide word counts. With file inputs a first pass counts
the words of every document of every input (all shards, so that every shard
scores with the same p(w)); stdin can be read only once, so it takes a counts
file made by an earlier `--save-word-counts` run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rsyn.documents import Document, DocumentError, ImagePart, parse_document, raw_documents
from rsyn.errors import RsynError
from rsyn.filters import (
    LOG_BASES,
    CatFilter,
    EmojiFilter,
    EntropyFilter,
    Filter,
    ImageSizeFilter,
    PerplexityFilter,
    UrlFilter,
    WordCountFilter,
    count_words,
    load_word_counts,
    save_word_counts,
)
from rsyn.options.extract import FILTER_NAMES, ExtractOptions
from rsyn.records import image_id, text_id
from rsyn.stream import STDIO, TruncatedStream

if TYPE_CHECKING:
    from rsyn.command import Run

REPEATED_IMAGE = "image_repeated_in_doc"


def thresholds(opts: ExtractOptions, enabled: list[str]) -> dict:
    """The limits of the enabled filters, as --stats reports them."""
    limits = {
        "size": {"min_side": opts.min_side, "max_aspect": opts.max_aspect},
        "words": {"min_words": opts.min_words, "max_words": opts.max_words},
        "cat": {"min_complexity": opts.min_complexity, "require_action": opts.require_action},
        "entropy": {"min_entropy": opts.min_entropy},
        "ppl": {"min_ppl": opts.min_ppl, "max_ppl": opts.max_ppl},
    }
    return {k: v for name in enabled for k, v in limits.get(name, {}).items()}


def run_extract(run: Run, opts: ExtractOptions) -> None:
    _check_options(opts)
    paths = run.input_paths()
    enabled = [name for name in opts.filters if name not in opts.disable]
    counts = _word_counts(run, paths, opts, needed="entropy" in enabled)
    if opts.count_only or (opts.save_word_counts and STDIO in paths):
        return

    filters = _build_filters(run, opts, enabled, counts)
    run.declare_reasons(
        [REPEATED_IMAGE]
        + [r for f in filters if f.kind == "image" for r in f.reasons]
        + [r for f in filters if f.kind == "text" for r in f.reasons]
    )
    stats = run.extra
    stats.update(
        documents=0,
        images_in=0,
        images_out=0,
        sentences_in=0,
        sentences_out=0,
        paragraphs=0,
        end_markers_removed=0,
        filters=[f.name for f in filters],
    )
    stats["thresholds"] = thresholds(opts, enabled)  # rsyn report marks them on the score histograms
    ok = False
    try:
        run.write(_extract(run, paths, opts, filters))
        ok = True
        run.in_parts.update(images=stats["images_in"], sentences=stats["sentences_in"])
        run.out_parts.update(images=stats["images_out"], sentences=stats["sentences_out"])
    finally:
        for f in filters:
            f.close(ok)


def _check_options(opts: ExtractOptions) -> None:
    for option, names in (("--filters", opts.filters), ("--disable", opts.disable)):
        unknown = sorted(set(names) - set(FILTER_NAMES))
        if unknown:
            raise RsynError(f"{option} {','.join(unknown)}: unknown filter (known: {', '.join(FILTER_NAMES)})")
    if len(set(opts.filters)) != len(opts.filters):
        raise RsynError(f"--filters {','.join(opts.filters)}: a filter is named twice")
    if opts.fmt not in ("auto", "obelics", "mmc4"):
        raise RsynError(f"--format {opts.fmt!r}: expected auto, obelics or mmc4")
    if opts.entropy_log_base not in LOG_BASES:
        raise RsynError(f"--entropy-log-base {opts.entropy_log_base!r}: expected e, 2 or 10")
    if opts.count_only and not opts.save_word_counts:
        raise RsynError("--count-only needs --save-word-counts FILE")
    if opts.word_counts and opts.save_word_counts:
        raise RsynError("--word-counts loads counts and --save-word-counts makes them: use one of them")
    if opts.ppl_model.strip().lower() == "none":
        opts.disable.add("ppl")


# --------------------------------------------------------------------------- documents


def _documents(
    run: Run, paths: list[str], opts: ExtractOptions, *, sharded: bool = True, report_errors: bool = True
) -> Iterator[Document]:
    """Documents of the inputs, in order; this shard's only when `sharded`; bad ones per --on-error."""
    raw = _raw_documents(run, run.shard_paths() if sharded else paths, opts, report_errors)
    for where, raw_document, fmt in run.in_shard(raw) if sharded else raw:
        try:
            document = parse_document(raw_document, fmt)
        except DocumentError as exc:
            if report_errors:
                run.error(
                    where,
                    exc.message,
                    reason=exc.reason,
                    raw=raw_document if isinstance(raw_document, bytes) else None,
                    record=raw_document if isinstance(raw_document, dict) else None,
                )
            continue
        document.where = where
        yield document


def _raw_documents(run: Run, paths: list[str], opts: ExtractOptions, report_errors: bool):
    """(where, raw document, format) of every input in turn; an unreadable input is reported per --on-error."""
    for path in paths:
        try:
            yield from raw_documents(path, opts.fmt, opts.parquet_batch_rows)
        except DocumentError as exc:  # a whole input is unreadable
            if report_errors:
                run.error(exc.where or path, exc.message, reason=exc.reason)
        except TruncatedStream as exc:
            if report_errors:
                run.error(exc.where, exc.message, reason="corrupt_stream")


def _word_counts(run: Run, paths: list[str], opts: ExtractOptions, needed: bool):
    """Corpus word counts for the entropy filter: loaded, or counted in a first pass over the inputs."""
    if opts.word_counts:
        counts = load_word_counts(opts.word_counts)
        run.extra["word_counts"] = {
            "source": opts.word_counts,
            "vocabulary": len(counts),
            "words": sum(counts.values()),
        }
        return counts
    if not needed and not opts.save_word_counts:
        return None
    from_stdin = STDIO in paths
    if from_stdin and not opts.save_word_counts:
        raise RsynError(
            "the entropy filter needs corpus word counts and stdin can be read only once: make them "
            "with `rsyn extract --save-word-counts FILE` over the same documents, then pass "
            "--word-counts FILE (or --disable entropy)"
        )
    count_only = opts.count_only or from_stdin
    # In a two-pass run the second pass reports bad documents; counting reports them only when it is the run.
    counts: Counter = Counter()
    documents = 0
    for document in _documents(run, paths, opts, sharded=False, report_errors=count_only):
        documents += 1
        count_words((p for p in document.parts if type(p) is str), counts)
    source = "first pass over the inputs"
    if opts.save_word_counts:
        n = save_word_counts(opts.save_word_counts, counts)
        run.note(f"{n} word counts written to {opts.save_word_counts}")
        source = opts.save_word_counts
        if count_only:
            run.note(
                f"counted words only (stdin can be read once); extract with --word-counts {opts.save_word_counts}"
                if from_stdin
                else "counted words only (--count-only)"
            )
    run.extra["word_counts"] = {
        "source": source,
        "documents": documents,
        "vocabulary": len(counts),
        "words": sum(counts.values()),
    }
    return counts


# --------------------------------------------------------------------------- filters


def _build_filters(run: Run, opts: ExtractOptions, enabled: list[str], counts) -> list[Filter]:
    """The enabled filters in their order. CAT is built first so that its worker pool forks before the
    language model is loaded; the model is loaded now, so a missing one fails before any work."""
    built: dict[str, Filter] = {}
    for name in sorted(enabled, key=lambda n: n != "cat"):
        if name == "size":
            built[name] = ImageSizeFilter(opts.min_side, opts.max_aspect)
        elif name == "emoji":
            built[name] = EmojiFilter()
        elif name == "url":
            built[name] = UrlFilter()
        elif name == "words":
            built[name] = WordCountFilter(opts.min_words, opts.max_words)
        elif name == "cat":
            cat = CatFilter(
                opts.spacy_model, opts.min_complexity, opts.require_action, opts.spacy_processes, opts.spacy_batch_size
            )
            run.extra["cat"] = {"spacy_model": cat.model, "processes": cat.processes}
            built[name] = cat
        elif name == "entropy":
            built[name] = EntropyFilter(counts, opts.min_entropy, opts.entropy_log_base)
            run.extra["entropy_log_base"] = opts.entropy_log_base
        elif name == "ppl":
            model, tokenizer = _load_lm(run, opts)
            run.extra["ppl_model"] = opts.ppl_model
            built[name] = PerplexityFilter(model, tokenizer, opts.min_ppl, opts.max_ppl, opts.ppl_batch_size)
    return [built[name] for name in enabled]


def _load_lm(run: Run, opts: ExtractOptions):
    from rsyn.models.lm import load_causal_lm

    try:
        return load_causal_lm(opts.ppl_model, run.device, opts.ppl_precision)
    except RsynError as exc:
        raise RsynError(f"perplexity filter: {exc}, or turn the filter off with --ppl-model none") from None


# --------------------------------------------------------------------------- records


def _sentence_splitter():
    import nupunkt

    tokenizer = nupunkt.load_default_model()  # Punkt parameters shipped with nupunkt: works offline
    return tokenizer.tokenize


def _candidates(document: Document, split) -> Iterator[tuple[dict, bool]]:
    """(record, is a repeated image) for each item of the document, in reading order.

    `pos` counts every candidate of the document from 0 (images, including
    repeats, and sentences), before any filter, so it does not move when a
    threshold changes.
    """
    doc = document.doc
    seen: set[str] = set()
    pos = 0
    for part in document.parts:
        if type(part) is ImagePart:
            record = {"id": image_id(part.url), "kind": "image", "doc": doc, "pos": pos, "url": part.url}
            if part.width is not None and part.height is not None:
                record["width"] = part.width
                record["height"] = part.height
            record["alt"] = part.alt
            if part.image_name is not None:  # MMC4: finds the image in the MMC4 image download
                record["image_name"] = part.image_name
            record["scores"] = {}
            yield record, part.url in seen
            seen.add(part.url)
            pos += 1
            continue
        for sentence in split(part):
            text = " ".join(sentence.split())  # a sentence may span lines of its paragraph
            if text:
                yield {"id": text_id(text), "kind": "text", "doc": doc, "pos": pos, "text": text, "scores": {}}, False
                pos += 1


def _extract(run: Run, paths: list[str], opts: ExtractOptions, filters: list[Filter]) -> Iterator[dict]:
    split = _sentence_splitter()
    stats = run.extra
    window: list[tuple[dict, str]] = []
    sentences = 0
    for document in _documents(run, paths, opts):
        stats["documents"] += 1
        stats["end_markers_removed"] += document.markers_removed
        for record, repeated in _candidates(document, split):
            run.count_in(1)
            if record["kind"] == "image":
                stats["images_in"] += 1
                if repeated:
                    run.drop(record, REPEATED_IMAGE, document.where)
                    continue
            else:
                stats["sentences_in"] += 1
                sentences += 1
            window.append((record, document.where))
        stats["paragraphs"] += sum(1 for p in document.parts if type(p) is str)
        if sentences >= opts.window:
            yield from _filter_window(run, window, filters)
            window, sentences = [], 0
    yield from _filter_window(run, window, filters)


def _filter_window(run: Run, window: list[tuple[dict, str]], filters: list[Filter]) -> list[dict]:
    """The records of the window that pass every filter, in window order; the others are dropped."""
    alive = [True] * len(window)
    for f in filters:
        chosen = [i for i, (record, _) in enumerate(window) if alive[i] and record["kind"] == f.kind]
        if not chosen:
            continue
        reasons = f.apply([window[i][0] for i in chosen])
        for i, reason in zip(chosen, reasons):
            if reason is not None:
                alive[i] = False
                record, where = window[i]
                run.drop(record, reason, where)
    survivors = [record for (record, _), keep in zip(window, alive) if keep]
    for record in survivors:
        run.extra["images_out" if record["kind"] == "image" else "sentences_out"] += 1
    return survivors
