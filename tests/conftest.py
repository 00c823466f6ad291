import gzip
import os
import subprocess
import sys

import orjson
import pytest
import zstandard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# the models in tests are tiny: one thread each is faster than two fighting over 2 shared cores
os.environ.setdefault("OMP_NUM_THREADS", "1")  # img2dataset imports albumentations, which phones home


def rsyn(*args, input: bytes | None = None, check: bool = False, cwd=None, env=None, timeout=600):
    """Run the real `rsyn` command line in a subprocess (stdin/stdout as bytes)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "rsyn", *map(str, args)],
        input=input,
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rsyn {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr.decode()}")
    return proc


def rsyn_here(*args, input: bytes | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """The real `rsyn` command line run inside the test process: no interpreter start-up per call.

    A traceback (any exception other than the CLI's own exit) fails the test.
    """
    from typer.testing import CliRunner

    from rsyn.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    proc = subprocess.CompletedProcess(args, result.exit_code, result.stdout_bytes, result.stderr_bytes)
    if check and proc.returncode != 0:
        raise AssertionError(f"rsyn {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr.decode()}")
    return proc


def jsonl(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def compress(data: bytes, kind: str) -> bytes:
    if kind == "zstd":
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    if kind == "gzip":
        return gzip.compress(data)
    return data


def decode_stream(data: bytes) -> list[dict]:
    """Records of an rsyn output, whatever its compression."""
    if data[:4] == b"\x28\xb5\x2f\xfd":  # rsyn writes many frames: read them all
        data = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    elif data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def read_stream_file(path) -> list[dict]:
    with open(path, "rb") as fh:
        return decode_stream(fh.read())


@pytest.fixture
def run_rsyn():
    return rsyn
