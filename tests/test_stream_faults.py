"""Damaged and empty streams: a flipped bit loses one zstd frame, not the file; empty input still writes -o."""

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path
from unittest import mock

import orjson
import pytest
import zstandard
from conftest import decode_stream, jsonl, read_stream_file, rsyn, rsyn_here
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsyn import stream
from rsyn.stream import FRAME_BYTES, LINES_MAGIC, ZSTD_MAGIC, RecordWriter, iter_line_blocks

# ~250 bytes a record: about 4,000 records a frame, 4 frames
RECORDS = [
    {"id": f"{i:06d}", "kind": "text", "text": f"sentence {i} " + "lorem ipsum dolor " * (i % 23)}
    for i in range(14_000)
]
LINES = [orjson.dumps(r) for r in RECORDS]


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, decoded content) of each data frame of `data` (rsyn's line-count frames left out)."""
    out, dctx, at = [], zstandard.ZstdDecompressor(), 0
    while at < len(data):
        obj = dctx.decompressobj()
        content = obj.decompress(data[at:])
        assert obj.eof
        if data[at : at + 4] != LINES_MAGIC:
            out.append((at, content))
        at = len(data) - len(obj.unused_data)
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "records.jsonl.zst"
    proc = rsyn("cat", "-o", path, "--quiet", input=jsonl(RECORDS))
    assert proc.returncode == 0, proc.stderr
    return path.read_bytes()


def test_rsyn_writes_bounded_frames_on_record_boundaries(written):
    frames = [content for _, content in frames_of(written)]
    assert len(frames) >= 3
    longest = max(map(len, LINES)) + 1
    assert all(FRAME_BYTES <= len(f) < FRAME_BYTES + longest for f in frames[:-1])
    assert all(f.endswith(b"\n") for f in frames)
    assert b"".join(frames) == jsonl(RECORDS)
    # any zstd reader reads it whole, skipping the line-count frames
    assert decode_stream(written) == RECORDS
    if shutil.which("zstd"):
        assert subprocess.run(["zstd", "-dc"], input=written, capture_output=True).stdout == jsonl(RECORDS)


def _frames_and_ends(data: bytes) -> tuple[list[int], list[bytes], list[int]]:
    """Offsets, contents and ends (where the next data frame starts) of the data frames."""
    found = frames_of(data)
    starts = [at for at, _ in found]
    return starts, [content for _, content in found], starts[1:] + [len(data)]


def test_one_flipped_byte_loses_one_frame_in_skip_mode(tmp_path, written):
    starts, frames, ends = _frames_and_ends(written)
    victim = 1
    data = bytearray(written)
    data[starts[victim] + 5000] ^= 0x01
    path = tmp_path / "flipped.jsonl.zst"
    path.write_bytes(bytes(data))
    rejects, stats = tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    proc = rsyn("cat", path, "--on-error", "skip", "--rejects", rejects, "--stats", stats)
    assert proc.returncode == 0, proc.stderr
    lost = frames[victim].count(b"\n")
    first_lost = sum(f.count(b"\n") for f in frames[:victim])
    assert decode_stream(proc.stdout) == RECORDS[:first_lost] + RECORDS[first_lost + lost :]
    summary = orjson.loads(stats.read_bytes())
    assert summary["errors"] == {"corrupt_stream": 1} and summary["in"] == len(RECORDS) - lost
    (entry,) = read_stream_file(rejects)
    assert entry["reason"] == "corrupt_stream" and entry["where"] == f"{path}:{first_lost + 1}"
    assert entry["lost_lines"] == lost and entry["lost_bytes"] < ends[victim] - starts[victim]
    assert f"corrupt zstd frame at byte {starts[victim]}" in entry["message"]
    assert f"{lost} lines lost" in entry["message"] and "raw" not in entry
    assert "may be off" not in entry["message"]  # the line count after the frame keeps line numbers exact
    # the place of the next error is still the exact line
    data[ends[victim] + 200] ^= 0x01
    path.write_bytes(bytes(data))
    proc = rsyn("cat", path, "--on-error", "skip", "--rejects", rejects, "--quiet")
    second = read_stream_file(rejects)[1]
    assert second["where"] == f"{path}:{first_lost + lost + 1}"
    assert second["lost_lines"] == len(frames[victim + 1].splitlines())

    # fail mode: one line naming the file, the line and the byte; exit 2; no traceback
    proc = rsyn("cat", path, "-o", tmp_path / "out.jsonl.zst")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"rsyn: error: {path}:{first_lost + 1}: corrupt zstd frame at byte {starts[victim]}")
    assert not (tmp_path / "out.jsonl.zst").exists()


@functools.cache
def _written_here() -> bytes:
    """The same file as `written`, made in this process (hypothesis prints its arguments: keep them small)."""
    path = Path(tempfile.mkdtemp()) / "records.jsonl.zst"
    writer = RecordWriter(str(path))
    writer.write_many(RECORDS)
    writer.close()
    return path.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(4, 10**9), bit=st.integers(0, 7), read_size=st.sampled_from([1 << 20, 5000]))
def test_any_flipped_bit_loses_at_most_the_frame_it_hits(tmp_path, position, bit, read_size):
    """Whatever bit flips (after the first magic, which decides that the file is zstd at all), what comes
    out is the input minus the frame hit, never a damaged or invented line, however the reads cut the frames."""
    written = _written_here()
    data = bytearray(written)
    position = 4 + position % (len(data) - 4)
    data[position] ^= 1 << bit
    path = tmp_path / "flipped.zst"
    path.write_bytes(bytes(data))
    losses = []
    with mock.patch.object(stream, "CHUNK", read_size):
        kept = [line for _, lines in iter_line_blocks(str(path), on_corrupt=losses.append) for line in lines if line]
    starts, frames, ends = _frames_and_ends(written)
    hit = next((i for i in range(len(frames)) if starts[i] <= position < ends[i]), None)
    hit_data = hit is not None and position < starts[hit] + len(zstd_frame(frames[hit]))
    if not losses:  # a flip the format cannot see (e.g. an unused header bit): nothing may change
        assert kept == LINES
        return
    assert len(losses) == 1
    if not hit_data:  # the line count after a frame was hit: no line is lost
        assert kept == LINES
        return
    assert kept == [line for i, f in enumerate(frames) if i != hit for line in f.splitlines()]
    assert losses[0].lost_lines == frames[hit].count(b"\n")


def zstd_frame(content: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(content)


def test_truncated_multi_frame_file_keeps_the_complete_frames(tmp_path, written):
    starts, frames, _ = _frames_and_ends(written)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(written[: starts[2] + 100])
    proc = rsyn_here("cat", path, "--on-error", "skip", "--quiet")
    got = decode_stream(proc.stdout)
    n = frames[0].count(b"\n") + frames[1].count(b"\n")
    assert got == RECORDS[:n]
    proc = rsyn_here("cat", path)
    assert proc.returncode == 2 and "truncated" in proc.stderr.decode()


def test_writer_output_is_byte_identical_run_to_run(tmp_path):
    for name in ("a", "b"):
        w = RecordWriter(str(tmp_path / f"{name}.zst"))
        w.write_many(RECORDS[:5000])
        for r in RECORDS[5000:6000]:
            w.write(r)
        w.close()
    assert (tmp_path / "a.zst").read_bytes() == (tmp_path / "b.zst").read_bytes()
    assert len(frames_of((tmp_path / "a.zst").read_bytes())) == 2


# --------------------------------------------------------------------------- empty input


def test_empty_input_still_writes_the_output(tmp_path):
    for name in ("empty.jsonl.zst", "empty.jsonl", "empty.jsonl.gz"):
        out = tmp_path / name
        proc = rsyn_here("cat", "-o", out, input=b"")
        assert proc.returncode == 0, proc.stderr
        assert out.exists() and read_stream_file(out) == []
    assert (tmp_path / "empty.jsonl.zst").read_bytes()[:4] == ZSTD_MAGIC  # a valid (empty) zstd file
    if shutil.which("zstd"):
        assert subprocess.run(["zstd", "-dc", tmp_path / "empty.jsonl.zst"], capture_output=True).returncode == 0
    # an output from an earlier run is replaced, not left standing
    out = tmp_path / "stale.jsonl.zst"
    rsyn_here("cat", "-o", out, input=jsonl(RECORDS[:3]), check=True)
    rsyn_here("cat", "-o", out, input=b"\n", check=True)
    assert read_stream_file(out) == []


def test_empty_input_embed_writes_the_output(tmp_path):
    from rsyn.testing import build_tiny_clip

    model = build_tiny_clip(tmp_path / "tiny-clip", seed=0)
    empty = tmp_path / "none.jsonl"
    empty.write_bytes(b"")
    out = tmp_path / "embedded.jsonl.zst"
    proc = rsyn_here("embed", empty, "--model", model, "--device", "cpu", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and read_stream_file(out) == []
