"""`rsyn extract` through the real command line: OBELICS parquet and JSONL, MMC4 JSONL, the filter funnel,
word counts from stdin, malformed documents, and perplexity with a tiny GPT-2 built locally."""

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import decode_stream, jsonl, read_stream_file, rsyn, rsyn_here

from rsyn.records import content_id, image_id, text_id

KEEP_1 = "A brown dog runs along the sandy beach near the old wooden pier."
KEEP_2 = "The girl throws a red ball to the happy dog in the garden of the house."
KEEP_3 = "The children are playing football with the dog in the park near the river."
LONG = "The dog runs " + " ".join(["and the dog runs"] * 20) + "."  # 83 words
assert len(LONG.split()) == 83

# one OBELICS page with a case for every filter; which filter drops what is in the comment
PAGE_1 = [
    ("image", "http://img/ok.jpg", 640, 480, "a dog"),  # kept
    ("text", f"{KEEP_1}\n\n{KEEP_2}"),  # two paragraphs, both kept
    ("image", "http://img/small.jpg", 99, 500, None),  # image_too_small (99 px)
    ("text", "Great deals 😀 on shoes for the whole family this week."),  # has_emoji
    ("image", "http://img/wide.jpg", 301, 100, None),  # image_bad_aspect (3.01)
    ("image", "http://img/edge.jpg", 300, 100, None),  # kept: aspect exactly 3
    (
        "text",
        "Read more about the trip at https://example.com/blog today.\n\nHome page\n\nA red car.\n\n"
        "Runs very fast.\n\nZebras photograph xylophones quietly.",
    ),  # has_url, too_few_words, cat_no_action,
    # cat_low_complexity, low_entropy (only rare words)
    ("text", LONG),  # too_many_words
    ("text", "END_OF_DOCUMENT_TOKEN_TO_BE_REPLACED"),  # marker: not a sentence
    ("image", "http://img/ok.jpg", 640, 480, "again"),  # image_repeated_in_doc
]
# no page URL: the doc id is a content id; an image without size passes, marked unknown
PAGE_2 = [("text", KEEP_3), ("image", "http://img/nosize.jpg", None, None, None)]
PAGE_3 = [("text", "The old man reads the newspaper on the bench in the square of the town.")]


def obelics(items, url=None):
    images, texts, metadata = [], [], []
    for item in items:
        if item[0] == "image":
            _, src, width, height, alt = item
            images.append(src)
            texts.append(None)
            meta = {"src": src, "alt_text": alt}
            if width is not None:
                meta.update(original_width=width, original_height=height)
            metadata.append(meta)
        else:
            images.append(None)
            texts.append(item[1])
            metadata.append(None)
    general = {"url": url} if url else {}
    return {
        "images": images,
        "texts": texts,
        "metadata": orjson.dumps(metadata).decode(),
        "general_metadata": orjson.dumps(general).decode(),
    }


DOCS = [obelics(PAGE_1, "http://example.com/page-1"), obelics(PAGE_2), obelics(PAGE_3, "http://example.com/page-3")]
DOC_2 = content_id("doc", orjson.dumps([DOCS[1]["images"], DOCS[1]["texts"]]).decode())

EXPECTED = [  # (kind, doc, pos, url or text)
    ("image", "http://example.com/page-1", 0, "http://img/ok.jpg"),
    ("text", "http://example.com/page-1", 1, KEEP_1),
    ("text", "http://example.com/page-1", 2, KEEP_2),
    ("image", "http://example.com/page-1", 6, "http://img/edge.jpg"),
    ("text", DOC_2, 0, KEEP_3),
    ("image", DOC_2, 1, "http://img/nosize.jpg"),
    ("text", "http://example.com/page-3", 0, PAGE_3[0][1]),
]
EXPECTED_DROPS = {
    "image_repeated_in_doc": 1,
    "image_too_small": 1,
    "image_bad_aspect": 1,
    "has_emoji": 1,
    "has_url": 1,
    "too_few_words": 1,
    "too_many_words": 1,
    "cat_low_complexity": 1,
    "cat_no_action": 1,
    "low_entropy": 1,
}
NO_PPL = ["--ppl-model", "none"]


def write_parquet(path, docs, row_group_size=1):
    table = pa.Table.from_pylist(
        docs,
        schema=pa.schema(
            [
                ("images", pa.list_(pa.string())),
                ("texts", pa.list_(pa.string())),
                ("metadata", pa.string()),
                ("general_metadata", pa.string()),
            ]
        ),
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def summary(record):
    return record["kind"], record["doc"], record["pos"], record.get("url") or record.get("text")


MMC4_DOC = {
    "url": "http://example.com/mmc4",
    "text_list": [KEEP_1, "Click here 😀 now.", KEEP_2],
    "image_info": [
        {"raw_url": "http://img/m2.jpg", "image_name": "b.jpg", "matched_text_index": 2, "matched_sim": 0.31},
        {"raw_url": "http://img/m1.jpg", "image_name": "a.jpg", "matched_text_index": 0, "matched_sim": 0.27},
        {"raw_url": "http://img/m3.jpg", "image_name": "c.jpg"},
    ],
}


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    """One run over an OBELICS parquet file (a row group per document) and an MMC4 JSONL file."""
    tmp = tmp_path_factory.mktemp("extract")
    write_parquet(tmp / "docs.parquet", DOCS)
    (tmp / "mmc4.jsonl").write_bytes(jsonl([MMC4_DOC]))
    out, stats = tmp / "out.jsonl.zst", tmp / "stats.json"
    rsyn("extract", tmp / "docs.parquet", tmp / "mmc4.jsonl", *NO_PPL, "-o", out, "--stats", stats, check=True)
    return tmp, out.read_bytes(), orjson.loads(stats.read_bytes())


def test_obelics_parquet_exact_survivors_and_funnel(parquet_run):
    _, output, stats = parquet_run
    records = decode_stream(output)[: len(EXPECTED)]
    assert [summary(r) for r in records] == EXPECTED
    assert list(stats["dropped"]) == list(EXPECTED_DROPS)  # the funnel, in filter order
    assert stats["dropped"] == {**EXPECTED_DROPS, "has_emoji": 2}  # one more in the MMC4 document
    assert stats["in"] == 17 + 6 and stats["out"] == len(EXPECTED) + 5
    stage = stats["stage"]
    assert (
        stage["documents"],
        stage["images_in"],
        stage["images_out"],
        stage["sentences_in"],
        stage["sentences_out"],
        stage["end_markers_removed"],
    ) == (4, 6 + 3, 3 + 3, 11 + 3, 4 + 2, 1)

    ok, edge, nosize = records[0], records[3], records[5]
    assert ok == {
        "id": image_id("http://img/ok.jpg"),
        "kind": "image",
        "doc": "http://example.com/page-1",
        "pos": 0,
        "url": "http://img/ok.jpg",
        "width": 640,
        "height": 480,
        "alt": "a dog",
        "scores": {"min_side": 480, "aspect": 640 / 480},
    }
    assert edge["scores"] == {"min_side": 100, "aspect": 3.0}
    assert "width" not in nosize and nosize["scores"] == {"size": "unknown"}
    sentence = records[1]
    assert sentence["id"] == text_id(KEEP_1)
    assert set(sentence["scores"]) == {"words", "cat", "entropy"}
    assert sentence["scores"]["words"] == 13 and sentence["scores"]["cat"]["actions"] == 1  # "runs"
    assert sentence["scores"]["entropy"] >= 0.3


def test_mmc4_jsonl(parquet_run):
    _, output, _ = parquet_run
    records = [r for r in decode_stream(output) if r["doc"] == "http://example.com/mmc4"]
    # an MMC4 image goes just before the paragraph it was matched to; an unmatched one goes last
    assert [summary(r) for r in records] == [
        ("image", "http://example.com/mmc4", 0, "http://img/m1.jpg"),
        ("text", "http://example.com/mmc4", 1, KEEP_1),
        ("image", "http://example.com/mmc4", 3, "http://img/m2.jpg"),
        ("text", "http://example.com/mmc4", 4, KEEP_2),
        ("image", "http://example.com/mmc4", 5, "http://img/m3.jpg"),
    ]
    assert all(r["scores"] == {"size": "unknown"} for r in records if r["kind"] == "image")


def test_stdin_with_a_counts_file_gives_the_same_bytes(parquet_run, tmp_path):
    _, parquet_output, _ = parquet_run
    documents = jsonl(DOCS + [MMC4_DOC])
    refused = rsyn("extract", *NO_PPL, input=documents)
    assert refused.returncode == 2 and "--word-counts FILE" in refused.stderr.decode()
    assert len(refused.stderr.decode().strip().splitlines()) == 1

    counts = tmp_path / "counts.jsonl.zst"
    counting = rsyn("extract", "--save-word-counts", counts, input=documents, check=True)
    assert counting.stdout == b"" and "word counts written" in counting.stderr.decode()
    the = sum(t.casefold().split().count("the") for d in DOCS for t in d["texts"] if t)
    the += sum(t.casefold().split().count("the") for t in MMC4_DOC["text_list"])
    assert read_stream_file(counts)[0] == {"word": "the", "count": the}  # most frequent first

    # stdin, JSONL instead of parquet, 2 spaCy processes and tiny windows: the very same output bytes
    proc = rsyn(
        "extract",
        "-",
        *NO_PPL,
        "--word-counts",
        counts,
        "--spacy-processes",
        "2",
        "--window",
        "2",
        input=documents,
        check=True,
    )
    assert proc.stdout == parquet_output


def test_shards_are_disjoint_and_share_the_word_counts(parquet_run):
    from rsyn.command import Run
    from rsyn.stages.extract import ExtractOptions, _documents, _word_counts

    tmp, _, _ = parquet_run
    inputs = [str(tmp / "docs.parquet"), str(tmp / "mmc4.jsonl")]
    names = []
    for k in range(3):
        with Run("extract", inputs=inputs, shard=(k, 3), quiet=True) as run:
            names.append([d.doc for d in _documents(run, inputs, ExtractOptions())])
            if k == 0:
                counts = _word_counts(run, inputs, ExtractOptions(), needed=True)
    assert names == [["http://example.com/page-1", "http://example.com/mmc4"], [DOC_2], ["http://example.com/page-3"]]
    with Run("extract", inputs=inputs, quiet=True) as run:
        assert _word_counts(run, inputs, ExtractOptions(), needed=True) == counts  # counts ignore the shard


def test_filters_apply_in_the_order_given(parquet_run):
    tmp, _, _ = parquet_run
    stats = tmp / "order-stats.json"
    proc = rsyn(
        "extract", tmp / "docs.parquet", *NO_PPL, "--filters", "entropy,words,url,size", "--stats", stats, check=True
    )
    dropped = orjson.loads(stats.read_bytes())["dropped"]
    assert list(dropped) == [
        "image_repeated_in_doc",
        "image_too_small",
        "image_bad_aspect",
        "low_entropy",
        "too_few_words",
        "too_many_words",
        "has_url",
    ]
    assert "has_emoji" not in dropped and all(r["scores"].get("cat") is None for r in decode_stream(proc.stdout))


BAD = [
    DOCS[2],
    {**DOCS[2], "texts": "not a list"},
    {**DOCS[2], "images": [None, None]},
    {**DOCS[0], "metadata": "{not json"},
    {"images": [None, None], "texts": [None, "x"]},
]


def test_malformed_document_stops_with_one_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(BAD))
    proc = rsyn("extract", path, *NO_PPL, "--disable", "cat")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"rsyn: error: {path}:2: texts is a string, not a list")

    parquet = tmp_path / "bad.parquet"
    write_parquet(parquet, [DOCS[2], DOCS[2], {**DOCS[0], "metadata": "[{broken"}])
    proc = rsyn("extract", parquet, *NO_PPL, "--disable", "cat,entropy")
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith(f"rsyn: error: {parquet}:3: metadata is not valid JSON")


def test_malformed_documents_skipped_counted_and_logged(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl(BAD) + b"{broken json\n")
    rejects, stats = tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    proc = rsyn(
        "extract",
        path,
        *NO_PPL,
        "--disable",
        "cat,entropy",
        "--on-error",
        "skip",
        "--rejects",
        rejects,
        "--stats",
        stats,
        check=True,
    )
    assert [summary(r) for r in decode_stream(proc.stdout)] == [EXPECTED[-1]]
    summary_stats = orjson.loads(stats.read_bytes())
    assert summary_stats["errors"] == {"wrong_type": 1, "ragged_document": 2, "bad_metadata": 1, "invalid_json": 1}
    logged = [r for r in read_stream_file(rejects) if r["kind"] == "error"]
    assert [r["where"] for r in logged] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "images has 2 entries but texts has 1" in logged[1]["message"]
    assert "exactly one of images[0] and texts[0]" in logged[3]["message"]


def test_parquet_on_stdin_is_refused(parquet_run):
    tmp, _, _ = parquet_run
    proc = rsyn("extract", *NO_PPL, "--disable", "entropy,cat", input=(tmp / "docs.parquet").read_bytes())
    assert proc.returncode == 2
    assert "<stdin>: parquet cannot be read from stdin" in proc.stderr.decode()


def test_perplexity_with_a_tiny_local_gpt2(tmp_path):
    from rsyn.models import lm
    from rsyn.testing import build_tiny_gpt2

    model_dir = build_tiny_gpt2(tmp_path / "tiny-gpt2", seed=0)
    texts = [
        KEEP_1,
        KEEP_2,
        KEEP_3,
        PAGE_3[0][1],
        "Snow covers the mountains behind the small wooden house.",
        KEEP_2,
    ]  # a repeat is scored once and gets the same score
    ppl = lm.perplexities(texts, *lm.load_causal_lm(model_dir, "cpu"))
    ranked = sorted(set(ppl))
    low, high = (ranked[0] + ranked[1]) / 2, (ranked[-2] + ranked[-1]) / 2  # drop the lowest and the highest
    path = tmp_path / "doc.jsonl"
    path.write_bytes(jsonl([{"url": "http://example.com/ppl", "text_list": texts, "image_info": []}]))
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    lm._CACHE.clear()  # the command must load the model from its directory itself
    # the model goes in by path, through the same option users pass
    result = rsyn_here(
        "extract",
        path,
        "--filters",
        "ppl",
        "--ppl-model",
        model_dir,
        "--min-ppl",
        low,
        "--max-ppl",
        high,
        "--ppl-batch-size",
        "2",
        "--device",
        "cpu",
        "-o",
        out,
        "--stats",
        stats,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert lm._CACHE  # it did
    records = read_stream_file(out)
    assert [r["text"] for r in records] == [t for t, p in zip(texts, ppl) if low <= p <= high]
    for record in records:
        assert record["scores"]["ppl"] == pytest.approx(ppl[texts.index(record["text"])], rel=1e-4)
    dropped = orjson.loads(stats.read_bytes())["dropped"]
    assert dropped == {
        "image_repeated_in_doc": 0,
        "ppl_too_low": sum(ppl < low),
        "ppl_too_high": sum(ppl > high),
        "ppl_undefined": 0,
    }
    assert sum(ppl < low) + sum(ppl > high) >= 2


@pytest.mark.parametrize("model,says", [("gpt2-large", "Hugging Face id"), ("./no/such/model", "no such directory")])
def test_unavailable_perplexity_model_is_one_clear_line(tmp_path, model, says):
    path = tmp_path / "doc.jsonl"
    path.write_bytes(jsonl([{"url": "http://example.com/ppl", "text_list": [KEEP_1], "image_info": []}]))
    args = ["extract", path, "--filters", "ppl", "--device", "cpu", "-o", tmp_path / "out.jsonl"]
    result = rsyn_here(*args, "--ppl-model", model, text=True) if model != "gpt2-large" else rsyn_here(*args, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[:-1] == ["rsyn extract: device cpu"]  # the device note, then the one error line
    err = lines[-1]
    assert err.startswith(f"rsyn: error: perplexity filter: cannot load causal LM '{model}'") and says in err
    assert "local model directory" in err and err.endswith("--ppl-model none")
    assert not (tmp_path / "out.jsonl").exists()


def test_unreadable_inputs_are_one_line_errors(tmp_path):
    from conftest import compress

    broken_parquet = tmp_path / "broken.parquet"
    broken_parquet.write_bytes(b"PAR1" + b"\0" * 64)
    proc = rsyn("extract", broken_parquet, *NO_PPL, "--disable", "cat,entropy")
    assert proc.returncode == 2 and proc.stderr.decode().startswith(
        f"rsyn: error: {broken_parquet}: not a readable parquet file"
    )

    # a zstd stream cut short: the documents before the damage come out, the damage is counted
    import random

    rng = random.Random(0)  # incompressible padding, so the stream holds several zstd blocks
    whole = compress(jsonl([{**DOCS[2], "pad": rng.randbytes(150).hex()} for _ in range(2000)]), "zstd")
    truncated = tmp_path / "truncated.jsonl.zst"
    truncated.write_bytes(whole[: len(whole) * 2 // 3])
    stats = tmp_path / "stats.json"
    proc = rsyn(
        "extract", truncated, *NO_PPL, "--disable", "cat,entropy", "--on-error", "skip", "--stats", stats, check=True
    )
    assert orjson.loads(stats.read_bytes())["errors"] == {"corrupt_stream": 1}
    assert decode_stream(proc.stdout)[0]["text"] == PAGE_3[0][1]
