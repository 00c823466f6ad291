"""`--shard K/N`: which rule applies, what each shard reads, and that N shards put together are the one run."""

import base64

import numpy as np
import orjson
import pytest
from conftest import compress, decode_stream, jsonl, read_stream_file, rsyn_here
from hypothesis import given, settings
from hypothesis import strategies as st

from rsyn.stream import plan_shard, split_by_size

RECORDS = [{"id": f"{i:05d}", "kind": "text", "text": f"sentence {i} " + "word " * (i % 17)} for i in range(3000)]


# --------------------------------------------------------------------------- the rule, as a pure function


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=40), st.integers(1, 12))
def test_file_ranges_are_contiguous_disjoint_complete_and_balanced(sizes, n):
    if len(sizes) < n:
        return
    bounds = split_by_size(sizes, n)
    assert bounds[0] == 0 and bounds[-1] == len(sizes) and len(bounds) == n + 1
    assert all(a < b for a, b in zip(bounds, bounds[1:]))  # contiguous, in order, none empty
    total = sum(sizes)
    loads = [sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:])]
    # every range is within one file of its share, unless it holds a single file (a file is never split)
    for load, (a, b) in zip(loads, zip(bounds, bounds[1:])):
        assert b - a == 1 or load <= total / n + max(sizes) + 1e-9
    assert split_by_size(list(sizes), n) == bounds  # a pure function


def test_which_rule_applies(tmp_path):
    files = []
    for i, size in enumerate([50, 10, 10, 30, 100]):
        path = tmp_path / f"part-{i}.jsonl"
        path.write_bytes(b"x" * size)
        files.append(str(path))
    assert plan_shard(files, None).rule == "all"
    assert plan_shard(files, (0, 1)).rule == "all"
    plans = [plan_shard(files, (k, 3)) for k in range(3)]
    assert {p.rule for p in plans} == {"files"}
    # 200 bytes: the boundaries nearest 66.7 and 133.3 that leave no shard empty
    assert [p.paths for p in plans] == [files[:3], files[3:4], files[4:]]  # 70 | 30 | 100
    assert all(p.keeps(i) for p in plans for i in range(10))
    # fewer files than shards, one file, stdin: every shard reads all and keeps positions K mod N
    for paths, n in ((files[:2], 3), (files[:1], 2), (["-"], 2), (files + ["-"], 2)):
        plan = plan_shard(paths, (1, n))
        assert plan.rule == "records" and plan.paths == paths
        assert [i for i in range(7) if plan.keeps(i)] == [i for i in range(7) if i % n == 1]


# --------------------------------------------------------------------------- through the command line


def _write_parts(tmp_path, sizes, kind="zstd"):
    """Input files of the given record counts, in name order; returns (paths, records in input order)."""
    paths, records, start = [], [], 0
    for i, count in enumerate(sizes):
        part = RECORDS[start : start + count]
        start += count
        path = tmp_path / f"in-{i:02d}.jsonl.zst"
        path.write_bytes(compress(jsonl(part), kind))
        paths.append(path)
        records.extend(part)
    return paths, records


@pytest.mark.parametrize(
    "sizes,n", [((400, 30, 200, 700, 10, 5, 900), 3), ((100, 100, 100, 100), 4), ((1000, 1, 1, 1, 1), 2)]
)
def test_sharded_cat_concatenates_to_the_one_process_run(tmp_path, sizes, n):
    paths, records = _write_parts(tmp_path, sizes)
    pattern = str(tmp_path / "in-*.jsonl.zst")
    whole = tmp_path / "whole.jsonl"
    rsyn_here("cat", pattern, "-o", whole, "--quiet", check=True)
    parts = []
    for k in range(n):
        out, stats = tmp_path / f"part-{k}.jsonl", tmp_path / f"stats-{k}.json"
        rsyn_here("cat", pattern, "--shard", f"{k}/{n}", "-o", out, "--stats", stats, "--quiet", check=True)
        parts.append(out.read_bytes())
        summary = orjson.loads(stats.read_bytes())
        assert summary["shard"] == f"{k}/{n}" and summary["shard_rule"] == "files"
        assert summary["in"] == len(read_stream_file(out))
    assert b"".join(parts) == whole.read_bytes()  # in K order, byte for byte: the input order
    assert decode_stream(whole.read_bytes()) == records
    read = [orjson.loads((tmp_path / f"stats-{k}.json").read_bytes())["shard_files"] for k in range(n)]
    assert [f for files in read for f in files] == [str(p) for p in paths]  # each file read by one shard


def test_a_shard_opens_only_its_files(tmp_path):
    paths, records = _write_parts(tmp_path, (300, 300, 300, 300))
    size = paths[3].stat().st_size
    paths[3].write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * (size - 4))  # shard 1's file, broken, same size
    pattern = str(tmp_path / "in-*.jsonl.zst")
    ok = rsyn_here("cat", pattern, "--shard", "0/2", "--quiet", check=True)
    assert decode_stream(ok.stdout) == records[:600]
    bad = rsyn_here("cat", pattern, "--shard", "1/2")
    assert bad.returncode == 2 and f"{paths[3]}:1: corrupt zstd frame" in bad.stderr.decode()


def test_one_file_keeps_the_record_position_rule(tmp_path):
    src = tmp_path / "one.jsonl.zst"
    src.write_bytes(compress(jsonl(RECORDS[:100]), "zstd"))
    stats = tmp_path / "s.json"
    got = decode_stream(rsyn_here("cat", src, "--shard", "2/3", "--stats", stats, "--quiet", check=True).stdout)
    assert got == RECORDS[2:100:3]
    summary = orjson.loads(stats.read_bytes())
    assert summary["shard_rule"] == "records" and summary["shard_files"] == [str(src)]


def _obelics_doc(i):
    texts = [
        f"The brown dog number {i} runs along the sandy beach near the old wooden pier.",
        f"A girl throws the red ball {i} times to the happy dog in the garden.",
    ]
    return {
        "images": [f"http://img/{i}.jpg", None, None],
        "texts": [None, texts[0], texts[1]],
        "metadata": orjson.dumps(
            [{"src": f"http://img/{i}.jpg", "original_width": 640, "original_height": 480}, None, None]
        ).decode(),
        "general_metadata": orjson.dumps({"url": f"http://example.com/{i}"}).decode(),
    }


def test_sharded_extract_concatenates_to_the_one_process_run(tmp_path):
    for f in range(5):
        (tmp_path / f"docs-{f}.jsonl").write_bytes(jsonl([_obelics_doc(10 * f + d) for d in range(f % 3 + 1)]))
    fast = ["--ppl-model", "none", "--disable", "cat", "--quiet"]
    pattern = str(tmp_path / "docs-*.jsonl")
    rsyn_here("extract", pattern, *fast, "-o", tmp_path / "whole.jsonl", check=True)
    parts = []
    for k in range(3):
        out = tmp_path / f"part-{k}.jsonl"
        rsyn_here("extract", pattern, *fast, "--shard", f"{k}/3", "-o", out, check=True)
        parts.append(out.read_bytes())
    whole = (tmp_path / "whole.jsonl").read_bytes()
    assert whole.count(b"\n") > 10 and all(parts)
    assert b"".join(parts) == whole


# --------------------------------------------------------------------------- embeddings of a sharded run


def within_one_float16_ulp(a: list[str], b: list[str]) -> np.ndarray:
    """Per embedding pair: is every component within one float16 ulp (never finer than 2**-23)?

    2**-23 is float32's resolution at the scale of a unit vector: below 2**-13 a
    float16 ulp is finer than the float32 computation, so a component there
    may move by more ulps while moving by no more than float32 rounding.
    """
    x = np.stack([np.frombuffer(base64.b64decode(s), "<f2") for s in a]).astype(np.float64)
    y = np.stack([np.frombuffer(base64.b64decode(s), "<f2") for s in b]).astype(np.float64)
    ulp = np.maximum(np.spacing(np.abs(x).astype(np.float16)), np.spacing(np.abs(y).astype(np.float16)))
    return (np.abs(x - y) <= np.maximum(ulp.astype(np.float64), 2.0**-23)).all(axis=1)


def test_within_one_float16_ulp_is_what_it_says():
    def enc(values):
        return base64.b64encode(np.asarray(values, "<f2").tobytes()).decode()

    one = np.float16(0.25)
    next_up = np.nextafter(one, np.float16(1))
    assert within_one_float16_ulp([enc([one, 0])], [enc([next_up, 0])]).all()
    assert not within_one_float16_ulp([enc([one, 0])], [enc([np.nextafter(next_up, np.float16(1)), 0])]).any()
    tiny = np.float16(2.0**-20)  # a float16 ulp there is 2**-30: float32 rounding decides
    assert within_one_float16_ulp([enc([0, tiny])], [enc([0, tiny + np.float16(2.0**-23)])]).all()


def test_sharded_embed_equals_the_single_run_within_one_float16_ulp(tmp_path):
    from rsyn.testing import build_tiny_clip

    model = build_tiny_clip(tmp_path / "clip", seed=0)
    words = "a dog runs across the green field while two children play with red kites near the old river".split()
    texts = [
        {
            "id": f"t{i:04d}",
            "kind": "text",
            "text": " ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 23)),
        }
        for i in range(300)
    ]
    src = tmp_path / "texts.jsonl"
    src.write_bytes(jsonl(texts))
    args = ["--model", model, "--device", "cpu", "--batch-size", "16", "--quiet"]
    rsyn_here("embed", src, *args, "-o", tmp_path / "one.jsonl", check=True)
    single = read_stream_file(tmp_path / "one.jsonl")
    merged = []
    for k in range(3):
        rsyn_here("embed", src, *args, "--shard", f"{k}/3", "-o", tmp_path / f"part-{k}.jsonl", check=True)
        merged += read_stream_file(tmp_path / f"part-{k}.jsonl")
    merged.sort(key=lambda r: r["id"])
    assert [r["id"] for r in merged] == [r["id"] for r in single]
    assert [{k: v for k, v in r.items() if k != "emb"} for r in merged] == [
        {k: v for k, v in r.items() if k != "emb"} for r in single
    ]
    assert within_one_float16_ulp([r["emb"] for r in merged], [r["emb"] for r in single]).all()
