import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# the models in tests are tiny: one thread each is faster than two fighting over 2 shared cores
os.environ.setdefault("OMP_NUM_THREADS", "1")  # img2dataset imports albumentations, which phones home


ROOT = Path(__file__).resolve().parents[1]  # the checkout under test
BIN = Path(sys.executable).parent  # the environment's scripts: rsyn, and what a Makefile calls


def subprocess_env(**extra: str) -> dict:
    """The environment of every process a test starts: this checkout's rsyn first, offline, one thread each."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": pythonpath,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def rsyn(*args, input=None, check: bool = False, cwd=ROOT, env=None, timeout=600, text: bool = False):
    """Run the real `rsyn` command line in a subprocess (`env`: variables added to subprocess_env()).

    stdin/stdout/stderr are bytes, or str with text=True. check=True fails the test on a non-zero exit.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "rsyn", *map(str, args)],
        input=input,
        capture_output=True,
        cwd=cwd,
        env=subprocess_env(**(env or {})),
        timeout=timeout,
        text=text,
    )
    if check:
        _check(args, proc)
    return proc


def rsyn_here(*args, input: bytes | None = None, check: bool = False, text: bool = False):
    """The real `rsyn` command line run inside the test process: no interpreter start-up per call, and the
    models a test loaded stay loaded. Returns what rsyn() returns.

    A traceback (any exception other than the CLI's own exit) fails the test.
    """
    from typer.testing import CliRunner

    from rsyn.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    out, err = result.stdout_bytes, result.stderr_bytes
    if text:
        out, err = out.decode(), err.decode()
    proc = subprocess.CompletedProcess(args, result.exit_code, out, err)
    if check:
        _check(args, proc)
    return proc


def _check(args, proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise AssertionError(f"rsyn {' '.join(map(str, args))} exited {proc.returncode}:\n{err[-4000:]}")


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


# --------------------------------------------------------------------------- the example pipeline, run once

# examples/Makefile on a small generated corpus with tiny local models (its own defaults are larger)
EXAMPLE_MAKE_VARS = ["DOCS=15", "MMC4=3", "CLUSTERS=4", "PER_CLUSTER=3", "DEVICE=cpu"]


def example_make(work: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`make -C examples W=WORK` with the test corpus' variables and this checkout's rsyn (stdout/stderr: str)."""
    cmd = ["make", "-C", str(ROOT / "examples"), f"W={work}", *EXAMPLE_MAKE_VARS]
    cmd += [f"PYTHON={sys.executable}", f"RSYN={BIN / 'rsyn'}", *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def example_work(tmp_path_factory) -> Path:
    """The example Makefile's whole pipeline (corpus, models, every stage, the release and the report), run once
    per session: tests/test_pipeline.py checks it, tests/test_runner.py compares every engine's release with it.
    Tests may add files beside it or rebuild it, but must leave the same bytes in place."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    work = tmp_path_factory.mktemp("example") / "work"
    proc = example_make(work, "-j2")  # what can run side by side (the corpus and the models) does
    assert proc.returncode == 0, f"example Makefile failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return work


def pytest_collection_modifyitems(config, items):
    """Every test that needs a whole run of the example pipeline is `slow` (about 2 of the suite's minutes):
    `./bin/test -m "not slow"` is the quick loop while working; `./bin/test` and CI run everything."""
    for item in items:
        if "example_work" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
