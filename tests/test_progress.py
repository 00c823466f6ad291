"""Progress: counts that follow the work (per finished batch), a total, rate and ETA; a live line only in the last
stage of a pipe that writes to a terminal, plain lines every --log-every seconds elsewhere."""

import os
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import jsonl, rsyn_here

from rsyn.progress import Snapshot, describe

TEXTS = [{"id": f"t{i}", "kind": "text", "text": f"Sentence {i} about a red barn and two horses."} for i in range(100)]
PROGRESS_LINE = re.compile(r"^rsyn cat: [\d,]+(/~?[\d,]+)? records")


def snap(**kw):
    base = {
        "done": 0,
        "n_out": 0,
        "dropped": 0,
        "errors": 0,
        "bytes_read": 0,
        "in_at_bytes_read": 0,
        "total_bytes": None,
        "n_in": 0,
        "input_complete": False,
        "elapsed": 10.0,
    }
    return Snapshot(**{**base, **kw})


def test_progress_line_has_total_rate_and_eta():
    # half the compressed bytes held 500 records: about 1,000 in all
    line = describe(
        snap(done=250, n_out=240, dropped=10, bytes_read=50, in_at_bytes_read=500, total_bytes=100, n_in=600), rate=25.0
    )
    assert line == "250/~1,000 records (25%), 25.0/s, ETA 30s, 240 out, 10 dropped, 10s"
    exact = describe(snap(done=900, n_out=900, n_in=1000, input_complete=True, elapsed=75), rate=10.0)
    assert exact == "900/1,000 records (90%), 10.0/s, ETA 10s, 900 out, 1m15s"
    assert describe(snap(done=7, n_out=7, n_in=9), rate=None) == "7 records, 7 out, 10s"  # stdin: no total


def test_embed_reports_progress_per_finished_batch(tmp_path, monkeypatch):
    from rsyn.command import Run
    from rsyn.testing import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip", seed=0)
    calls = []
    advance = Run.advance
    monkeypatch.setattr(Run, "advance", lambda self, n: (calls.append((n, self.n_out)), advance(self, n)))
    rsyn_here(
        "embed", "--model", clip, "--batch-size", "8", "-o", tmp_path / "out.jsonl.zst", input=jsonl(TEXTS), check=True
    )
    # one call per chunk of 4 batches of 8, each after the chunk's records were written
    assert [n for n, _ in calls] == [32, 32, 32, 4]
    assert [out for _, out in calls] == [32, 64, 96, 100]


def _cat_until_progress(args, stdout, stderr_fd, read_fd):
    """`rsyn cat` with stdin held open until its stderr (read from read_fd) shows a progress line, then closed:
    the run lasts as long as the check needs, however slow the machine. Returns (exit status, stderr text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsyn", "cat", *args], stdin=subprocess.PIPE, stdout=stdout, stderr=stderr_fd, env=env
    )
    if stderr_fd != subprocess.PIPE:
        os.close(stderr_fd)
    proc.stdin.write(jsonl(TEXTS[:50]))
    proc.stdin.flush()
    got, deadline = b"", time.monotonic() + 120
    while b"records" not in got and time.monotonic() < deadline:
        if select.select([read_fd], [], [], 1.0)[0]:
            chunk = _read(read_fd)
            if not chunk:
                break
            got += chunk
    proc.stdin.write(jsonl(TEXTS[50:]))
    proc.stdin.close()
    while True:
        chunk = _read(read_fd)
        if not chunk:
            break
        got += chunk
    return proc.wait(60), got.decode(errors="replace")


def _read(fd):
    try:
        return os.read(fd, 65536)
    except OSError:  # a pseudo-terminal whose other end closed
        return b""


def test_plain_log_lines_when_stderr_is_not_a_terminal(tmp_path):
    read_fd, write_fd = os.pipe()
    code, err = _cat_until_progress(["--log-every", "0.2", "-o", tmp_path / "out.jsonl.zst"], None, write_fd, read_fd)
    os.close(read_fd)
    assert code == 0
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rsyn cat: 100 in, 100 out")
    assert [line for line in lines[:-1] if PROGRESS_LINE.match(line)] and "\x1b" not in err
    quiet = rsyn_here("cat", "--log-every", "0", "-o", tmp_path / "out2.jsonl.zst", input=jsonl(TEXTS), check=True)
    assert not [line for line in quiet.stderr.decode().splitlines() if PROGRESS_LINE.match(line)]


def _on_a_terminal(stdout):
    """What the pseudo-terminal on a `rsyn cat`'s stderr shows; stdout as given."""
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    code, got = _cat_until_progress(["--log-every", "0.2"], stdout, follower, leader)
    os.close(leader)
    assert code == 0
    return got


def test_only_the_last_stage_of_a_pipe_draws_a_live_line(tmp_path):
    with open(tmp_path / "out.jsonl", "wb") as out:  # stdout a file: this is the last stage
        live = _on_a_terminal(out)
    assert "\x1b[" in live and "records" in live  # redrawn in place
    read_fd, write_fd = os.pipe()  # stdout a pipe: a stage in the middle
    piped = _on_a_terminal(write_fd)
    os.close(write_fd)
    os.close(read_fd)
    assert "\x1b[" not in piped
    assert [line for line in piped.splitlines() if PROGRESS_LINE.match(line.strip())]


def test_extract_summary_splits_images_from_sentences(tmp_path):
    data = os.path.join(os.path.dirname(__file__), "data", "mmc4_shard151_107docs.jsonl.zst")
    proc = rsyn_here("extract", data, "--filters", "words", "-o", tmp_path / "out.jsonl.zst", check=True)
    summary = proc.stderr.decode().strip().splitlines()[-1]
    assert re.match(
        r"rsyn extract: (\d+) in \((\d+) images, (\d+) sentences\), (\d+) out \((\d+) images, "
        r"(\d+) sentences\)",
        summary,
    ), summary
