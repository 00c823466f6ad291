"""rsyn embed: CLIP embeddings for image and text records (docs/design.md, steps 3 and 7, and "Records").

The records are read in chunks of a few batches. As soon as a chunk is read,
its images go to a thread pool (fetch or read, decode, preprocess) and an
assembler thread stacks them into batches and tokenizes the chunk's texts;
the main thread only runs the model, on the oldest ready chunk, while the
next chunks load. Output order is input order; a chunk's batches are the same
from run to run, so the same input gives the same bytes.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rsyn.error_rate import ErrorRate
from rsyn.images import (
    Fetcher,
    ImageError,
    ImageLoader,
    open_image_folder,
    size_rule,
)
from rsyn.options.embed import EmbedOptions
from rsyn.records import encode_embeddings

if TYPE_CHECKING:
    from rsyn.command import Run

CHUNK_BATCHES = 4  # batches per chunk: partial batches only at chunk ends
PREFETCH_CHUNKS = 2  # chunks loading while one is on the model


def emb_field_for(text_field: str) -> str:
    """Default embedding field: text -> emb, syn_text -> syn_emb, other -> other_emb."""
    if text_field == "text":
        return "emb"
    if text_field.endswith("_text"):
        return text_field[: -len("_text")] + "_emb"
    return text_field + "_emb"


def model_field_for(emb_field: str) -> str:
    """emb -> emb_model (docs/design.md, "Records"); syn_emb -> syn_emb_model."""
    return emb_field + "_model"


# --------------------------------------------------------------------------- one chunk


@dataclass
class Item:
    record: dict
    where: str
    image: Future | None = None  # -> (tensor, width, height) or ImageError
    text: str | None = None
    loads_image: bool = False  # counted by --max-error-rate


@dataclass
class Chunk:
    items: list[Item]
    image_batches: list = field(default_factory=list)  # (positions, tensor)
    text_batches: list = field(default_factory=list)  # (positions, tokens)
    failures: dict = field(default_factory=dict)  # position -> ImageError
    sizes: dict = field(default_factory=dict)  # position -> (width, height)
    tokenize_seconds: float = 0.0  # in the assembler thread, beside the model calls


def run_embed(run: Run, opts: EmbedOptions) -> None:
    from rsyn.models.clip import load_clip

    emb_field = opts.emb_field or emb_field_for(opts.text_field)
    model_field = model_field_for(emb_field)
    text_only = opts.text_field != "text"  # embedding another text field: no images at all
    device = run.device
    started = time.perf_counter()
    clip = load_clip(opts.model, opts.pretrained, device, opts.precision)
    load_seconds = time.perf_counter() - started
    on_cuda = device.startswith("cuda")
    batch_size = opts.batch_size or (256 if on_cuda else 32)
    workers = opts.image_worker_count()
    random_note = " (RANDOM weights: embeddings mean nothing)" if clip.name.endswith("@random") else ""
    run.note(
        f"model {clip.name}, {clip.dim} dims, {str(clip.dtype).replace('torch.', '')}, "
        f"batch {batch_size}, {workers} image workers{random_note}"
    )

    loader = None
    folder = None
    if not text_only and "image" in opts.kinds:
        if opts.images:
            folder = open_image_folder(opts.images, opts.max_bytes, note=run.note)
        fetcher = (
            None
            if folder is not None
            else Fetcher(
                opts.timeout,
                opts.deadline,
                opts.retries,
                opts.max_bytes,
                opts.user_agent,
                pool_size=workers,
                allow_private=opts.allow_private_urls,
            )
        )
        loader = ImageLoader(
            folder,
            fetcher,
            opts.max_pixels,
            opts.max_bytes,
            draft_side=clip.image_size if opts.draft else None,
            root=opts.path_root,
        )

    counts = {"images": 0, "texts": 0, "size_checked": 0}
    rate = ErrorRate(opts.max_error_rate, "images")
    compute_seconds = tokenize_seconds = 0.0
    pool = ThreadPoolExecutor(workers, thread_name_prefix="rsyn-image")
    # one assembler: it waits on the pool's futures, so it must not be a pool thread itself
    assembler = ThreadPoolExecutor(1, thread_name_prefix="rsyn-batch")
    pending: deque[Future] = deque()
    stage_start = time.perf_counter()
    finished = False
    try:
        chunk_size = batch_size * CHUNK_BATCHES
        rule = (opts.min_side, opts.max_aspect)
        for items in _read_chunks(run, opts, loader, pool, clip, chunk_size, text_only):
            pending.append(assembler.submit(_assemble, items, batch_size, clip, on_cuda))
            while len(pending) > PREFETCH_CHUNKS:
                chunk = pending.popleft().result()
                tokenize_seconds += chunk.tokenize_seconds
                compute_seconds += _finish(run, chunk, clip, emb_field, model_field, counts, rule, rate)
        while pending:
            chunk = pending.popleft().result()
            tokenize_seconds += chunk.tokenize_seconds
            compute_seconds += _finish(run, chunk, clip, emb_field, model_field, counts, rule, rate)
        finished = True
    finally:
        for future in pending:
            future.cancel()
        # on an error or Ctrl-C, do not wait for downloads in flight (each ends by its deadline anyway)
        pool.shutdown(wait=finished, cancel_futures=True)
        assembler.shutdown(wait=finished, cancel_futures=True)
        if folder is not None:
            folder.close()
        if loader is not None and loader.fetcher is not None:
            loader.fetcher.close()
    seconds = time.perf_counter() - stage_start
    run.extra.update(
        {
            "model": clip.name,
            "dim": clip.dim,
            "device": device,
            "dtype": str(clip.dtype).replace("torch.", ""),
            "batch_size": batch_size,
            "workers": workers,
            "emb_field": emb_field,
            "text_field": opts.text_field,
            "images": counts["images"],
            "texts": counts["texts"],
            "size_rule_applied": counts["size_checked"],
            "model_load_seconds": round(load_seconds, 3),
            "embed_seconds": round(seconds, 3),
            "model_seconds": round(compute_seconds, 3),
            "tokenize_seconds": round(tokenize_seconds, 3),
            "images_per_second": round(counts["images"] / seconds, 2) if seconds and counts["images"] else 0,
            "texts_per_second": round(counts["texts"] / seconds, 2) if seconds and counts["texts"] else 0,
        }
    )


def _read_chunks(run: Run, opts: EmbedOptions, loader, pool, clip, chunk_size: int, text_only: bool):
    """Chunks of input items, image loads already submitted; bad input reported here, in input order."""
    kinds = set(opts.kinds)
    text_field = opts.text_field
    prepare = clip.prepare
    rule = (opts.min_side, opts.max_aspect)
    items: list[Item] = []
    for record in run.records():
        kind = record.get("kind")
        item = Item(record, run.where)
        if kind in kinds:
            if text_only or kind != "image":
                text = record.get(text_field)
                if not isinstance(text, str):
                    run.error(
                        item.where,
                        f"{kind} record {record.get('id', '?')} has no string `{text_field}`",
                        record=record,
                        reason="missing_field",
                    )
                    continue
                item.text = text
            else:
                if not (isinstance(record.get("url"), str) and record["url"]) and not (
                    isinstance(record.get("path"), str) and record["path"]
                ):
                    run.error(
                        item.where,
                        f"image record {record.get('id', '?')} has no `url` or `path`",
                        record=record,
                        reason="missing_field",
                    )
                    continue
                item.image = pool.submit(_load_image, loader, prepare, record, rule)
                item.loads_image = True
        items.append(item)
        if len(items) >= chunk_size:
            yield items
            items = []
    if items:
        yield items


class FailsSizeRule(ImageError):
    """Decoded, but too small or too elongated: not worth a model call."""

    def __init__(self, width: int, height: int):
        super().__init__("size_rule", f"{width}x{height}")
        self.width, self.height = width, height


def _load_image(loader: ImageLoader, prepare, record: dict, rule: tuple[int, float]):
    """Runs in a worker thread: record -> (model-ready pixels, width, height). Never raises."""
    try:
        loaded = loader.load(record)
        if _size_unknown(record) and not size_rule(loaded.width, loaded.height, *rule)[0]:
            return FailsSizeRule(loaded.width, loaded.height)
        return prepare(loaded.image), loaded.width, loaded.height
    except ImageError as exc:
        return exc
    except Exception as exc:  # a decoder bug on one image must not end the run
        return ImageError("decode_failed", f"{type(exc).__name__}: {exc}"[:200])


def _assemble(items: list[Item], batch_size: int, clip, pin: bool) -> Chunk:
    """Runs in the assembler thread: stack the chunk's images into batches, tokenize its texts."""
    import torch

    chunk = Chunk(items)
    tensors, positions = [], []

    def flush_images():
        if tensors:
            batch = torch.stack(tensors)
            chunk.image_batches.append((list(positions), batch.pin_memory() if pin else batch))
            tensors.clear()
            positions.clear()

    texts, text_positions = [], []
    for position, item in enumerate(items):
        if item.image is not None:
            result = item.image.result()
            item.image = None  # the tensor lives on in the batch only
            if isinstance(result, ImageError):
                chunk.failures[position] = result
                continue
            tensor, width, height = result
            chunk.sizes[position] = (width, height)
            tensors.append(tensor)
            positions.append(position)
            if len(tensors) == batch_size:
                flush_images()
        elif item.text is not None:
            texts.append(item.text)
            text_positions.append(position)
    flush_images()
    if texts:
        started = time.perf_counter()
        tokens = clip.tokenize(texts)
        # texts of similar length share a batch, so cutting the padding (clip.encode_tokens) saves most
        # of the work: web sentences are ~20 tokens of CLIP's 77
        order = np.argsort(clip.token_lengths(tokens), kind="stable") if clip.trims_padding else np.arange(len(texts))
        for start in range(0, len(texts), batch_size):
            picked = order[start : start + batch_size]
            chunk.text_batches.append(([text_positions[i] for i in picked], tokens[torch.from_numpy(picked)]))
        chunk.tokenize_seconds = time.perf_counter() - started
    return chunk


def _finish(
    run: Run,
    chunk: Chunk,
    clip,
    emb_field: str,
    model_field: str,
    counts: dict,
    rule: tuple[int, float],
    rate: ErrorRate,
) -> float:
    """Run the model on a chunk, apply the size rule, write its records in input order. Returns model seconds."""
    start = time.perf_counter()
    embeddings: dict[int, str] = {}
    batches = [(p, clip.encode_images(b)) for p, b in chunk.image_batches]
    batches += [(p, clip.encode_tokens(t)) for p, t in chunk.text_batches]
    model_seconds = time.perf_counter() - start
    for positions, matrix in batches:
        # a NaN or zero row (e.g. a half-precision overflow) is that record's drop, not the run's end
        good = np.isfinite(matrix).all(axis=1) & (np.abs(matrix).sum(axis=1) > 0)
        for position, emb in zip(
            (p for p, g in zip(positions, good) if g), encode_embeddings(matrix[good]), strict=True
        ):
            embeddings[position] = emb
        for position in (p for p, g in zip(positions, good) if not g):
            chunk.failures[position] = ImageError("bad_embedding", "the model gave a NaN or zero vector")
    # --max-error-rate: images this run failed to get; the size rule is a filter, and what img2dataset could not
    # download (--images) failed before this run
    tried = [
        p
        for p, item in enumerate(chunk.items)
        if item.loads_image and getattr(chunk.failures.get(p), "reason", None) != "not_downloaded"
    ]
    failed = [chunk.failures[p].reason for p in tried if p in chunk.failures]
    rate.add(len(tried), [reason for reason in failed if reason != "size_rule"])  # may stop the run
    out = []
    for position, item in enumerate(chunk.items):
        record = item.record
        failure = chunk.failures.get(position)
        if isinstance(failure, FailsSizeRule):
            _size_ok(run, record, item.where, failure.width, failure.height, counts, rule)  # scores, drop
            continue
        if failure is not None:
            run.drop(record, failure.reason, where=item.where, detail=failure.detail)
            continue
        emb = embeddings.get(position)
        if emb is None:  # a kind we do not embed: passes through untouched
            out.append(record)
            continue
        if position in chunk.sizes:
            if not _size_ok(run, record, item.where, *chunk.sizes[position], counts, rule):
                continue
            counts["images"] += 1
        else:
            counts["texts"] += 1
        record[emb_field] = emb
        record[model_field] = clip.name
        out.append(record)
    run.write(out)
    run.advance(len(chunk.items))
    return model_seconds


def _size_unknown(record: dict) -> bool:
    scores = record.get("scores")
    known = isinstance(record.get("width"), int) and isinstance(record.get("height"), int)
    return not known or (isinstance(scores, dict) and scores.get("size") == "unknown")


def _size_ok(
    run: Run, record: dict, where: str, width: int, height: int, counts: dict, rule: tuple[int, float]
) -> bool:
    """The paper's size rule, for images whose size was unknown upstream; fills width/height."""
    if not _size_unknown(record):
        return True
    scores = record.get("scores")
    counts["size_checked"] += 1
    ok, min_side, aspect = size_rule(width, height, *rule)
    if not isinstance(scores, dict):
        scores = record["scores"] = {}
    record["width"], record["height"] = width, height
    scores["min_side"] = min_side
    scores["aspect"] = round(aspect, 4)
    scores["size"] = "ok" if ok else "fail"
    if not ok:
        run.drop(record, "size_rule", where=where, width=width, height=height)
    return ok
