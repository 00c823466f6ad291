"""rsyn caption: image semantic augmented generation (docs/design.md, step 9).

For each image record from `rsyn retrieve`, in batches:
1. semantic tags: zero-shot, the record's image embedding against the CLIP
   text embeddings of the tag vocabulary (rsyn.tags);
2. a brief caption of the image file at `path` (rsyn.models.captioner);
3. an LLM merges the best realistic text (`texts[0]`), the caption and the
   tags into `syn_text` (rsyn.prompts, rsyn.llm), cleaned.
Records of other kinds pass through untouched; output order is input order.

A record that cannot be processed (no retrieved texts, a bad embedding, an
unreadable image, an empty or failed generation) is bad input under the
shared rules: one line naming file and line and exit 2, or with
--on-error skip a count in the summary and the record in --rejects.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsyn.error_rate import ErrorRate
from rsyn.errors import RsynError
from rsyn.localfiles import shown
from rsyn.models.identity import model_identity
from rsyn.options.caption import CaptionOptions
from rsyn.records import decode_embeddings, stable_hash

if TYPE_CHECKING:
    from rsyn.command import Run

NONE = "none"


@dataclass
class Item:
    """One image record on its way through a batch."""

    record: dict
    where: str
    raw_text: str = ""
    embedding: np.ndarray | None = None
    image: object = None
    caption: str | None = None


@dataclass
class Pending:
    """A batch whose prompts went to the LLM; `collect()` waits for the generations."""

    batch: list[tuple[dict, str]]
    items: list[Item]
    prompts: list = field(default_factory=list)
    collect: Callable[[], list] | None = None


class CaptionStage:
    """Holds the models (loaded on first use) and processes batches of image records."""

    def __init__(self, run: Run, opts: CaptionOptions):
        from rsyn.prompts import PromptTemplate
        from rsyn.tags import default_cache_dir

        self.run = run
        self.opts = opts
        self.cache_dir = Path(opts.cache_dir) if opts.cache_dir else default_cache_dir()
        self.template = PromptTemplate.from_file(opts.prompt_file)
        self.use_captioner = opts.captioner.strip().lower() != NONE
        self.vocabulary = self._vocabulary() if opts.max_tags > 0 else []
        self._taggers: dict[str, object] = {}
        self._captioner = None
        self._llm = None
        self._loader = None
        self._image_pool = None
        self.seconds = {"tags": 0.0, "caption": 0.0, "llm": 0.0}
        # a batch waits for its slowest request: give the server backend enough requests to keep every slot busy
        self.batch_size = max(1, opts.batch_size)
        self.batches_in_flight = 0
        if opts.llm_backend == "openai":
            self.batch_size = max(self.batch_size, 4 * opts.llm_concurrency)
            self.batches_in_flight = 1
        self.counts = {"images": 0, "captioned": 0, "with_tags": 0, "tags": 0}
        self.rate = ErrorRate(opts.max_error_rate, "LLM generations")

    # ------------------------------------------------------------------ vocabulary and models
    def _vocabulary(self) -> list[str]:
        from rsyn.tags import mine_tags, read_tag_file, unique_tags

        opts = self.opts
        if not opts.tags_file and not opts.mine_tags_from:
            raise RsynError(
                "no tag vocabulary: give --tags FILE (one tag per line, e.g. the RAM++ list) and/or "
                "--mine-tags-from INDEX_DIR, or --max-tags 0 to write no tags"
            )
        given = read_tag_file(opts.tags_file) if opts.tags_file else []
        mined = []
        if opts.mine_tags_from:
            mined = mine_tags(
                opts.mine_tags_from,
                n_tags=opts.mined_tags,
                sample=opts.mine_sample,
                min_count=opts.mine_min_count,
                seed=self.run.seed,
                exclude=set(given),
                cache_dir=self.cache_dir,
                note=self.run.note,
            )
        vocabulary = unique_tags(given + mined)
        if not vocabulary:
            raise RsynError(
                f"--mine-tags-from {opts.mine_tags_from}: no noun phrase occurs "
                f"{opts.mine_min_count} times; lower --mine-min-count or give --tags FILE"
            )
        self.run.extra["tag_vocabulary"] = {"given": len(given), "mined": len(mined), "total": len(vocabulary)}
        self.run.note(f"{len(vocabulary):,} tags ({len(given):,} given, {len(mined):,} mined)")
        if opts.save_tags:
            from rsyn.stream import write_bytes_atomic

            write_bytes_atomic(opts.save_tags, "".join(f"{t}\n" for t in vocabulary).encode("utf-8"))
        return vocabulary

    def tagger(self, emb_model: str):
        """The tagger for records embedded by `emb_model` (or the --model override), loaded once."""
        key = emb_model if self.opts.clip_model is None else "--model"
        if key not in self._taggers:
            from rsyn.models.clip import load_clip
            from rsyn.tags import ZeroShotTagger

            if self.opts.clip_model is None:
                clip = load_clip(emb_model, None, self.run.device)
            else:
                clip = load_clip(self.opts.clip_model, self.opts.clip_pretrained, self.run.device)
                if emb_model != clip.name:
                    self.run.note(
                        f"tagging with --model {clip.name}; records say emb_model {emb_model}: "
                        "the scores mean something only if both are the same model"
                    )
            self._taggers[key] = ZeroShotTagger(self.vocabulary, clip, self.opts.tag_template, self.cache_dir)
        return self._taggers[key]

    @property
    def loader(self):
        """Images from `path`, the --images folder or their URL (rsyn.images: robust decoding, byte and pixel caps)."""
        if self._loader is None:
            from concurrent.futures import ThreadPoolExecutor

            from rsyn.images import Fetcher, ImageLoader, open_image_folder

            folder = None
            if self.opts.images:
                folder = open_image_folder(self.opts.images, self.opts.max_bytes, note=self.run.note)
            o = self.opts
            fetcher = None
            if o.fetch and folder is None:
                fetcher = Fetcher(
                    o.timeout,
                    o.deadline,
                    o.retries,
                    o.max_bytes,
                    pool_size=o.image_worker_count(),
                    allow_private=o.allow_private_urls,
                )
            # the captioner shrinks every image to its input size: a JPEG may decode at 1/2..1/8 scale above it
            self._loader = ImageLoader(
                folder, fetcher, max_bytes=o.max_bytes, draft_side=self.captioner.input_side, root=o.path_root
            )
            self._image_pool = ThreadPoolExecutor(self.opts.image_worker_count(), thread_name_prefix="rsyn-image")
        return self._loader

    @property
    def captioner(self):
        if self._captioner is None:
            from rsyn.models.captioner import load_captioner

            _quiet_transformers()
            self._captioner = load_captioner(self.opts.captioner, self.run.device)
            self.run.note(f"captioner {self._captioner.name}")
        return self._captioner

    @property
    def llm(self):
        if self._llm is None:
            from rsyn.llm import Sampling, open_backend

            o = self.opts
            if o.llm_backend != "openai":
                _quiet_transformers()
            sampling = Sampling(max_tokens=o.llm_max_tokens, temperature=o.temperature, top_p=o.top_p)
            device = self.run.device if o.llm_backend != "openai" else "cpu"
            self._llm = open_backend(
                o.llm_backend,
                o.llm_model,
                sampling,
                api=o.llm_api,
                url=o.llm_url,
                device=device,
                seed=self.run.seed,
                concurrency=o.llm_concurrency,
                timeout=o.llm_timeout,
                retries=o.llm_retries,
                batch_size=o.llm_batch_size,
                api_key=o.api_key,
                max_reply_bytes=o.llm_max_reply_bytes,
                tensor_parallel_size=o.tensor_parallel_size,
                gpu_memory_utilization=o.gpu_memory_utilization,
                max_model_len=o.max_model_len,
            )
            # a served model is named by its server; a local one by its folder's basename and content hash
            self.llm_model = self._llm.model if o.llm_backend == "openai" else model_identity(self._llm.model)
            self.run.note(f"LLM {self._llm.backend}:{self.llm_model} ({self._llm.api} prompts)")
            if getattr(self._llm, "notice", None):
                self.run.note(self._llm.notice)
        return self._llm

    def close(self) -> None:
        if self._llm is not None:
            self.run.extra["llm"] = self._llm.stats.as_dict()
            self._llm.close()
        if self._image_pool is not None:
            self._image_pool.shutdown(wait=False, cancel_futures=True)
        self.run.extra["counts"] = dict(self.counts)
        self.run.extra["seconds"] = {k: round(v, 3) for k, v in self.seconds.items()}

    # ------------------------------------------------------------------ one batch
    def start(self, batch: list[tuple[dict, str]]) -> Pending:
        """Validate, tag and caption a batch, then hand its prompts to the LLM (which may still be working)."""
        items = [self._validate(record, where) for record, where in batch if record.get("kind") == "image"]
        items = [item for item in items if item is not None]
        pending = Pending(batch, items)
        if items:
            self.counts["images"] += len(items)
            items = self._tag(items)
            items = self._caption(items)
            pending.items = items
            if items:
                pending.prompts = [
                    self.template.render(item.raw_text, item.caption, item.record.get("tags", [])) for item in items
                ]
                seeds = [stable_hash(f"{self.run.seed}\x1f{item.record.get('id', item.raw_text)}") for item in items]
                start = time.perf_counter()
                pending.collect = self.llm.submit(pending.prompts, seeds)
                self.seconds["llm"] += time.perf_counter() - start
        return pending

    def finish(self, pending: Pending) -> list[dict]:
        """The batch's output records in input order (records that failed under --on-error skip left out)."""
        items = self._fuse(pending) if pending.collect is not None else pending.items
        done = {id(item.record) for item in items}
        return [record for record, _ in pending.batch if record.get("kind") != "image" or id(record) in done]

    def _validate(self, record: dict, where: str) -> Item | None:
        texts = record.get("texts")
        first = texts[0] if isinstance(texts, list) and texts else None
        raw = first.get("text") if isinstance(first, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            return self._fail(
                where, "image record has no retrieved text (`texts`, from `rsyn retrieve`)", record, "missing_texts"
            )
        item = Item(record, where, raw_text=raw)
        if self.vocabulary:
            if not isinstance(record.get("emb"), str) or not isinstance(record.get("emb_model"), str):
                return self._fail(
                    where,
                    "image record has no embedding (`emb` and `emb_model`, from `rsyn embed`)",
                    record,
                    "missing_embedding",
                )
        if self.use_captioner:
            path, url = record.get("path"), record.get("url")
            has_path = isinstance(path, str) and bool(path)
            has_url = isinstance(url, str) and bool(url) and (self.opts.images or self.opts.fetch)
            if not has_path and not has_url:
                return self._fail(
                    where,
                    "image record has no image for the captioner: no `path`, and no `url` "
                    "to look up (--images DIR) or fetch (or use --captioner none)",
                    record,
                    "missing_image",
                )
        return item

    def _load_images(self, items: list[Item]) -> list[Item]:
        """Read and decode the batch's images on a thread pool; an image that cannot be had fails its record."""
        from rsyn.images import ImageError

        loader = self.loader

        def load(item: Item):
            try:
                return loader.load(item.record).image
            except ImageError as exc:
                return exc
            except Exception as exc:  # a decoder bug on one image must not end the run
                return ImageError("decode_failed", f"{type(exc).__name__}: {exc}"[:200])

        kept = []
        for item, image in zip(items, self._image_pool.map(load, items)):
            if isinstance(image, ImageError):
                source = shown(str(item.record.get("path") or item.record.get("url")))  # hostile: cut short
                self._fail(item.where, f"cannot read image {source}: {image}", item.record, "bad_image")
                continue
            item.image = image
            kept.append(item)
        return kept

    def _fail(self, where: str, message: str, record: dict, reason: str) -> None:
        self.run.error(where, message, record=record, reason=reason)
        return None

    def _tag(self, items: list[Item]) -> list[Item]:
        if not self.vocabulary:
            return items
        start = time.perf_counter()
        groups: dict[str, list[Item]] = {}
        for item in items:
            groups.setdefault(item.record["emb_model"], []).append(item)
        failed = set()
        for emb_model, group in groups.items():
            tagger = self.tagger(emb_model)
            matrix, good = self._embeddings(group, tagger.dim)
            decoded = {id(item) for item in good}
            failed.update(id(item) for item in group if id(item) not in decoded)
            tags, scores = tagger.top(matrix, self.opts.max_tags, self.opts.tag_threshold)
            for item, item_tags, item_scores in zip(good, tags, scores):
                item.record["tags"] = item_tags
                item.record["tag_scores"] = item_scores
                item.record["tag_model"] = tagger.model
                self.counts["tags"] += len(item_tags)
                self.counts["with_tags"] += bool(item_tags)
        self.seconds["tags"] += time.perf_counter() - start
        return [item for item in items if id(item) not in failed]

    def _embeddings(self, group: list[Item], dim: int) -> tuple[np.ndarray, list[Item]]:
        try:
            return decode_embeddings([item.record["emb"] for item in group], dim), group
        except ValueError:
            pass  # find the bad ones one by one; the rest go on
        rows, good = [], []
        for item in group:
            try:
                rows.append(decode_embeddings([item.record["emb"]], dim)[0])
                good.append(item)
            except ValueError as exc:
                self._fail(item.where, f"bad `emb` for the tag model: {exc}", item.record, "bad_embedding")
        return (np.stack(rows) if rows else np.zeros((0, dim), np.float32)), good

    def _caption(self, items: list[Item]) -> list[Item]:
        if not self.use_captioner:
            return items
        start = time.perf_counter()
        captioner = self.captioner
        items = self._load_images(items)
        if not items:
            return items
        captions = captioner.caption(
            [item.image for item in items],
            max_new_tokens=self.opts.caption_max_tokens,
            num_beams=self.opts.caption_beams,
        )
        kept = []
        for item, caption in zip(items, captions):
            item.image = None  # decoded pixels are not needed any more
            if not caption:
                self._fail(
                    item.where,
                    f"the captioner {captioner.name} returned an empty caption",
                    item.record,
                    "empty_caption",
                )
                continue
            item.caption = caption
            item.record["caption"] = caption
            item.record["caption_model"] = captioner.name
            kept.append(item)
        self.counts["captioned"] += len(kept)
        self.seconds["caption"] += time.perf_counter() - start
        return kept

    def _fuse(self, pending: Pending) -> list[Item]:
        from rsyn.llm import clean_generation

        start = time.perf_counter()
        llm = self.llm
        generations = pending.collect()
        kept, failures = [], []
        for item, prompt, generation in zip(pending.items, pending.prompts, generations):
            if generation.error is not None:
                failures.append("llm_failed")
                self._fail(
                    item.where,
                    f"LLM {llm.backend}:{self.llm_model} failed: {generation.error}",
                    item.record,
                    "llm_failed",
                )
                continue
            text = clean_generation(generation.text, prompt, self.opts.max_syn_words, self.opts.max_syn_chars)
            if not text:
                failures.append("empty_generation")
                self._fail(
                    item.where,
                    f"LLM {llm.backend}:{self.llm_model} returned no usable text (raw output {generation.text[:80]!r})",
                    item.record,
                    "empty_generation",
                )
                continue
            item.record["syn_text"] = text
            item.record["llm_model"] = self.llm_model
            item.record["llm_backend"] = llm.backend
            kept.append(item)
        self.seconds["llm"] += time.perf_counter() - start
        self.rate.add(len(pending.items), failures)  # may stop the run (--max-error-rate)
        return kept


def _quiet_transformers() -> None:
    # transformers draws a progress bar per model load on stderr; our own notes say what loads
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_caption(run: Run, opts: CaptionOptions) -> None:
    stage = CaptionStage(run, opts)
    try:
        run.write(_batches(run, stage))
    finally:
        stage.close()


def _batches(run: Run, stage: CaptionStage):
    """Output records in input order; with a server, one batch's requests stay in flight while the next is prepared."""
    in_flight: deque[tuple[Pending, int]] = deque()
    for batch in _read_batches(run, stage.batch_size):
        in_flight.append((stage.start(batch), len(batch)))
        while len(in_flight) > stage.batches_in_flight:
            pending, n = in_flight.popleft()
            yield from stage.finish(pending)
            run.advance(n)  # progress follows finished batches, not the reading ahead
    while in_flight:
        pending, n = in_flight.popleft()
        yield from stage.finish(pending)
        run.advance(n)


def _read_batches(run: Run, size: int):
    batch: list[tuple[dict, str]] = []
    images = 0
    for record in run.records():
        batch.append((record, run.where))
        images += record.get("kind") == "image"
        if images >= size:
            yield batch
            batch, images = [], 0
    if batch:
        yield batch
