"""dedup as passes: the sharded / partitioned passes give exactly the one-process `rsyn dedup` output."""

import hashlib
import io

import numpy as np
import orjson
import pytest
import zstandard
from conftest import decode_stream, jsonl, rsyn

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber bronze cedar dune ember fern "
    "grove harbor island jade kettle lantern meadow nectar orchid pebble quartz river saddle timber umber "
    "valley willow yarrow zephyr"
).split()


def make_corpus(n: int, seed: int = 0, image_dir=None) -> list[dict]:
    """Sentences and images with every duplicate shape dedup must handle, shuffled into one stream.

    Boilerplate buckets (thousands of copies, exact and one-word variants), long
    near chains (each link >= 0.8, the ends far apart), empty and punctuation-only
    texts, a long tail of unique sentences; images duplicated by URL, by a known
    sha256 and by the bytes of a local file.
    """
    rng = np.random.default_rng(seed)
    vocab = WORDS + [f"w{i}" for i in range(400)]

    def sentence(k):
        return [vocab[j] for j in rng.choice(len(vocab), k, replace=False)]

    texts = []
    boiler = [sentence(9) for _ in range(3)]
    for _ in range(n // 10):  # boilerplate: copies in several spellings and one-word variants
        words = list(boiler[int(rng.integers(3))])
        style = int(rng.integers(4))
        if style == 1:
            words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
        line = " ".join(words)
        texts.append(line.upper() + "!" if style == 2 else line)
    for _ in range(max(1, n // 400)):  # long chains: one word replaced per step
        words = sentence(20)
        for _ in range(40):
            texts.append(" ".join(words))
            words = list(words)
            words[int(rng.integers(20))] = vocab[int(rng.integers(len(vocab)))]
    texts += ["", "...", "!!", "  ", "-"] * max(1, n // 500)
    sources = [sentence(int(rng.integers(3, 16))) for _ in range(max(1, n // 5))]
    while len(texts) < int(n * 0.9):  # unique-ish tail with some near copies of earlier sources
        words = list(sources[int(rng.integers(len(sources)))])
        if rng.random() < 0.3 and len(words) > 4:
            words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
        elif rng.random() < 0.5:
            words = sentence(int(rng.integers(3, 16)))
        texts.append(" ".join(words))
    records = [
        {"id": f"t{i}", "kind": "text", "doc": f"d{i // 30}", "pos": i % 30, "text": t} for i, t in enumerate(texts)
    ]
    n_images = n - len(records)
    for i in range(n_images):
        url = f"http://h{i % 97}/{int(rng.integers(n_images // 2 + 1))}.jpg"
        rec = {"id": f"i{i}", "kind": "image", "doc": f"d{i}", "pos": 0, "url": url}
        r = rng.random()
        if r < 0.2:
            rec["sha256"] = hashlib.sha256(str(int(rng.integers(n_images // 3 + 1))).encode()).hexdigest()
        elif r < 0.25 and image_dir is not None:
            rec["path"] = str(image_dir / f"{int(rng.integers(20))}.jpg")
        records.append(rec)
    order = rng.permutation(len(records))
    return [records[i] for i in order]


def write_corpus(records: list[dict], directory, files: int = 6, image_dir=None) -> list[str]:
    """The records as `files` zstd JSONL files of unequal sizes (plus the image files they name)."""
    if image_dir is not None:
        image_dir.mkdir(exist_ok=True)
        for k in range(20):
            (image_dir / f"{k}.jpg").write_bytes(b"\xff\xd8" + bytes([k % 7]) * 100)
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, len(records)), files - 1, replace=False))
    paths = []
    for k, part in enumerate(np.split(np.arange(len(records)), cuts)):
        path = directory / f"in-{k}.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(jsonl(records[i] for i in part)))
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- running the passes


def _lines(path) -> list[bytes]:
    """Decompressed lines of a stream file (none when it does not exist)."""
    if not path.exists():
        return []
    return [
        line
        for line in zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(path.read_bytes()), read_across_frames=True)
        .read()
        .splitlines()
        if line
    ]


def one_process(paths, out_dir, *args) -> tuple[list[bytes], list[bytes]]:
    """`rsyn dedup` in this process (the real command line): output lines and rejects lines."""
    from conftest import rsyn_here

    out, rejects = out_dir / "one.jsonl.zst", out_dir / "one-rejects.jsonl.zst"
    rsyn_here("dedup", *paths, *args, "-o", out, "--rejects", rejects, "--quiet", check=True)
    return _lines(out), _lines(rejects)


def passes(paths, work, n_shards: int, n_parts: int, options, device="cpu", seed=0):
    """Every pass, as the pipeline runner calls them, but in this process: per shard output and rejects lines."""
    from rsyn.command import Run
    from rsyn.stages.dedup import (
        Work,
        assign_pass,
        filter_pass,
        group_pass,
        scan_pass,
        settle_pass,
        train_pass,
    )

    w = Work(work)

    def run(name, **kw):
        return Run(name, quiet=True, device=device, **kw)

    scan_rejects = []
    for k in range(n_shards):
        rejects = work / f"scan-rejects-{k}.jsonl.zst"
        with run("dedup-scan", inputs=paths, shard=(k, n_shards), rejects=str(rejects), seed=seed) as r:
            scan_pass(r, options, w, (k, n_shards))
        scan_rejects.append(_lines(rejects))
    for mode in ("exact", "near"):
        if mode in options.modes:
            for m in range(n_parts):
                with run(f"dedup-{mode}") as r:
                    group_pass(r, w, mode, (m, n_parts))
            with run("dedup-settle") as r:
                settle_pass(r, w, mode)
    if options.embedding_threshold is not None:
        with run("dedup-train") as r:
            train_pass(r, w)
        for k in range(n_shards):
            with run("dedup-assign") as r:
                assign_pass(r, w, (k, n_shards))
        for m in range(n_parts):
            with run("dedup-pairs") as r:
                group_pass(r, w, "semantic", (m, n_parts))
        with run("dedup-select") as r:
            settle_pass(r, w, "semantic")
    outs, rejects = [], []
    for k in range(n_shards):
        out, rej = work / f"out-{k}.jsonl.zst", work / f"rejects-{k}.jsonl.zst"
        with run("dedup-filter", output=str(out), rejects=str(rej), shard=(k, n_shards)) as r:
            filter_pass(r, w, (k, n_shards))
        outs.append(_lines(out))
        rejects.append(scan_rejects[k] + _lines(rej))
    return outs, rejects


def assert_split_equals_one(one: list[bytes], parts: list[list[bytes]]) -> None:
    """Every shard's lines are, byte for byte and in order, the one-process lines of that shard's records.

    With contiguous shards (file ranges) that makes their concatenation the one-process output; with
    record-position shards, each shard is the one-process output restricted to its records.
    """

    def key(line):
        entry = orjson.loads(line)
        record = entry.get("record", entry)
        return record.get("id"), entry.get("kind"), entry.get("reason")

    position = {key(line): i for i, line in enumerate(one)}
    assert len(position) == len(one)  # ids are unique in the test corpus
    seen = []
    for part in parts:
        at = [position[key(line)] for line in part]
        assert at == sorted(at)
        assert [one[i] for i in at] == part
        seen += at
    assert sorted(seen) == list(range(len(one)))


# --------------------------------------------------------------------------- exact and near


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    records = make_corpus(50_000, image_dir=directory / "img")
    return directory, write_corpus(records, directory, image_dir=directory / "img")


@pytest.fixture(scope="module")
def one_process_run(corpus, tmp_path_factory, request):
    import os

    directory, paths = corpus
    here = os.getcwd()
    os.chdir(directory)  # the image paths lie under the current directory, the default --path-root
    try:
        return one_process(paths, tmp_path_factory.mktemp("one"))
    finally:
        os.chdir(here)


@pytest.mark.parametrize("n_shards", [1, 3, 4])
@pytest.mark.parametrize("n_parts", [1, 5])
def test_exact_and_near_passes_equal_one_process(corpus, one_process_run, n_shards, n_parts, tmp_path, monkeypatch):
    from rsyn.stages.dedup import DedupOptions

    directory, paths = corpus
    monkeypatch.chdir(directory)
    out, rejects = passes(paths, tmp_path, n_shards, n_parts, DedupOptions(modes=("exact", "near")))
    one_out, one_rejects = one_process_run
    assert len(one_out) > 30_000 and len(one_rejects) > 10_000
    reasons = {orjson.loads(line)["reason"] for line in one_rejects}
    assert reasons == {"exact_duplicate", "near_duplicate"}
    assert_split_equals_one(one_out, out)
    assert_split_equals_one(one_rejects, rejects)


# --------------------------------------------------------------------------- semantic


def semantic_corpus(n: int = 3000, d: int = 32, seed: int = 0) -> list[dict]:
    """Sentences and images with embeddings: topic clusters, planted copies at known cosines (some straddling
    clusters), exact and near text duplicates on top."""
    from rsyn.records import encode_embeddings

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, d))
    x = centers[rng.integers(12, size=n)] + 1.2 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = rng.choice(n, size=n // 5)
    for i in copies:  # a copy at cosine 0.85 .. 0.995 of an earlier vector
        c = rng.uniform(0.85, 0.995)
        w = rng.normal(size=d)
        w -= (w @ x[i]) * x[i]
        w /= np.linalg.norm(w)
        x = np.vstack([x, c * x[i] + np.sqrt(1 - c * c) * w])
    records = []
    for i, e in enumerate(encode_embeddings(x)):
        if i % 2:
            records.append({"id": f"i{i}", "kind": "image", "url": f"http://x/{i % 1500}.jpg"})
        else:
            words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6 + i % 5))
            records.append({"id": f"t{i}", "kind": "text", "text": words if i % 9 else words.upper()})
        records[-1].update(emb=e, emb_model="test-model")
    return [records[i] for i in rng.permutation(len(records))]


SEMANTIC_ARGS = ("--mode", "exact,near,semantic", "--cluster-size", "150", "--device", "cpu", "--seed", "5")


def test_semantic_passes_equal_one_process(tmp_path):
    from rsyn.stages.dedup import DedupOptions, parse_modes

    paths = write_corpus(semantic_corpus(), tmp_path, files=5)
    one_out, one_rejects = one_process(paths, tmp_path, *SEMANTIC_ARGS)
    reasons = [orjson.loads(line)["reason"] for line in one_rejects]
    assert {"exact_duplicate", "near_duplicate", "perceptual_duplicate", "semantic_duplicate"} <= set(reasons)
    options = DedupOptions(modes=parse_modes("exact,near,semantic"), cluster_size=150)
    work = tmp_path / "work"
    out, rejects = passes(paths, work, 4, 3, options, seed=5)
    assert_split_equals_one(one_out, out)
    assert_split_equals_one(one_rejects, rejects)
    assert len(list((work / "semantic" / "pairs").glob("part-*"))) == 3


def test_semantic_scores_do_not_depend_on_the_thread_count(tmp_path):
    """dup_sim and similarity are computed in float64 per pair and k-means runs on one faiss thread.

    Large clusters (3000 records) make BLAS split the float32 products over both threads; before, one
    record's dup_sim differed in the 4th decimal on this corpus (0.4884 vs 0.4883)."""
    paths = write_corpus(semantic_corpus(n=6000, d=512, seed=3), tmp_path, files=2)
    outputs = []
    for threads in ("1", "2"):
        env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        proc = rsyn(
            "dedup",
            *paths,
            "--mode",
            "semantic",
            "--cluster-size",
            "3000",
            "--device",
            "cpu",
            "--seed",
            "5",
            "--rejects",
            tmp_path / f"r{threads}.jsonl",
            env=env,
            check=True,
        )
        outputs.append((proc.stdout, (tmp_path / f"r{threads}.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert all("dup_sim" in r["scores"] for r in decode_stream(outputs[0][0]))


# --------------------------------------------------------------------------- the command lines


def test_pass_command_lines_done_markers_and_reruns(tmp_path, monkeypatch):
    from conftest import rsyn_here

    monkeypatch.chdir(tmp_path)
    paths = write_corpus(
        make_corpus(3000, seed=4, image_dir=tmp_path / "img"), tmp_path, files=3, image_dir=tmp_path / "img"
    )
    one_out, one_rejects = one_process(paths, tmp_path)
    work = tmp_path / "work"

    def ok(*args):
        return rsyn_here(*args, "--quiet", check=True)

    for k in range(2):
        ok("dedup-scan", *paths, "--work", work, "--shard", f"{k}/2", "--rejects", tmp_path / f"scan-{k}.jsonl.zst")
    scanned = {p.name: p.read_bytes() for p in (work / "scan" / "part-00000-of-00002").iterdir()}
    assert "DONE" in scanned and "order.npy" in scanned
    # a pass whose inputs are not all done refuses, naming what to run
    (work / "scan" / "part-00001-of-00002" / "DONE").unlink()
    proc = rsyn_here("dedup-exact", "--work", work, "--part", "0/2")
    assert proc.returncode == 2 and "part(s) 1 of 2 not done; run `rsyn dedup-scan" in proc.stderr.decode()
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    # a rerun (here of a part killed before its DONE) starts clean and writes the same bytes
    (work / "scan" / "part-00000-of-00002" / ".stale.rsyn-tmp-1").write_bytes(b"litter")
    for k in range(2):
        ok("dedup-scan", *paths, "--work", work, "--shard", f"{k}/2")
    assert {p.name: p.read_bytes() for p in (work / "scan" / "part-00000-of-00002").iterdir()} == scanned
    for mode in ("exact", "near"):
        for m in range(2):
            ok(f"dedup-{mode}", "--work", work, "--part", f"{m}/2")
        ok("dedup-settle", "--work", work, "--mode", mode)
    outs, rejects = [], []
    for k in range(2):
        out, rej = tmp_path / f"out-{k}.jsonl.zst", tmp_path / f"rej-{k}.jsonl.zst"
        ok("dedup-filter", "--work", work, "--shard", f"{k}/2", "-o", out, "--rejects", rej)
        outs.append(_lines(out))
        rejects.append(_lines(tmp_path / f"scan-{k}.jsonl.zst") + _lines(rej))
    assert_split_equals_one(one_out, outs)
    assert_split_equals_one(one_rejects, rejects)
    # semantic passes on a scan without embeddings, and a filter for a shard count that was not scanned
    proc = rsyn_here("dedup-train", "--work", work)
    assert proc.returncode == 2 and "without semantic" in proc.stderr.decode()
    proc = rsyn_here("dedup-filter", "--work", work, "--shard", "0/3", "-o", tmp_path / "x.jsonl.zst")
    assert proc.returncode == 2 and "the scan has 2 shard(s)" in proc.stderr.decode()
    proc = rsyn_here("dedup-scan", *paths, "--work", work, "-o", tmp_path / "x.jsonl.zst")
    assert proc.returncode == 2 and "-o there" in proc.stderr.decode()
    # a rescan (other options) makes every later part stale: the passes refuse to mix them
    for k in range(2):
        ok("dedup-scan", *paths, "--work", work, "--shard", f"{k}/2", "--near-threshold", "0.7")
    proc = rsyn_here("dedup-filter", "--work", work, "--shard", "0/2", "-o", tmp_path / "x.jsonl.zst")
    assert proc.returncode == 2 and "computed from an earlier scan" in proc.stderr.decode()
    assert not (tmp_path / "x.jsonl.zst").exists()


def test_whole_dedup_refuses_a_shard_and_names_the_passes(tmp_path):
    proc = rsyn("dedup", "--shard", "0/2", input=jsonl([{"id": "a", "kind": "text", "text": "x"}]))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("rsyn: error: `rsyn dedup` compares every record") and "dedup-scan --shard K/N" in err
    assert proc.stdout == b""
    # an input listed twice would give two records one place in the input order
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"id": "a", "kind": "text", "text": "x"}]))
    proc = rsyn("dedup", tmp_path / "a.jsonl", tmp_path / "*.jsonl", "-o", tmp_path / "out.jsonl.zst")
    assert proc.returncode == 2 and "input listed twice" in proc.stderr.decode()
    assert not (tmp_path / "out.jsonl.zst").exists()
