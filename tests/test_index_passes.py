"""rsyn index as passes (collect | train | add | merge) against the one-process rsyn index; a killed build.

The passes run in-process through the real command line (rsyn_here) to keep the test fast; the
one-process build, the kill and the concurrent retrieves run as real processes.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from conftest import decode_stream, jsonl, rsyn, rsyn_here
from test_index_retrieve import DIM, clustered, image_records, sentence_records, unit

INDEX_FILES = ["centroids.npy", "ivf.faiss", "meta.json", "sentences.sqlite"]
# the index types whose lists hold codes re-ranked from vectors.npy, and the options that make them
COMPRESSED = {"pq": ["--max-memory", "100K"], "sq8": ["--index-type", "sq8"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3000 sentences in one file with stray non-text records and a bad line skipped, and the one-process index."""
    tmp = tmp_path_factory.mktemp("passes")
    rng = np.random.default_rng(7)
    vectors, _ = clustered(rng, 3000, clusters=30)
    records = sentence_records(vectors)
    records.insert(100, {"id": "img", "kind": "image", "url": "u"})
    records[2000]["emb"] = "not base64 at all!!"
    (tmp / "s.jsonl").write_bytes(jsonl(records))
    rsyn(
        "index",
        tmp / "s.jsonl",
        "-o",
        tmp / "whole",
        "--clusters",
        "24",
        "--on-error",
        "skip",
        "-q",
        "--device",
        "cpu",
        check=True,
    )
    for kind, options in COMPRESSED.items():
        rsyn(
            "index",
            tmp / "s.jsonl",
            "-o",
            tmp / f"whole_{kind}",
            "--clusters",
            "24",
            "--on-error",
            "skip",
            "-q",
            *options,
            "--device",
            "cpu",
            check=True,
        )
    queries = unit(vectors[rng.integers(0, 3000, 40)] + 0.3 * rng.normal(size=(40, DIM)) / np.sqrt(DIM) * 4)
    return {"tmp": tmp, "input": tmp / "s.jsonl", "queries": queries}


def run_passes(corpus, work, *, shards=4, adds=4, on_disk=False, extra=()):
    """collect --shard K/N for every K, train, add --part K/N for every K, merge: the index directory."""
    common = ["-q", "--device", "cpu", "--on-error", "skip"]
    parts = [work / f"collect-{k}" for k in range(shards)]
    for k, part in enumerate(parts):
        rsyn_here("index", "collect", corpus["input"], "--shard", f"{k}/{shards}", "-o", part, *common, check=True)
        assert (part / "part.json").exists()
    rsyn_here("index", "train", *parts, "-o", work / "train", "--clusters", "24", *extra, *common, check=True)
    added = [work / f"add-{k}" for k in range(adds)]
    for k, out in enumerate(added):
        rsyn_here(
            "index", "add", *parts, "--trained", work / "train", "--part", f"{k}/{adds}", "-o", out, *common, check=True
        )
    merged = [opt for out in added for opt in ("--added", out)]
    rsyn_here(
        "index",
        "merge",
        *parts,
        "--trained",
        work / "train",
        *merged,
        "-o",
        work / "index",
        *(["--on-disk"] if on_disk else []),
        *common,
        check=True,
    )
    return work / "index"


@pytest.mark.parametrize("kind", ["flat", "pq", "sq8"])
def test_four_shards_give_the_one_process_index_byte_for_byte(corpus, tmp_path, kind):
    # record-position shards of one file interleave: rows and inverted lists must come out in input order
    whole = corpus["tmp"] / ("whole" if kind == "flat" else f"whole_{kind}")
    index = run_passes(corpus, tmp_path, extra=COMPRESSED.get(kind, []))
    names = INDEX_FILES + (["vectors.npy"] if kind in COMPRESSED else [])
    assert sorted(p.name for p in index.iterdir()) == sorted(names)
    for name in names:
        assert (index / name).read_bytes() == (whole / name).read_bytes(), name
    meta = orjson.loads((index / "meta.json").read_bytes())
    assert meta["count"] == 2999 and meta["ignored"] == {"not_text": 1}
    assert meta["index_type"] == f"ivf_{kind}"
    if kind in COMPRESSED:
        assert meta["layout"]["chosen_by"] == " ".join(COMPRESSED[kind])


def test_on_disk_merge_retrieves_what_the_in_ram_index_retrieves(corpus, tmp_path):
    index = run_passes(corpus, tmp_path, adds=2, on_disk=True)
    assert sorted(p.name for p in index.iterdir()) == sorted(INDEX_FILES + ["lists.ivfdata"])
    meta = orjson.loads((index / "meta.json").read_bytes())
    assert meta["lists"] == "on_disk" and "lists.ivfdata" in meta["files"]
    # the same sentences, under the same rows
    whole = corpus["tmp"] / "whole"
    assert (index / "sentences.sqlite").read_bytes() == (whole / "sentences.sqlite").read_bytes()
    moved = tmp_path / "moved"  # the on-disk lists are found next to ivf.faiss, wherever the directory goes
    os.replace(index, moved)
    images = jsonl(image_records(corpus["queries"]))
    for nprobe in ("1", "8"):
        ram = rsyn(
            "retrieve", "--index", whole, "--nprobe", nprobe, "-q", "--device", "cpu", input=images, check=True
        ).stdout
        disk = rsyn(
            "retrieve", "--index", moved, "--nprobe", nprobe, "-q", "--device", "cpu", input=images, check=True
        ).stdout
        assert disk == ram and len(decode_stream(disk)) == 40


def test_whole_index_refuses_a_shard_and_passes_refuse_mismatched_directories(corpus, tmp_path):
    proc = rsyn_here("index", corpus["input"], "--shard", "0/2", "-o", tmp_path / "x", "--device", "cpu")
    assert proc.returncode == 2
    line = proc.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("rsyn: error: rsyn index builds one index from the whole corpus and takes no --shard")
    for name in ("rsyn index collect --shard K/N", "rsyn index train", "rsyn index add --part K/N", "rsyn index merge"):
        assert name in line
    assert not (tmp_path / "x").exists()

    common = ["-q", "--device", "cpu", "--on-error", "skip"]
    a, b = tmp_path / "a", tmp_path / "b"
    rsyn_here("index", "collect", corpus["input"], "--shard", "0/2", "-o", a, *common, check=True)
    rsyn_here("index", "collect", corpus["input"], "--shard", "1/2", "-o", b, *common, check=True)
    rsyn_here("index", "train", a, b, "-o", tmp_path / "t", "--clusters", "8", *common, check=True)

    def error(*args):
        proc = rsyn_here("index", *args, *common)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
        return proc.stderr.decode().strip().splitlines()[-1]

    assert "was trained on other collect parts" in error(
        "add", b, a, "--trained", tmp_path / "t", "-o", tmp_path / "add"
    )
    rsyn_here(
        "index", "add", a, b, "--trained", tmp_path / "t", "--part", "0/2", "-o", tmp_path / "add0", *common, check=True
    )
    assert "the add directories cover 1 parts" in error(
        "merge", a, b, "--trained", tmp_path / "t", "--added", tmp_path / "add0", "-o", tmp_path / "idx"
    )
    assert "not a finished index collect part (no part.json" in error("train", a, tmp_path / "t", "-o", tmp_path / "t2")
    assert "--part '2/2': need 0 <= K < N" in error(
        "add", a, b, "--trained", tmp_path / "t", "--part", "2/2", "-o", tmp_path / "add9"
    )
    assert not (tmp_path / "idx").exists() and not (tmp_path / "t2").exists()


def test_dead_runs_temporaries_are_removed_and_others_spared(tmp_path):
    from rsyn.stream import remove_stale_temporaries

    dead = _dead_pid()
    host = socket.gethostname()
    names = {
        f".idx.rsyn-tmp-{host}-{dead}": True,
        f".idx.replaced.rsyn-tmp-{host}-{dead}": False,
        f".idx.rsyn-tmp-{dead}": True,  # the older form without a host name
        f".idx.rsyn-tmp-{host}-{os.getpid()}": False,  # alive: this test
        f".idx.rsyn-tmp-otherhost-{dead}": False,  # another host's: its pid means nothing here
        f".other.rsyn-tmp-{host}-{dead}": False,
    }  # another target's
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "ivf.faiss").write_bytes(b"x" * 10)
    removed = remove_stale_temporaries(tmp_path / "idx")
    assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, gone in names.items() if not gone)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_index_build_leaves_litter_that_the_next_run_removes(tmp_path):
    rng = np.random.default_rng(11)
    vectors, _ = clustered(rng, 60000, clusters=50)
    (tmp_path / "s.jsonl").write_bytes(jsonl(sentence_records(vectors)))
    target = tmp_path / "idx"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rsyn",
            "index",
            str(tmp_path / "s.jsonl"),
            "-o",
            str(target),
            "--clusters",
            "50",
            "-q",
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".idx.rsyn-tmp-*/.passes/collect/vectors.f16")):  # mid-build
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    litter = [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx.")]
    assert litter and not target.exists()  # SIGKILL cannot be cleaned up after: the next run must do it
    (tmp_path / "small.jsonl").write_bytes(jsonl(sentence_records(vectors[:500])))
    rsyn("index", tmp_path / "small.jsonl", "-o", target, "--clusters", "5", "-q", "--device", "cpu", check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "s.jsonl", "small.jsonl"]


def test_parts_collected_from_separate_files_are_concatenated_in_the_order_given(corpus, tmp_path):
    # contiguous parts: rows are offsets and the lists need no re-ordering; equal to rsyn index FILE0 FILE1
    lines = corpus["input"].read_bytes().splitlines(keepends=True)
    files = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    files[0].write_bytes(b"".join(lines[:1800]))
    files[1].write_bytes(b"".join(lines[1800:]))
    common = ["-q", "--device", "cpu", "--on-error", "skip"]
    rsyn_here("index", *files, "-o", tmp_path / "whole", "--clusters", "24", *common, check=True)
    parts = [tmp_path / "p0", tmp_path / "p1"]
    for file, part in zip(files, parts):
        rsyn_here("index", "collect", file, "-o", part, *common, check=True)
    rsyn_here("index", "train", *parts, "-o", tmp_path / "train", "--clusters", "24", *common, check=True)
    rsyn_here(
        "index",
        "add",
        *parts,
        "--trained",
        tmp_path / "train",
        "--part",
        "0/1",
        "-o",
        tmp_path / "add",
        *common,
        check=True,
    )
    rsyn_here(
        "index",
        "merge",
        *parts,
        "--trained",
        tmp_path / "train",
        "--added",
        tmp_path / "add",
        "-o",
        tmp_path / "index",
        *common,
        check=True,
    )
    for name in INDEX_FILES:
        assert (tmp_path / "index" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
