"""Concurrent `rsyn retrieve` processes share one copy of the index through the page cache (memory-mapped lists).

Memory is measured as PSS (proportional set size, /proc/PID/smaps_rollup): a page that k processes map
counts 1/k in each, so the PSS of processes running together adds up to the physical memory they use
together, shared pages once. Plain RSS would count the shared index once per process and could not show
the sharing. The benchmark at a larger size is benchmarks/retrieve_shared.py.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from test_index_retrieve import MODEL, image_records

FILLER = 16384  # non-image records after the images: retrieve searches a batch once 4 x 4096 records wait
PADDING = b" " * 1023 + b"\n"  # blank lines (not records) that push the filler through the 1 MiB input reads


def build_index(out: Path, n: int, dim: int, clusters: int, seed: int = 0) -> None:
    """An ivf_flat index of `n` random unit vectors through rsyn index's passes (a part written from arrays)."""
    from rsyn.stages.index import Budget, PartWriter, add_parts, merge_index, open_parts, train_index

    rng = np.random.default_rng(seed)
    work = out.parent / f"{out.name}-passes"
    for name in ("collect", "train", "add"):
        (work / name).mkdir(parents=True)
    out.mkdir()
    writer = PartWriter(work / "collect")
    for start in range(0, n, 50_000):
        x = rng.normal(size=(min(50_000, n - start), dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        writer.add(
            x, np.arange(start, start + len(x)), [(f"s{start + i}", f"text {start + i}", None) for i in range(len(x))]
        )
    writer.finish(model=MODEL, inputs=["arrays"], shard=None, ignored={}, errors={})
    parts = open_parts([work / "collect"])
    train_index(
        parts,
        work / "train",
        clusters=clusters,
        budget=Budget(1 << 40, "test"),
        index_type="flat",
        pq_bytes=None,
        points_per_cluster=16,
        niter=4,
        seed=seed,
        device="cpu",
        note=lambda m: None,
    )
    add_parts(parts, range(1), work / "train", work / "add", device="cpu")
    merge_index(parts, work / "train", [work / "add"], out, on_disk=False, note=lambda m: None)


def smaps(pid: int, name: str) -> tuple[int, int]:
    """(PSS of the whole process, RSS of its mapping of `name`), in KiB."""
    total = 0
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            total = int(line.split()[1])
    mapped, inside = 0, False
    for line in open(f"/proc/{pid}/smaps"):
        if "-" in line.split()[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(name)
        elif inside and line.startswith("Rss:"):
            mapped += int(line.split()[1])
    return total, mapped


def retrieve_together(index: Path, stream: bytes, count: int, *, env=None) -> tuple[int, list[bytes]]:
    """Start `count` retrieves on one index; once every one has searched (its mapping of ivf.faiss is
    resident), sum their PSS; then let them finish. (summed PSS KiB, outputs)."""
    lists_kib = (index / "ivf.faiss").stat().st_size // 1024
    # outputs go to files: a full stdout pipe would block a process before it is measured
    sinks = [tempfile.TemporaryFile() for _ in range(count)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rsyn",
                "retrieve",
                "--index",
                str(index),
                "--nprobe",
                "1000",
                "-q",
                "--device",
                "cpu",
            ],
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        for sink in sinks
    ]
    try:
        for proc in procs:
            proc.stdin.write(stream)  # the batch is searched; the process then waits for more input
            proc.stdin.flush()
        deadline = time.monotonic() + 120
        while True:
            assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.poll() is not None]
            samples = [smaps(p.pid, "ivf.faiss") for p in procs]
            mapped_or_loaded = all(
                m >= 0.9 * lists_kib or _anonymous(p.pid) >= lists_kib for (_, m), p in zip(samples, procs)
            )
            if mapped_or_loaded and all(_waiting(p.pid) for p in procs):
                break
            assert time.monotonic() < deadline, "retrieve did not search its first batch in time"
            time.sleep(0.1)
        total = sum(pss for pss, _ in samples)
    finally:
        outputs = []
        for proc, sink in zip(procs, sinks):
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
            sink.seek(0)
            outputs.append(sink.read())
            sink.close()
    return total, outputs


def _anonymous(pid: int) -> int:
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    return 0


def _waiting(pid: int) -> bool:
    """Blocked reading stdin (sleeping), not computing."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S"


def query_stream(dim: int, count: int = 64, seed: int = 1) -> bytes:
    queries = np.random.default_rng(seed).normal(size=(count, dim))
    records = image_records(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    return b"".join(orjson.dumps(r) + b"\n" for r in records) + b'{"kind":"other"}\n' * FILLER + PADDING * 3072


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc smaps_rollup")
def test_two_concurrent_retrieves_hold_one_copy_of_the_index(tmp_path):
    """Small and fast: a 40 MiB index next to ~55 MiB that every Python retrieve process holds whatever the
    index (interpreter, libraries, buffers). That fixed cost is measured on a tiny index and taken out, so
    the ratio is the index's: about 1.0x when the lists are shared, 2.0x when each process loads its own."""
    build_index(tmp_path / "index", n=40_000, dim=256, clusters=32)
    build_index(tmp_path / "tiny", n=1_000, dim=256, clusters=4)
    stream = query_stream(256)
    fixed, _ = retrieve_together(tmp_path / "tiny", stream, 1)
    one, (alone,) = retrieve_together(tmp_path / "index", stream, 1)
    two, outputs = retrieve_together(tmp_path / "index", stream, 2)
    assert outputs[0] == outputs[1] == alone and len(alone) > 0  # identical outputs
    index_one, index_two = one - fixed, two - 2 * fixed
    lists_kib = (tmp_path / "index" / "ivf.faiss").stat().st_size // 1024
    print(
        f"ivf.faiss {lists_kib / 1024:.0f} MiB; PSS: fixed cost of a retrieve {fixed / 1024:.0f} MiB, one "
        f"{one / 1024:.0f} MiB, two together {two / 1024:.0f} MiB; the index's share {index_two / index_one:.2f}x"
    )
    assert index_one > 0.8 * lists_kib  # the search touched the whole index (every list probed)
    assert index_two < 1.3 * index_one
