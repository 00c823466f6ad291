"""Each filter unit of `rsyn extract` at its boundaries, with the real components (regex, spaCy, numpy)."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from rsyn.filters import (
    CatFilter,
    EmojiFilter,
    EntropyFilter,
    ImageSizeFilter,
    UrlFilter,
    WordCountFilter,
    count_words,
    load_word_counts,
    save_word_counts,
    words_of,
)


def image(width=None, height=None):
    record = {"kind": "image", "url": "http://x/y.jpg", "scores": {}}
    if width is not None:
        record.update(width=width, height=height)
    return record


def text(sentence):
    return {"kind": "text", "text": sentence, "scores": {}}


def test_image_size_boundaries():
    f = ImageSizeFilter()
    records = [
        image(100, 100),
        image(99, 500),
        image(300, 100),
        image(301, 100),
        image(100, 300),
        image(100, 301),
        image(3000, 1000),
        image(),
    ]
    assert f.apply(records) == [None, "image_too_small", None, "image_bad_aspect", None, "image_bad_aspect", None, None]
    assert records[0]["scores"] == {"min_side": 100, "aspect": 1.0}
    assert records[3]["scores"]["aspect"] == pytest.approx(3.01)
    assert records[-1]["scores"] == {"size": "unknown"} and "width" not in records[-1]


def test_image_size_is_tunable():
    assert ImageSizeFilter(min_side=50, max_aspect=4).apply([image(60, 240), image(49, 100)]) == [
        None,
        "image_too_small",
    ]


def test_word_count_boundaries():
    def sentence(n):
        return " ".join(["word"] * n) + "."

    records = [text(sentence(n)) for n in (2, 3, 81, 82)]
    assert WordCountFilter().apply(records) == ["too_few_words", None, None, "too_many_words"]
    assert [r["scores"]["words"] for r in records] == [2, 3, 81, 82]
    # punctuation, symbols and emoji are not words; inner apostrophes are part of one
    assert words_of("Don't stop — it's 5 o'clock! 😀") == ["don't", "stop", "it's", "5", "o'clock"]


@pytest.mark.parametrize(
    "sentence,has",
    [
        ("A dog plays in the garden 😀", True),
        ("Flags 🇫🇷 on the wall", True),
        ("A heart ❤️ drawn on sand", True),
        ("Press 1️⃣ to continue", True),
        ("Copyright © 2020 and ™ and ✓ are text symbols", False),
        ("A plain sentence with numbers 123 and #tags", False),
    ],
)
def test_emoji(sentence, has):
    record = text(sentence)
    assert EmojiFilter().apply([record]) == ["has_emoji" if has else None]
    assert ("emoji" in record["scores"]) is has


@pytest.mark.parametrize(
    "sentence,url",
    [
        ("See https://example.org/a?b=1 for details", "https://example.org/a?b=1"),
        ("Visit www.shop.example now", "www.shop.example"),
        ("Buy it on amazon.com today", "amazon.com"),
        ("Mail us at info@photos.co.uk please", "photos.co.uk"),
        ("The dog ran e.g. to the park at 5 p.m.", None),
        ("A file named photo.jpg on a desk", None),
    ],
)
def test_url(sentence, url):
    record = text(sentence)
    assert UrlFilter().apply([record]) == ["has_url" if url else None]
    assert record["scores"].get("url") == url


@pytest.fixture(scope="module")
def cat():
    f = CatFilter("auto")
    yield f
    f.close()


def test_cat_complexity_and_action(cat):
    records = [
        text(s)
        for s in [
            "A dog runs on the beach.",  # dog -runs-> (on) beach: complexity 1, one action
            "Two children play football in the park.",
            "A red car parked near the station.",  # a verb in a reduced relative clause
            "A red car.",  # no verb
            "The view from the top of the mountain at sunset.",  # objects and relations, no verb
            "Click here to learn more.",  # imperative: no subject, no relation
            "Buy now and save big on shoes",  # imperative: no subject, no relation
        ]
    ]
    assert cat.apply(records) == [
        None,
        None,
        None,
        "cat_no_action",
        "cat_no_action",
        "cat_low_complexity",
        "cat_low_complexity",
    ]
    assert records[0]["scores"]["cat"] == {"complexity": 1, "actions": 1}
    assert records[1]["scores"]["cat"]["complexity"] >= 2
    assert records[3]["scores"]["cat"] == {"complexity": 1, "actions": 0}


def test_cat_is_tunable(cat):
    lenient = CatFilter("auto", min_complexity=0, require_action=False)
    strict = CatFilter("auto", min_complexity=2)
    sentences = ["A red car.", "Click here to learn more.", "A dog runs on the beach."]
    assert lenient.apply([text(s) for s in sentences]) == [None, None, None]
    assert strict.apply([text(s) for s in sentences]) == ["cat_low_complexity"] * 3


# Sentences from real web pages that the parse used to get wrong (issue 17), with what CAT must say now.
# (complexity lower bound, actions lower bound or exact 0)
@pytest.mark.parametrize(
    "sentence, min_complexity, has_action",
    [
        # pronoun subjects and objects are scene-graph objects
        ("It runs.", 1, True),
        ("She loves him.", 1, True),
        # a verb under xcomp takes its head's subject: He -round up-> bombers
        ("He has promised to round up suicide bombers before they strike.", 1, True),
        # ... or its head's direct object (the controller in Universal Dependencies): her -leave-> room
        ("He asked her to leave the room.", 1, True),
        # a numeral with a determiner is a noun phrase: we -pick-> eleven -for-> Test
        ("we'll be picking the best possible eleven for the Sydney Test", 1, True),
        # a conjoined verb takes the first verb's subject: man -walked into-> room
        ("The man opened the door and walked into the room.", 1, True),
        # a "verb" with a compound modifier is a misread noun: an object, no action
        ("wheel covers with one hole", 1, False),
        # a participle used as an adjective (amod) describes a state, not an action
        ("Used cars for sale in Texas.", 1, False),
    ],
)
def test_cat_parse_fixes(cat, sentence, min_complexity, has_action):
    complexity, actions = cat.scores([sentence])[0]
    assert complexity >= min_complexity
    assert (actions >= 1) == has_action


def test_cat_inherited_subjects_make_the_relation(cat):
    from rsyn.filters import cat_scores

    nlp = cat_nlp(cat)
    conj = nlp("The man opened the door and walked into the room.")
    # man: -opened-> door and -walked into-> room (the conj edge); door: 1; room: 1
    assert cat_scores(conj) == (2, 2)
    # boy -eat-> apple is the only relation: "wants" has no object and its xcomp carries the relation
    assert cat_scores(nlp("The boy wants to eat an apple.")) == (1, 2)
    # He -asked-> her, her -leave-> room (the controller of an xcomp is its head's object)
    assert cat_scores(nlp("He asked her to leave the room.")) == (2, 2)
    # covers is an object (-with-> hole); hole has that relation and its numeral: 2; no verb left
    assert cat_scores(nlp("wheel covers with one hole")) == (2, 0)


# Homographs the parse cannot tell from verbs (en_core_web_sm): they still pass CAT. Measured, not fixed
# (docs/extract.md); strict, so a parser or rule that fixes them shows up here.
@pytest.mark.xfail(strict=True, reason="a noun the tagger reads as a verb, with a plausible subject")
@pytest.mark.parametrize("sentence", ["white glass shades", "The north face men's t shirt"])
def test_cat_known_homograph_misses(cat, sentence):
    assert cat.apply([text(sentence)]) != [None]


def test_cat_drops_product_title_without_subject(cat):
    # "used" is read as a verb, but it has no subject, so there is no relation
    assert cat.apply([text("best used cars for under 20 000")]) == ["cat_low_complexity"]


def cat_nlp(cat):
    from rsyn.filters import load_spacy

    return load_spacy(cat.model)


def test_cat_results_do_not_depend_on_processes(cat):
    sentences = [f"A man number {i} rides a horse along the river." if i % 3 else "A red car." for i in range(120)]
    assert cat.scores(sentences[:4]) == [cat.scores([s])[0] for s in sentences[:4]]  # repeats parsed once
    pooled = CatFilter("auto", processes=2, batch_size=8)
    try:
        assert pooled.scores(sentences) == cat.scores(sentences)
    finally:
        pooled.close()


def test_entropy_definition_and_log_base():
    counts = Counter({"the": 50, "dog": 25, "runs": 20, "rare": 5})
    f = EntropyFilter(counts, min_entropy=0.3)
    records = [text("The dog runs."), text("Rare rare."), text("Unseen words only.")]
    assert f.apply(records) == [None, "low_entropy", "low_entropy"]

    def term(word, base=math.e):
        p = counts[word] / 100
        return -p * math.log(p, base)

    assert records[0]["scores"]["entropy"] == pytest.approx(term("the") + term("dog") + term("runs"))
    assert records[1]["scores"]["entropy"] == pytest.approx(2 * term("rare"))  # each occurrence counts
    assert records[2]["scores"]["entropy"] == 0.0  # words missing from the counts add nothing
    in_bits = EntropyFilter(counts, min_entropy=0.3, log_base="2")
    record = text("The dog runs.")
    in_bits.apply([record])
    assert record["scores"]["entropy"] == pytest.approx(sum(term(w, 2) for w in ("the", "dog", "runs")))


def test_word_counts_round_trip(tmp_path):
    counts = count_words(["The dog and the cat.", "THE end, l'eau."])
    assert counts == Counter({"the": 3, "dog": 1, "and": 1, "cat": 1, "end": 1, "l'eau": 1})
    path = tmp_path / "counts.jsonl.zst"
    assert save_word_counts(str(path), counts) == 6
    assert load_word_counts(str(path)) == counts


# --------------------------------------------------------------------------- the funnel on real web prose

REAL_PROSE = Path(__file__).parent / "data" / "mmc4_shard151_107docs.jsonl.zst"  # source, licence: data/README.md


def test_real_prose_funnel(tmp_path):
    """The sentence funnel on 107 real MMC4 pages (docs/extract.md, "on real web prose"), pinned +-2 points.

    A change of a filter's definition that moves a share by more than that must update the doc and this test.
    """
    from conftest import rsyn_here

    stats = tmp_path / "stats.json"
    rsyn_here(
        "extract",
        REAL_PROSE,
        "--ppl-model",
        "none",
        "-o",
        tmp_path / "out.jsonl.zst",
        "--stats",
        stats,
        "--quiet",
        check=True,
    )
    funnel = json.loads(stats.read_text())
    dropped, sentences = funnel["dropped"], funnel["stage"]["sentences_in"]
    assert sentences == 2082
    before_entropy = sum(
        dropped[r]
        for r in ("has_emoji", "has_url", "too_few_words", "too_many_words", "cat_low_complexity", "cat_no_action")
    )
    shares = {
        "emoji, url, words and CAT, of all sentences": before_entropy / sentences,
        "CAT, of all sentences": (dropped["cat_low_complexity"] + dropped["cat_no_action"]) / sentences,
        "entropy >= 0.3, of what reaches it": dropped["low_entropy"] / (sentences - before_entropy),
    }
    today = {
        "emoji, url, words and CAT, of all sentences": 0.186,
        "CAT, of all sentences": 0.157,
        "entropy >= 0.3, of what reaches it": 0.245,
    }
    for name, share in shares.items():
        assert abs(share - today[name]) <= 0.02, f"{name}: {share:.1%}, documented {today[name]:.1%}"


def test_extract_exposes_the_cat_parts(tmp_path):
    """--cat-min-complexity and --cat-require-action reach the filter (the paper's rule is the default)."""
    from conftest import rsyn_here

    doc = {
        "url": "http://page",
        "image_info": [],
        "text_list": ["A small house with a red roof.", "A dog runs on the beach."],
    }
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps(doc) + "\n")

    def kept(*options):
        out = tmp_path / "out.jsonl"
        rsyn_here(
            "extract", docs, "--filters", "words,cat", "--ppl-model", "none", "-o", out, "--quiet", *options, check=True
        )
        return [json.loads(line)["text"] for line in out.read_text().splitlines()]

    assert kept() == ["A dog runs on the beach."]  # the verbless caption has no action
    assert kept("--no-cat-require-action") == ["A small house with a red roof.", "A dog runs on the beach."]
    assert kept("--cat-min-complexity", "3", "--no-cat-require-action") == []
    assert kept("--min-complexity", "3", "--no-require-action") == []  # the old names still work
