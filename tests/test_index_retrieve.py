"""rsyn index + rsyn retrieve through the real command line, real faiss and real SQLite."""

import sqlite3

import numpy as np
import orjson
import pytest
from conftest import decode_stream, jsonl, read_stream_file, rsyn

from rsyn.index_dir import file_checksum
from rsyn.records import decode_embeddings, encode_embeddings

MODEL = "tiny-clip-test"
DIM = 64


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def sentence_records(vectors, model=MODEL, start=0):
    embs = encode_embeddings(vectors)
    return [
        {
            "id": f"s{start + i:05d}",
            "kind": "text",
            "doc": f"doc{(start + i) // 7}",
            "pos": i % 7,
            "text": f"sentence number {start + i}",
            "scores": {"words": 3},
            "emb": e,
            "emb_model": model,
        }
        for i, e in enumerate(embs)
    ]


def image_records(vectors, model=MODEL):
    embs = encode_embeddings(vectors)
    return [
        {
            "id": f"img{i:04d}",
            "kind": "image",
            "doc": f"page{i}",
            "url": f"http://x/{i}.jpg",
            "width": 640,
            "custom_field": [i, "kept"],
            "emb": e,
            "emb_model": model,
        }
        for i, e in enumerate(embs)
    ]


def clustered(rng, n, clusters=40, dim=DIM, spread=0.35):
    centers = unit(rng.normal(size=(clusters, dim)))
    labels = rng.integers(0, clusters, n)
    return unit(centers[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 4), centers


def planted_corpus(seed=0, n_background=3000, n_queries=20):
    """Background sentences far from every query, plus 3 planted sentences per query at cosines 0.97, 0.93, 0.89."""
    rng = np.random.default_rng(seed)
    background, _ = clustered(rng, n_background)
    queries = unit(rng.normal(size=(n_queries, DIM)))
    # push background away from the queries so the planted ones are the true top 3
    background = unit(background - 1.2 * queries[rng.integers(0, n_queries, n_background)])
    planted, targets = [], []
    for q in queries:
        for cos in (0.97, 0.93, 0.89):
            noise = rng.normal(size=DIM)
            noise = unit(noise - noise @ q * q)
            planted.append(cos * q + np.sqrt(1 - cos**2) * noise)
            targets.append(cos)
    vectors = np.concatenate([background, np.array(planted)])
    order = rng.permutation(len(vectors))  # planted sentences scattered through the stream
    inverse = np.argsort(order)
    planted_rows = inverse[n_background:].reshape(n_queries, 3)
    return vectors[order], queries, planted_rows, np.array(targets).reshape(n_queries, 3)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    vectors, queries, planted_rows, cosines = planted_corpus()
    sentences = sentence_records(vectors)
    mixed = sentences[:1000] + [{"id": "stray-image", "kind": "image", "url": "u"}] + sentences[1000:]
    (tmp / "sentences.jsonl").write_bytes(jsonl(mixed))
    index = tmp / "index"
    proc = rsyn(
        "index", tmp / "sentences.jsonl", "-o", index, "--clusters", "30", "--stats", tmp / "stats.json", check=True
    )
    return {
        "tmp": tmp,
        "index": index,
        "sentences": sentences,
        "queries": queries,
        "rows": planted_rows,
        "cosines": cosines,
        "stderr": proc.stderr.decode(),
    }


def test_retrieve_returns_planted_neighbours_first_with_descending_cosines(planted):
    images = image_records(planted["queries"])
    others = [{"id": "t1", "kind": "text", "text": "a sentence passes through"}, {"id": "x", "kind": "other"}]
    stream = images[:7] + others[:1] + images[7:] + others[1:]
    proc = rsyn("retrieve", "--index", planted["index"], "--device", "cpu", input=jsonl(stream), check=True)
    out = decode_stream(proc.stdout)
    assert [r["id"] for r in out] == [r["id"] for r in stream]  # order kept, nothing lost
    assert out[7] == others[0] and out[-1] == others[1]  # non-images untouched
    results = [r for r in out if r["kind"] == "image"]
    for q, (record, original) in enumerate(zip(results, images)):
        assert {k: v for k, v in record.items() if k != "texts"} == original  # every field kept
        texts = record["texts"]
        expected = [planted["sentences"][row] for row in planted["rows"][q]]
        assert [t["id"] for t in texts] == [s["id"] for s in expected]
        assert [t["text"] for t in texts] == [s["text"] for s in expected]
        scores = [t["score"] for t in texts]
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, planted["cosines"][q], atol=3e-3)  # float16 embeddings
    assert "model tiny-clip-test" in proc.stderr.decode()


def test_index_directory_contract(planted):
    index = planted["index"]
    assert sorted(p.name for p in index.iterdir()) == ["centroids.npy", "ivf.faiss", "meta.json", "sentences.sqlite"]
    meta = orjson.loads((index / "meta.json").read_bytes())
    n = len(planted["sentences"])
    assert meta["model"] == MODEL and meta["dim"] == DIM and meta["count"] == n and meta["clusters"] == 30
    assert meta["index_type"] == "ivf_flat" and meta["ignored"] == {"not_text": 1}
    # the flat/PQ choice depends on this machine's RAM unless --max-memory pins it: printed and recorded
    assert meta["layout"]["chosen_by"].startswith("auto: half of this machine's")
    assert "chose ivf_flat" in planted["stderr"] and "auto: half of this machine's" in planted["stderr"]
    assert sorted(meta["files"]) == ["centroids.npy", "ivf.faiss", "sentences.sqlite"]
    for name, recorded in meta["files"].items():
        assert recorded == {"bytes": (index / name).stat().st_size, "xxh3_128": file_checksum(index / name)}
    assert meta["rsyn_version"] and meta["parameters"]["seed"] == 0
    assert meta["cluster_sizes"]["max"] >= meta["cluster_sizes"]["median"] >= meta["cluster_sizes"]["min"]
    centroids = np.load(index / "centroids.npy")
    assert centroids.shape == (30, DIM) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)

    db = sqlite3.connect(index / "sentences.sqlite")
    columns = [(c[1], c[2], c[3], c[5]) for c in db.execute("PRAGMA table_info(sentences)")]
    assert columns == [("row", "INTEGER", 0, 1), ("id", "TEXT", 1, 0), ("text", "TEXT", 1, 0), ("doc", "TEXT", 0, 0)]
    rows = db.execute("SELECT row, id, text, doc FROM sentences ORDER BY row").fetchall()
    assert rows == [(i, s["id"], s["text"], s["doc"]) for i, s in enumerate(planted["sentences"])]

    # the coarse quantizer is exactly the k-means centroids, and row r holds sentence r's vector
    import faiss

    ivf = faiss.read_index(str(index / "ivf.faiss"))
    quantizer = faiss.downcast_index(ivf.quantizer)
    np.testing.assert_array_equal(quantizer.reconstruct_n(0, 30), centroids)
    ivf.make_direct_map()
    some = np.array([0, 17, n - 1])
    expected = decode_embeddings([planted["sentences"][i]["emb"] for i in some])
    np.testing.assert_allclose(ivf.reconstruct_batch(some), unit(expected), atol=1e-6)

    stats = orjson.loads((planted["tmp"] / "stats.json").read_bytes())
    assert stats["in"] == n + 1 and stats["dropped"] == {"not_text": 1}
    assert stats["stage"]["indexed"] == n and stats["stage"]["clusters"] == 30


def test_ivf_recall_against_exact_search_on_clustered_data(tmp_path):
    rng = np.random.default_rng(1)
    sentences, centers = clustered(rng, 6000, clusters=60, spread=0.2)
    queries = unit(centers[rng.integers(0, 60, 300)] + 0.5 * rng.normal(size=(300, DIM)) / np.sqrt(DIM) * 4)
    (tmp_path / "s.jsonl").write_bytes(jsonl(sentence_records(sentences)))
    images = jsonl(image_records(queries))
    s16 = unit(decode_embeddings(encode_embeddings(sentences)))
    q16 = unit(decode_embeddings(encode_embeddings(queries)))
    exact = np.argsort(-(q16 @ s16.T), axis=1)[:, :3].tolist()

    def recall(index, *nprobe):
        proc = rsyn("retrieve", "--index", index, *nprobe, "--device", "cpu", "-q", input=images, check=True)
        found = [[int(t["id"][1:]) for t in r["texts"]] for r in decode_stream(proc.stdout)]
        return np.mean([len(set(f) & set(e)) / 3 for f, e in zip(found, exact)])

    rsyn("index", tmp_path / "s.jsonl", "-o", tmp_path / "default", "--device", "cpu", "-q", check=True)
    assert orjson.loads((tmp_path / "default" / "meta.json").read_bytes())["clusters"] == 14  # 6000 / 420
    assert recall(tmp_path / "default", "--nprobe", "14") == 1.0  # visiting every cluster is exact search

    rsyn(
        "index", tmp_path / "s.jsonl", "-o", tmp_path / "fine", "--clusters", "100", "--device", "cpu", "-q", check=True
    )
    paper, default = recall(tmp_path / "fine", "--nprobe", "1"), recall(tmp_path / "fine")
    assert default >= 0.95  # the default --nprobe
    assert paper < 0.9  # one cluster misses neighbours across cluster borders


def test_the_index_directory_format_has_one_module():
    # index writes it, retrieve and tags read it: only rsyn/index_dir.py spells the index's file names
    import pathlib

    import rsyn

    names = ('"ivf.faiss"', '"sentences.sqlite"', '"lists.ivfdata"', '"vectors.npy"', "'sentences.sqlite'")
    package = pathlib.Path(rsyn.__file__).parent
    spelled = [
        f"{path.relative_to(package)}: {name}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "index_dir.py"
        for name in names
        if name in path.read_text()
    ]
    assert spelled == []


def test_rebuild_from_the_same_input_is_byte_identical(planted, tmp_path):
    again = tmp_path / "again"
    rsyn("index", planted["tmp"] / "sentences.jsonl", "-o", again, "--clusters", "30", "-q", check=True)
    for path in planted["index"].iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    queries = jsonl(image_records(planted["queries"]))
    a = rsyn("retrieve", "--index", planted["index"], "-q", "--device", "cpu", input=queries, check=True).stdout
    b = rsyn("retrieve", "--index", again, "-q", "--device", "cpu", input=queries, check=True).stdout
    assert a == b


def test_retrieve_refuses_another_model(planted, tmp_path):
    images = image_records(planted["queries"][:3])
    images[1]["emb_model"] = "some-other-clip"
    (tmp_path / "images.jsonl").write_bytes(jsonl(images))
    proc = rsyn(
        "retrieve",
        "--index",
        planted["index"],
        tmp_path / "images.jsonl",
        "-o",
        tmp_path / "out.zst",
        "--device",
        "cpu",
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"rsyn: error: {tmp_path / 'images.jsonl'}:2: image embedding from model 'some-other-clip'")
    )
    assert MODEL in err
    assert not (tmp_path / "out.zst").exists()
    # skipping it instead: counted, logged, the others retrieved
    proc = rsyn(
        "retrieve",
        "--index",
        planted["index"],
        tmp_path / "images.jsonl",
        "--on-error",
        "skip",
        "--rejects",
        tmp_path / "rejects.jsonl",
        "--device",
        "cpu",
        check=True,
    )
    assert [r["id"] for r in decode_stream(proc.stdout)] == ["img0000", "img0002"]
    assert "1 skipped errors (model_mismatch 1)" in proc.stderr.decode()
    assert read_stream_file(tmp_path / "rejects.jsonl")[0]["record"]["id"] == "img0001"


def test_index_refuses_mixed_models_and_bad_embeddings(tmp_path):
    rng = np.random.default_rng(2)
    records = sentence_records(unit(rng.normal(size=(50, DIM))))
    records[10]["emb_model"] = "other"
    (tmp_path / "mixed.jsonl").write_bytes(jsonl(records))
    proc = rsyn("index", tmp_path / "mixed.jsonl", "-o", tmp_path / "idx", "--device", "cpu")
    assert proc.returncode == 2
    assert (
        proc.stderr.decode()
        .strip()
        .splitlines()[-1]
        .startswith(f"rsyn: error: {tmp_path / 'mixed.jsonl'}:11: embedding from model 'other'")
    )
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx*"))  # nothing left behind

    records[10]["emb_model"] = MODEL
    records[20]["emb"] = "!!!" + records[20]["emb"][3:]  # same length, not base64
    del records[30]["emb"]
    (tmp_path / "bad.jsonl").write_bytes(jsonl(records))
    proc = rsyn("index", tmp_path / "bad.jsonl", "-o", tmp_path / "idx", "--device", "cpu")
    assert proc.returncode == 2
    assert f"{tmp_path / 'bad.jsonl'}:31: text record has no embedding" in proc.stderr.decode()
    proc = rsyn(
        "index",
        tmp_path / "bad.jsonl",
        "-o",
        tmp_path / "idx",
        "--device",
        "cpu",
        "--on-error",
        "skip",
        "--stats",
        tmp_path / "stats.json",
        check=True,
    )
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())
    assert stats["errors"] == {"missing_emb": 1, "bad_emb": 1} and stats["stage"]["indexed"] == 48
    db = sqlite3.connect(tmp_path / "idx" / "sentences.sqlite")
    ids = [r[0] for r in db.execute("SELECT id FROM sentences ORDER BY row")]
    assert ids == [r["id"] for i, r in enumerate(records) if i not in (20, 30)]  # rows stay aligned

    empty = rsyn("index", "-o", tmp_path / "none", "--device", "cpu", input=b"")
    assert empty.returncode == 2 and "nothing to index" in empty.stderr.decode()
    no_output = rsyn("index", tmp_path / "bad.jsonl", "--device", "cpu")
    assert no_output.returncode == 2 and "give it with -o DIR" in no_output.stderr.decode()


def _copy_index(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _flip_list_bytes(index):
    """Overwrite bytes inside the inverted lists of ivf.faiss (same size), as a bad disk or copy would."""
    data = bytearray((index / "ivf.faiss").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\x7f" * 64  # float32 0x7f7f7f7f: about 3.4e38
    (index / "ivf.faiss").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "no_meta",
        "truncated_index",
        "garbage_index",
        "bad_meta",
        "sqlite_rows",
        "not_a_dir",
        "flipped_bytes",
        "flipped_bytes_unverified",
        "foreign_file",
        "bad_file_entry",
    ],
)
def test_incomplete_or_corrupt_index_is_refused_in_one_line(planted, tmp_path, damage):
    index = _copy_index(planted["index"], tmp_path / "idx")
    options = []
    if damage == "no_meta":
        (index / "meta.json").unlink()
        expect = "meta.json is missing"
    elif damage == "truncated_index":
        data = (index / "ivf.faiss").read_bytes()
        (index / "ivf.faiss").write_bytes(data[: len(data) // 2])
        expect = "ivf.faiss has"
    elif damage == "garbage_index":
        size = (index / "ivf.faiss").stat().st_size
        (index / "ivf.faiss").write_bytes(b"\x00" * size)
        options, expect = ["--no-verify"], "ivf.faiss cannot be read by faiss"
    elif damage == "flipped_bytes":
        _flip_list_bytes(index)
        expect = "ivf.faiss does not match its checksum in meta.json"
    elif damage == "flipped_bytes_unverified":
        _flip_list_bytes(index)
        options, expect = ["--no-verify", "--nprobe", "30"], "ivf.faiss gives scores outside [-1, 1]"
    elif damage == "bad_meta":
        (index / "meta.json").write_bytes(b'{"format": "rsyn-index", "model": ')
        expect = "meta.json is not valid JSON"
    elif damage == "sqlite_rows":
        db = sqlite3.connect(index / "sentences.sqlite")
        db.execute("UPDATE sentences SET text = 'x' WHERE row = 5")  # same size is not guaranteed: fix meta
        db.execute("DELETE FROM sentences WHERE row = 7")
        db.commit()
        db.close()
        meta = orjson.loads((index / "meta.json").read_bytes())
        meta["files"]["sentences.sqlite"] = {
            "bytes": (index / "sentences.sqlite").stat().st_size,
            "xxh3_128": file_checksum(index / "sentences.sqlite"),
        }
        (index / "meta.json").write_bytes(orjson.dumps(meta))
        expect = "sentences.sqlite has"
    elif damage in ("foreign_file", "bad_file_entry"):
        meta = orjson.loads((index / "meta.json").read_bytes())
        if damage == "foreign_file":  # a hostile meta.json must not make retrieve read other files
            meta["files"]["../../etc/passwd"] = {"bytes": 1, "xxh3_128": "0"}
            expect = "meta.json: 'files' must map the index's own file names"
        else:
            meta["files"]["ivf.faiss"] = {"bytes": "many"}
            expect = "meta.json: the entry for ivf.faiss is not {bytes, xxh3_128}"
        (index / "meta.json").write_bytes(orjson.dumps(meta))
    else:
        index = tmp_path / "missing"
        expect = "no such index directory"
    proc = rsyn(
        "retrieve", "--index", index, "--device", "cpu", *options, input=jsonl(image_records(planted["queries"][:2]))
    )
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
    assert err[-1].startswith(f"rsyn: error: {index}") and expect in err[-1], err


def test_pq_lists_under_a_memory_budget_rerank_to_exact_cosines(planted, tmp_path):
    # 3060 x 64-d float32 lists need ~0.8 MB; a 90 KB budget forces 16-byte PQ codes (24 would not fit)
    rsyn(
        "index",
        planted["tmp"] / "sentences.jsonl",
        "-o",
        tmp_path / "pq",
        "--clusters",
        "30",
        "--max-memory",
        "90K",
        "--device",
        "cpu",
        "-q",
        check=True,
    )
    meta = orjson.loads((tmp_path / "pq" / "meta.json").read_bytes())
    assert meta["index_type"] == "ivf_pq" and meta["parameters"]["pq_bytes"] == 16
    assert meta["layout"]["chosen_by"] == "--max-memory 90K" and meta["layout"]["memory_budget_bytes"] == 90 << 10
    assert (tmp_path / "pq" / "vectors.npy").exists()
    queries = jsonl(image_records(planted["queries"]))
    flat = decode_stream(
        rsyn("retrieve", "--index", planted["index"], "-q", "--device", "cpu", input=queries, check=True).stdout
    )
    pq = decode_stream(
        rsyn("retrieve", "--index", tmp_path / "pq", "-q", "--device", "cpu", input=queries, check=True).stdout
    )
    assert [r["texts"] for r in pq] == [r["texts"] for r in flat]  # re-ranked: same texts, same exact scores

    too_small = rsyn(
        "index", planted["tmp"] / "sentences.jsonl", "-o", tmp_path / "no", "--max-memory", "10K", "--device", "cpu"
    )
    assert too_small.returncode == 2 and "--max-memory 0.00 GiB is too small" in too_small.stderr.decode()


def test_sq8_lists_rerank_to_exact_cosines(planted, tmp_path):
    # 8-bit scalar codes scan a quarter of the bytes; the candidates are re-scored from the float16 vectors
    index = tmp_path / "sq8"
    sentences = planted["tmp"] / "sentences.jsonl"
    rsyn(
        "index", sentences, "-o", index, "--clusters", "30", "--index-type", "sq8", "--device", "cpu", "-q", check=True
    )
    meta = orjson.loads((index / "meta.json").read_bytes())
    assert meta["index_type"] == "ivf_sq8" and meta["layout"]["chosen_by"] == "--index-type sq8"
    assert set(meta["files"]) == {"ivf.faiss", "centroids.npy", "sentences.sqlite", "vectors.npy"}
    # a quarter of the flat lists' vector bytes, plus the ids
    assert (index / "ivf.faiss").stat().st_size < 0.4 * (planted["index"] / "ivf.faiss").stat().st_size
    queries = jsonl(image_records(planted["queries"]))
    flat = decode_stream(
        rsyn("retrieve", "--index", planted["index"], "-q", "--device", "cpu", input=queries, check=True).stdout
    )
    one, three = ({"OMP_NUM_THREADS": n} for n in ("1", "3"))
    sq8 = rsyn("retrieve", "--index", index, "-q", "--device", "cpu", input=queries, env=one, check=True).stdout
    assert [r["texts"] for r in decode_stream(sq8)] == [r["texts"] for r in flat]  # same texts, same exact scores
    # the same bytes whatever faiss's thread count, for the index and for the retrieved stream
    again = tmp_path / "sq8-3"
    rsyn("index", sentences, "-o", again, "--clusters", "30", "--index-type", "sq8", "-q", env=three, check=True)
    for name in meta["files"]:
        assert (again / name).read_bytes() == (index / name).read_bytes(), name
    assert rsyn("retrieve", "--index", again, "-q", input=queries, env=three, check=True).stdout == sq8


def test_distinct_skips_near_identical_texts(tmp_path):
    rng = np.random.default_rng(3)
    query = unit(rng.normal(size=DIM))
    noise = unit(rng.normal(size=(4, DIM)))
    near = [
        unit(0.95 * query + 0.31 * noise[0]),
        unit(0.95 * query + 0.31 * noise[0] + 0.005 * noise[1]),
        unit(0.9 * query + 0.43 * noise[2]),
        unit(0.85 * query + 0.52 * noise[3]),
    ]
    far = unit(rng.normal(size=(500, DIM)) - 2 * query)
    (tmp_path / "s.jsonl").write_bytes(jsonl(sentence_records(np.concatenate([near, far]))))
    rsyn("index", tmp_path / "s.jsonl", "-o", tmp_path / "idx", "--clusters", "4", "-q", "--device", "cpu", check=True)
    images = jsonl(image_records(query[None, :]))
    plain = decode_stream(
        rsyn(
            "retrieve", "--index", tmp_path / "idx", "--nprobe", "4", "-q", "--device", "cpu", input=images, check=True
        ).stdout
    )[0]["texts"]
    distinct = decode_stream(
        rsyn(
            "retrieve",
            "--index",
            tmp_path / "idx",
            "--nprobe",
            "4",
            "--distinct",
            "0.99",
            "-q",
            "--device",
            "cpu",
            input=images,
            check=True,
        ).stdout
    )[0]["texts"]
    assert sorted(t["id"] for t in plain[:2]) == ["s00000", "s00001"]  # the near-identical pair
    assert len(distinct) == 3 and [t["id"] for t in distinct][1:] == ["s00002", "s00003"]
    assert distinct[0]["id"] in ("s00000", "s00001")


def test_replacing_an_index_and_refusing_other_directories(planted, tmp_path):
    target = _copy_index(planted["index"], tmp_path / "idx")
    small = planted["tmp"] / "small.jsonl"
    small.write_bytes(jsonl(planted["sentences"][:500]))
    rsyn("index", small, "-o", target, "--clusters", "5", "-q", "--device", "cpu", check=True)
    assert orjson.loads((target / "meta.json").read_bytes())["count"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary or old directory left

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    proc = rsyn("index", small, "-o", precious, "--device", "cpu")
    assert proc.returncode == 2 and "is not an rsyn output (no meta.json" in proc.stderr.decode()
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_bad_image_embeddings_are_named_or_skipped(planted, tmp_path):
    images = image_records(planted["queries"][:4])
    images[1]["emb"] = encode_embeddings(np.ones((1, 32)))[0]  # wrong dimension
    images[2]["emb"] = base64_zero_vector()
    del images[3]["emb_model"]
    path = tmp_path / "images.jsonl"
    path.write_bytes(jsonl(images))
    proc = rsyn("retrieve", "--index", planted["index"], path, "--device", "cpu")
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines()[-1].startswith(f"rsyn: error: {path}:4: image record has no")
    proc = rsyn(
        "retrieve",
        "--index",
        planted["index"],
        path,
        "--device",
        "cpu",
        "--on-error",
        "skip",
        "--stats",
        tmp_path / "stats.json",
        check=True,
    )
    assert [r["id"] for r in decode_stream(proc.stdout)] == ["img0000"]
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())
    assert stats["errors"] == {"missing_emb": 1, "bad_emb": 2} and stats["stage"]["images"] == 1


def base64_zero_vector():
    import base64

    return base64.b64encode(np.zeros(DIM, dtype="<f2").tobytes()).decode()


def test_memory_budget_picks_flat_lists_or_the_largest_pq_code_that_fits():
    from rsyn.stages.index import choose_layout, parse_size

    assert parse_size("8G") == 8 << 30 and parse_size("512M") == 512 << 20 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("auto") is None
    million = 1_000_000
    # flat lists up to 1 GiB, 8-bit scalar codes above (1M x 512-d flat: 1.9 GiB), when they fit the budget
    assert (
        choose_layout(million // 4, 512, 595, budget=4 << 30, index_type="auto", pq_bytes=None).index_type == "ivf_flat"
    )
    assert choose_layout(million, 512, 2381, budget=4 << 30, index_type="auto", pq_bytes=None).index_type == "ivf_sq8"
    assert choose_layout(million, 512, 2381, budget=600 << 20, index_type="auto", pq_bytes=None).index_type == "ivf_sq8"
    assert (
        choose_layout(million // 4, 512, 595, budget=200 << 20, index_type="auto", pq_bytes=None).index_type
        == "ivf_sq8"
    )
    pq = choose_layout(million, 512, 2381, budget=100 << 20, index_type="auto", pq_bytes=None)
    assert pq.index_type == "ivf_pq" and pq.pq_bytes == 64 and pq.index_bytes <= 100 << 20
    assert choose_layout(million, 512, 2381, budget=48 << 20, index_type="auto", pq_bytes=None).pq_bytes == 32
    assert choose_layout(million, 512, 2381, budget=40 << 20, index_type="auto", pq_bytes=None).pq_bytes == 16


def _faiss_gpus():
    import faiss

    return getattr(faiss, "get_num_gpus", lambda: 0)()


@pytest.mark.skipif(_faiss_gpus() == 0, reason="needs faiss-gpu and a CUDA device")
def test_gpu_search_agrees_with_cpu(planted):
    queries = jsonl(image_records(planted["queries"]))
    cpu = decode_stream(
        rsyn("retrieve", "--index", planted["index"], "--device", "cpu", "-q", input=queries, check=True).stdout
    )
    gpu = decode_stream(
        rsyn("retrieve", "--index", planted["index"], "--device", "cuda", "-q", input=queries, check=True).stdout
    )
    for a, b in zip(cpu, gpu):
        assert [t["id"] for t in a["texts"]] == [t["id"] for t in b["texts"]]
        np.testing.assert_allclose([t["score"] for t in a["texts"]], [t["score"] for t in b["texts"]], atol=1e-4)
