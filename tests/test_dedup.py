"""`rsyn dedup` through the real command line: exact, near (MinHash LSH) and semantic duplicates."""

import hashlib

import numpy as np
import orjson
import pytest
from conftest import decode_stream, jsonl, read_stream_file, rsyn

from rsyn.records import encode_embeddings, text_id

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber bronze cedar dune ember fern "
    "grove harbor island jade kettle lantern meadow nectar orchid pebble quartz river saddle timber umber "
    "valley willow yarrow zephyr"
).split()


def text(t, i=None, **extra):
    return {"id": text_id(t) if i is None else i, "kind": "text", "doc": "doc", "pos": 0, "text": t, **extra}


def image(url, i, **extra):
    return {"id": i, "kind": "image", "doc": "doc", "pos": 0, "url": url, **extra}


def sentence(seed, n=20):
    rng = np.random.default_rng(seed)
    return [WORDS[j] for j in rng.choice(len(WORDS), n, replace=False)]


def bigram_jaccard(a, b):
    """Brute-force reference: Jaccard of word-bigram sets."""
    sa, sb = set(zip(a.split(), a.split()[1:])), set(zip(b.split(), b.split()[1:]))
    return len(sa & sb) / len(sa | sb)


def dedup(records, *args, tmp_path=None, check=True):
    rejects = tmp_path / "rejects.jsonl" if tmp_path else None
    extra = ["--rejects", rejects] if rejects else []
    proc = rsyn("dedup", *args, *extra, input=jsonl(records), check=check)
    if not check:
        return proc
    out = decode_stream(proc.stdout)
    dropped = {r["record"]["id"]: r for r in read_stream_file(rejects)} if rejects and rejects.exists() else {}
    return out, dropped, proc


# --------------------------------------------------------------------------- exact


def test_exact_sentences_by_normalised_form(tmp_path):
    records = [
        text("A red bicycle leans on the old stone wall.", "s1"),
        text("a  red bicycle leans on the old stone wall", "s2"),  # case, space, punctuation
        text("A red bicycle leans on the old stone wall!", "s3"),
        text("Ａ red bicycle leans on the old stone wall.", "s4"),  # full-width A (NFKC)
        text("A red bicycle leans on the new stone wall.", "s5"),
    ]  # a different sentence
    out, dropped, proc = dedup(records, "--mode", "exact", tmp_path=tmp_path)
    assert [r["id"] for r in out] == ["s1", "s5"]
    assert {k: (v["reason"], v["dup_of"], v["similarity"]) for k, v in dropped.items()} == {
        "s2": ("exact_duplicate", "s1", 1.0),
        "s3": ("exact_duplicate", "s1", 1.0),
        "s4": ("exact_duplicate", "s1", 1.0),
    }
    assert dropped["s3"]["where"] == "<stdin>:3"
    assert "5 in, 2 out, 3 dropped (exact_duplicate 3)" in proc.stderr.decode()


def test_exact_images_by_url_and_content_hash_transitively(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 same bytes")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 same bytes")
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8 other bytes")
    sha = hashlib.sha256(b"\xff\xd8 other bytes").hexdigest()
    records = [
        image("http://a/1.jpg", "i1", path=str(tmp_path / "a.jpg")),
        image("http://b/2.jpg", "i2", path=str(tmp_path / "b.jpg")),  # same bytes as i1
        image("http://c/3.jpg", "i3", path=str(tmp_path / "c.jpg")),
        image("http://b/2.jpg", "i4"),  # same URL as i2 -> group of i1
        image("http://d/4.jpg", "i5", sha256=sha.upper()),  # known hash = content of i3
        image("http://e/5.jpg", "i6"),
        text("http://e/5.jpg", "t1"),
    ]  # a sentence never matches an image
    out, dropped, _ = dedup(records, "--mode", "exact", "--path-root", tmp_path, tmp_path=tmp_path)
    assert [r["id"] for r in out] == ["i1", "i3", "i6", "t1"]
    assert {k: v["dup_of"] for k, v in dropped.items()} == {"i2": "i1", "i4": "i1", "i5": "i3"}
    assert out[0]["sha256"] == hashlib.sha256(b"\xff\xd8 same bytes").hexdigest()  # computed hash kept


def test_unreadable_image_path_is_an_error_naming_the_line(tmp_path):
    records = [image("http://a/1.jpg", "i1"), image("http://a/2.jpg", "i2", path=str(tmp_path / "missing.jpg"))]
    proc = dedup(records, "--path-root", tmp_path, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("rsyn: error: <stdin>:2: cannot read image file: no file at")
    assert len(err.strip().splitlines()) == 1


def test_hostile_image_paths_are_refused_without_hanging_or_quoting_contents(tmp_path):
    import os

    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"root:x:0:0 very private")
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo.jpg")  # a writer never comes: opening it blocking would hang
    os.symlink("/dev/zero", root / "zero.jpg")
    (root / "big.jpg").write_bytes(b"\xff" * 2000)
    (root / "ok.jpg").write_bytes(b"\xff\xd8 fine")
    records = [
        image("http://a/0.jpg", "ok", path=str(root / "ok.jpg")),
        image("http://a/1.jpg", "up", path=str(root / ".." / "outside" / "secret.jpg")),
        image("http://a/2.jpg", "fifo", path=str(root / "fifo.jpg")),
        image("http://a/3.jpg", "zero", path=str(root / "zero.jpg")),
        image("http://a/4.jpg", "dev", path="/dev/zero"),
        image("http://a/5.jpg", "big", path=str(root / "big.jpg")),
    ]
    rejects = tmp_path / "r.jsonl"
    proc = rsyn(
        "dedup",
        "--mode",
        "exact",
        "--path-root",
        root,
        "--max-bytes",
        1000,
        "--on-error",
        "skip",
        "--rejects",
        rejects,
        input=jsonl(records),
        check=True,
        timeout=60,
    )
    assert [r["id"] for r in decode_stream(proc.stdout)] == ["ok"]
    reasons = {r["record"]["id"]: r["reason"] for r in read_stream_file(rejects)}
    assert reasons == {
        "up": "outside_root",
        "fifo": "not_a_regular_file",
        "zero": "outside_root",
        "dev": "outside_root",
        "big": "too_large",
    }
    assert b"root:x" not in rejects.read_bytes().replace(b'"path"', b"") and b"root:x" not in proc.stderr
    # the default root is the current directory; fail mode stops at the first one with one line, exit 2
    proc = rsyn("dedup", "--mode", "exact", input=jsonl(records[2:3]), cwd=root, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("rsyn: error: <stdin>:1: cannot read image file:")
    assert "not a regular file" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- near


def test_planted_near_duplicates_removed_and_near_misses_kept(tmp_path):
    base = sentence(1)
    one_word = base[:10] + ["umbrella"] + base[11:]  # J = 17/21
    last_word = base[:-1] + ["umbrella"]  # J = 18/20
    two_words = base[:5] + ["umbrella"] + base[6:14] + ["violin"] + base[15:]  # J = 15/23: a near miss
    texts = [" ".join(w) for w in (base, one_word, last_word, two_words)]
    assert bigram_jaccard(texts[0], texts[1]) == pytest.approx(17 / 21)
    assert bigram_jaccard(texts[0], texts[3]) < 0.7
    records = [text(t, f"s{i}") for i, t in enumerate(texts)] + [
        text(" ".join(sentence(s)), f"o{s}") for s in range(2, 40)
    ]
    out, dropped, _ = dedup(records, tmp_path=tmp_path)
    assert "s3" in {r["id"] for r in out} and len(out) == len(records) - 2
    assert dropped["s1"]["reason"] == dropped["s2"]["reason"] == "near_duplicate"
    assert dropped["s1"]["dup_of"] == dropped["s2"]["dup_of"] == "s0"
    assert dropped["s1"]["similarity"] == round(17 / 21, 4) and dropped["s2"]["similarity"] == 0.9
    kept = {r["id"]: r for r in out}
    assert kept["s0"]["scores"]["dup_jaccard"] == 0.9  # the highest Jaccard it has with anything
    assert all(0 <= r["scores"]["dup_jaccard"] < 0.8 for r in out if r["id"] != "s0")


def test_three_word_and_shorter_sentences(tmp_path):
    records = [
        text("red apple pie", "a"),
        text("Red, apple-pie!", "b"),
        text("red apple tart", "c"),
        text("apple pie red", "d"),
        text("pie", "e"),
        text("Pie.", "f"),
        text("...", "g"),
        text("", "h"),
        text("!!", "i"),
    ]
    # near mode alone: the exact-looking ones are near duplicates with Jaccard 1
    out, dropped, _ = dedup(records, "--mode", "near", tmp_path=tmp_path)
    assert [r["id"] for r in out] == ["a", "c", "d", "e", "g", "h", "i"]
    assert {k: (v["dup_of"], v["similarity"]) for k, v in dropped.items()} == {"b": ("a", 1.0), "f": ("e", 1.0)}
    # exact mode: empty match forms ("...", "", "!!") are one group
    out, dropped, _ = dedup(records, tmp_path=tmp_path)
    assert [r["id"] for r in out] == ["a", "c", "d", "e", "g"]
    assert {k: v["reason"] for k, v in dropped.items()} == {
        "b": "exact_duplicate",
        "f": "exact_duplicate",
        "h": "exact_duplicate",
        "i": "exact_duplicate",
    }


def test_a_group_that_only_chains_through_an_intermediate(tmp_path):
    a = sentence(7)
    b = a[:6] + ["umbrella"] + a[7:]  # one word from a
    c = b[:14] + ["violin"] + b[15:]  # one more word: two from a
    ta, tb, tc = (" ".join(w) for w in (a, b, c))
    assert bigram_jaccard(ta, tb) >= 0.8 and bigram_jaccard(tb, tc) >= 0.8 and bigram_jaccard(ta, tc) < 0.8
    records = [text(tc, "c"), text(ta, "a"), text(tb, "b")] + [
        text(" ".join(sentence(s)), f"o{s}") for s in range(100, 120)
    ]
    out, dropped, _ = dedup(records, tmp_path=tmp_path)
    # union-find puts a, b, c in one group; the first in input order (c) is kept
    assert "c" in {r["id"] for r in out} and "a" in dropped and "b" in dropped
    assert dropped["a"]["dup_of"] == dropped["b"]["dup_of"] == "c"
    assert dropped["a"]["similarity"] == round(bigram_jaccard(ta, tc), 4) < 0.8  # honest: linked via b
    assert dropped["b"]["similarity"] == round(bigram_jaccard(tb, tc), 4)


def test_chained_near_misses_are_verified_and_not_merged(tmp_path):
    """Sentences each ~0.7 Jaccard from the next: LSH makes candidates, the exact check refuses them."""
    records = []
    for s in range(30):
        words = sentence(1000 + s, 24)
        chain = [words]
        for step in range(4):
            w = list(chain[-1])
            w[3 + 5 * step] = f"x{step}y"  # change two far-apart words per step
            w[20 - 4 * step] = f"z{step}w"
            chain.append(w)
        for k, w in enumerate(chain):
            records.append(text(" ".join(w), f"c{s}-{k}"))
    for prev, cur in zip(records, records[1:]):
        assert bigram_jaccard(prev["text"], cur["text"]) < 0.8
    stats = tmp_path / "stats.json"
    out, dropped, _ = dedup(records, "--stats", stats, tmp_path=tmp_path)
    assert dropped == {} and len(out) == len(records)
    near = orjson.loads(stats.read_bytes())["stage"]["near"]
    assert near["candidate_pairs"] > 10 and near["verified_pairs"] == 0
    assert max(r["scores"]["dup_jaccard"] for r in out) < 0.8


def test_thousands_of_copies_form_one_group(tmp_path):
    copy = "Click here to subscribe to our newsletter for weekly updates"
    records = [text(copy, f"k{i}") for i in range(1500)] + [text(" ".join(sentence(s)), f"o{s}") for s in range(50)]
    stats = tmp_path / "stats.json"
    out, dropped, _ = dedup(records, "--mode", "near", "--stats", stats, tmp_path=tmp_path)
    assert [r["id"] for r in out] == ["k0"] + [f"o{s}" for s in range(50)]
    assert len(dropped) == 1499 and {d["dup_of"] for d in dropped.values()} == {"k0"}
    near = orjson.loads(stats.read_bytes())["stage"]["near"]
    assert near["candidate_pairs"] < 14 * 2 * 1500  # a big bucket is checked in linear, not quadratic, pairs


def test_minhash_signatures_are_datasketch_signatures():
    from datasketch import MinHash

    from rsyn.stages.dedup.exact import match_form
    from rsyn.stages.dedup.near import MinHasher, shingle_sets

    forms = [match_form(" ".join(sentence(s, 3 + s % 15))) for s in range(40)] + ["one", "two words", ""]
    values, offsets = shingle_sets(forms, 2)
    signatures = MinHasher(64, seed=5).signatures(values, offsets)
    tokens = [[int(v) for v in values[offsets[i] : offsets[i + 1]] & np.uint64(0xFFFFFFFF)] for i in range(len(forms))]
    reference = MinHash.bulk(tokens, num_perm=64, seed=5, hashfunc=lambda v: v)
    for mine, theirs in zip(signatures, reference):
        np.testing.assert_array_equal(mine, theirs.hashvalues)
    assert list(np.diff(offsets)[-3:]) == [1, 1, 0]


# --------------------------------------------------------------------------- semantic


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _at_cosine(u, c, rng):
    """A unit vector whose cosine with unit vector u is c."""
    w = rng.normal(size=u.shape)
    w = _unit(w - (w @ u) * u)
    return c * u + np.sqrt(1 - c * c) * w


def _clustered(n, d=32, k=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(k, d)))
    return _unit(0.6 * centers[np.arange(n) % k] + 0.8 * _unit(rng.normal(size=(n, d)))), rng


def _with_emb(records, vectors, model="tiny-test"):
    for r, e in zip(records, encode_embeddings(np.asarray(vectors))):
        r["emb"], r["emb_model"] = e, model
    return records


def test_semantic_and_perceptual_duplicates_with_real_kmeans(tmp_path):
    base, rng = _clustered(240)
    planted = {"p": (3, 0.985), "s": (10, 0.93), "m": (20, 0.86)}  # perceptual, semantic, near miss
    vectors = list(base) + [_at_cosine(base[i], c, rng) for i, c in planted.values()]
    records = _with_emb(
        [image(f"http://x/{i}.jpg", f"b{i}") for i in range(240)] + [image(f"http://y/{k}.jpg", k) for k in planted],
        vectors,
    )
    stats = tmp_path / "stats.json"
    out, dropped, proc = dedup(
        records,
        "--mode",
        "exact,semantic",
        "--cluster-size",
        "40",
        "--stats",
        stats,
        "--device",
        "cpu",
        tmp_path=tmp_path,
    )
    assert {k: (v["reason"], v["dup_of"]) for k, v in dropped.items()} == {
        "p": ("perceptual_duplicate", "b3"),
        "s": ("semantic_duplicate", "b10"),
    }
    assert dropped["p"]["similarity"] == pytest.approx(0.985, abs=3e-3)
    assert dropped["s"]["similarity"] == pytest.approx(0.93, abs=3e-3)
    kept = {r["id"]: r for r in out}
    assert "m" in kept and kept["m"]["scores"]["dup_sim"] == pytest.approx(0.86, abs=3e-3)
    assert kept["b3"]["scores"]["dup_sim"] == pytest.approx(0.985, abs=3e-3)
    assert all(r["scores"]["dup_sim"] < 0.9 for k, r in kept.items() if k not in ("b3", "b10", "b20"))
    sem = orjson.loads(stats.read_bytes())["stage"]["semantic"]
    assert sem["image"]["clusters"] == 7 and "device cpu" in proc.stderr.decode()
    # perceptual mode alone keeps the semantic (but not near-identical) duplicate
    out, dropped, _ = dedup(
        records, "--mode", "perceptual", "--cluster-size", "40", "--device", "cpu", tmp_path=tmp_path
    )
    assert set(dropped) == {"p"} and dropped["p"]["reason"] == "perceptual_duplicate"


def test_probes_find_duplicates_across_a_cluster_boundary(tmp_path):
    rng = np.random.default_rng(0)
    d = 16
    ca, cb = np.eye(d)[0], np.cos(1.2) * np.eye(d)[0] + np.sin(1.2) * np.eye(d)[1]
    groups = [_unit(0.7 * c + 0.7 * _unit(rng.normal(size=(60, d)))) for c in (ca, cb)]
    middle, across = _unit(ca + cb), _unit(ca - cb)
    u, v = _unit(middle + 0.16 * across), _unit(middle - 0.16 * across)  # cosine 0.95, one on each side
    records = _with_emb(
        [image(f"http://x/{i}.jpg", f"m{i}") for i in range(120)]
        + [image("http://x/u.jpg", "u"), image("http://x/v.jpg", "v")],
        list(np.vstack(groups)) + [u, v],
    )
    args = ("--mode", "semantic", "--cluster-size", "60", "--device", "cpu")
    _, dropped, _ = dedup(records, *args, "--probes", "1", tmp_path=tmp_path)
    assert dropped == {}  # u and v land in different clusters and are never compared
    _, dropped, _ = dedup(records, *args, tmp_path=tmp_path)  # default: 3 probes
    assert (
        list(dropped) == ["v"]
        and dropped["v"]["dup_of"] == "u"
        and dropped["v"]["similarity"] == pytest.approx(0.95, abs=3e-3)
    )


def test_semantic_keeps_first_and_does_not_chain(tmp_path):
    rng = np.random.default_rng(3)
    a = _unit(rng.normal(size=16))
    b = _at_cosine(a, 0.93, rng)
    # c: 0.93 from b but only ~0.73 from a (rotate further away in the a-b plane)
    w = _unit(b - (b @ a) * a)
    angle = 2 * np.arccos(0.93)
    c = np.cos(angle) * a + np.sin(angle) * w
    assert abs(b @ c - 0.93) < 1e-6 and a @ c < 0.75
    others = [_unit(rng.normal(size=16)) for _ in range(20)]
    records = _with_emb(
        [text(f"sentence {k}", k) for k in ("a", "b", "c")] + [text(f"other {i}", f"o{i}") for i in range(20)],
        [a, b, c] + others,
    )
    out, dropped, _ = dedup(records, "--mode", "semantic", "--device", "cpu", tmp_path=tmp_path)
    # b is within 0.9 of the kept a and goes; c is within 0.9 only of the dropped b, so it stays
    assert set(dropped) == {"b"} and dropped["b"]["dup_of"] == "a"
    assert {"a", "c"} <= {r["id"] for r in out}


def test_kinds_are_deduplicated_separately_and_order_is_kept(tmp_path):
    rng = np.random.default_rng(4)
    v = _unit(rng.normal(size=(4, 16)))
    records = _with_emb(
        [
            text("same words here", "t1"),
            image("http://a/1.jpg", "i1"),
            text("other words there", "t2"),
            image("http://a/2.jpg", "i2"),
            image("http://a/3.jpg", "i3"),
        ],
        [v[0], v[0], v[1], v[2], v[2]],
    )
    out, dropped, _ = dedup(records, "--mode", "exact,near,semantic", "--device", "cpu", tmp_path=tmp_path)
    assert [r["id"] for r in out] == ["t1", "i1", "t2", "i2"]  # the text and image sharing a vector both stay
    assert dropped["i3"]["reason"] == "perceptual_duplicate" and dropped["i3"]["dup_of"] == "i2"


def test_semantic_needs_embeddings_and_reports_the_line(tmp_path):
    records = _with_emb([text("one", "a"), text("two", "b")], _unit(np.ones((2, 8))))
    records.append(text("three", "c"))
    proc = dedup(records, "--mode", "semantic", "--device", "cpu", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("rsyn: error: <stdin>:3: text record has no 'emb'")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    records[2]["emb"] = "not base64!"
    proc = rsyn(
        "dedup",
        "--mode",
        "semantic",
        "--device",
        "cpu",
        "--on-error",
        "skip",
        "--rejects",
        tmp_path / "r.jsonl",
        input=jsonl(records) + b'{"id": "x", "kind": "sound"}\n',
        check=True,
    )
    assert [r["id"] for r in decode_stream(proc.stdout)] == ["a"]  # b has a's vector
    reasons = sorted(r["reason"] for r in read_stream_file(tmp_path / "r.jsonl") if r["kind"] == "error")
    assert reasons == ["bad_embedding", "bad_kind"]


def test_skipped_records_do_not_shift_embeddings(tmp_path):
    rng = np.random.default_rng(5)
    v = _unit(rng.normal(size=(3, 16)))
    records = _with_emb(
        [
            image("http://a/1.jpg", "i1"),
            image("http://a/2.jpg", "i2", path=str(tmp_path / "no.jpg")),
            image("http://a/3.jpg", "i3"),
            image("http://a/4.jpg", "i4"),
        ],
        [v[0], v[1], v[2], v[0]],
    )
    out, dropped, proc = dedup(
        records,
        "--mode",
        "exact,semantic",
        "--on-error",
        "skip",
        "--device",
        "cpu",
        "--path-root",
        tmp_path,
        tmp_path=tmp_path,
    )
    assert [r["id"] for r in out] == ["i1", "i3"]
    assert dropped["i4"]["dup_of"] == "i1" and dropped["i4"]["similarity"] == 1.0
    assert "1 skipped errors (file_not_found 1)" in proc.stderr.decode()


# --------------------------------------------------------------------------- streams


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_one_record_streams(n, tmp_path):
    records = _with_emb([text("just one sentence here", "a")], _unit(np.ones((1, 8))))[:n]
    out, dropped, proc = dedup(records, "--mode", "exact,near,semantic", "--device", "cpu", tmp_path=tmp_path)
    assert [r["id"] for r in out] == [r["id"] for r in records] and dropped == {}
    assert f"{n} in, {n} out" in proc.stderr.decode()


def test_reruns_are_byte_identical_and_files_work(tmp_path):
    base, rng = _clustered(400, seed=9)
    vectors = list(base) + [_at_cosine(base[i], 0.97, rng) for i in range(0, 400, 7)]
    texts = [" ".join(sentence(s, 12)) for s in range(len(vectors))]
    texts[5] = texts[3].upper()
    records = _with_emb([text(t, f"r{i}") for i, t in enumerate(texts)], vectors)
    src = tmp_path / "in.jsonl"
    src.write_bytes(jsonl(records))
    args = ("dedup", src, "--mode", "exact,near,semantic", "--cluster-size", "60", "--seed", "3", "--device", "cpu")
    first = rsyn(*args, check=True).stdout
    rsyn(*args, "-o", tmp_path / "a.jsonl.zst", check=True)  # a second run, to a file
    assert (tmp_path / "a.jsonl.zst").read_bytes() == first
    out = decode_stream(first)
    assert 400 - 5 <= len(out) <= 400 and [r["id"] for r in out] == sorted(
        (r["id"] for r in out), key=lambda s: int(s[1:])
    )


def test_unknown_mode_and_inverted_thresholds():
    proc = rsyn("dedup", "--mode", "exact,fuzzy", input=b"")
    assert proc.returncode == 2 and "--mode 'exact,fuzzy'" in proc.stderr.decode()
    proc = rsyn("dedup", "--mode", "semantic", "--semantic-threshold", "0.97", input=b"")
    assert proc.returncode == 2 and "perceptual" in proc.stderr.decode()
