"""`rsyn pack --text-style release`: the published RealSyn parquet's text style (rsyn/textstyle.py)."""

import glob

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import jsonl, rsyn_here

from rsyn.textstyle import apply_text_style, ptb_tokens


@pytest.mark.parametrize(
    "text, tokens",
    [
        # the release's own example shape: clitic split, bracket a token, lowercased
        ("It's just Epcot now)", "it 's just epcot now )"),
        ("I don't think we can't go.", "i do n't think we ca n't go ."),
        (
            "We'll be picking the best possible eleven for the Sydney Test",
            "we 'll be picking the best possible eleven for the sydney test",
        ),
        ("She'd say \"I'm fine.\"", "she 'd say `` i 'm fine . ''"),
        ('He said, "Hello (world)!"', "he said , `` hello ( world ) ! ''"),
        ("“Curly” quotes and Joe’s car.", "`` curly '' quotes and joe 's car ."),
        ("The dogs' bowls are 'clean'.", "the dogs ' bowls are ` clean ' ."),
        ("See [the map] {here} <now>?", "see [ the map ] { here } < now > ?"),
        # numbers keep their comma and colon; inner periods stay; only the final one is split
        ("The U.S. price: $1,000 at 10:30 -- really...", "the u.s. price : $ 1,000 at 10:30 -- really ..."),
        ("Version 3.5 ships (soon).", "version 3.5 ships ( soon ) ."),
        ("You cannot, gonna stop me; ok", "you can not , gon na stop me ; ok"),
        ("  spaces   inside\tand\naround  ", "spaces inside and around"),
    ],
)
def test_ptb_tokens(text, tokens):
    assert ptb_tokens(text) == tokens


def test_release_style_lowercases_syn_text_with_its_punctuation():
    row = {
        "raw_image_url": "http://x/1.jpg",
        "text1": "It's (nice).",
        "text2": None,
        "text3": "Don't.",
        "syn_text": "A Dog's toy, on the Beach.",
    }
    assert apply_text_style(dict(row), "original") == row
    assert apply_text_style(dict(row), "release") == {
        "raw_image_url": "http://x/1.jpg",
        "text1": "it 's ( nice ) .",
        "text2": None,
        "text3": "do n't .",
        "syn_text": "a dog's toy, on the beach.",
    }
    with pytest.raises(ValueError):
        apply_text_style(dict(row), "lower")


def _record(i, texts, syn_text):
    return {
        "id": f"img{i}",
        "kind": "image",
        "url": f"http://example.org/{i}.jpg",
        "texts": [{"id": f"t{i}{j}", "text": t, "score": 0.5} for j, t in enumerate(texts)],
        "syn_text": syn_text,
    }


def test_pack_text_style_release(tmp_path):
    records = [
        _record(0, ["It's just Epcot now)", '"Quoted" [bracket] text, isn\'t it?'], "An Old Car's Door."),
        _record(1, ["We'll go."], None),
    ]
    rows = {}
    for style in ("original", "release"):
        out = tmp_path / style
        args = ["pack", "-o", out] + (["--text-style", style] if style == "release" else [])
        rsyn_here(*args, input=jsonl(records), check=True)
        rows[style] = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(f"{out}/*.parquet"))).to_pylist()
    assert rows["original"][0]["text1"] == "It's just Epcot now)"  # the default changes nothing
    assert rows["release"] == [
        {
            "raw_image_url": "http://example.org/0.jpg",
            "text1": "it 's just epcot now )",
            "text2": "`` quoted '' [ bracket ] text , is n't it ?",
            "text3": None,
            "syn_text": "an old car's door.",
        },
        {
            "raw_image_url": "http://example.org/1.jpg",
            "text1": "we 'll go .",
            "text2": None,
            "text3": None,
            "syn_text": None,
        },
    ]


def test_pack_rejects_an_unknown_text_style(tmp_path):
    proc = rsyn_here("pack", "-o", tmp_path / "x", "--text-style", "upper", input=b"")
    assert proc.returncode == 2 and not (tmp_path / "x").exists()
