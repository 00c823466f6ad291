"""examples/Makefile re-runs exactly the steps downstream of a changed input (checked with `make -n` on a built-looking
work folder: no step runs), from a copy of examples/ elsewhere. The real rebuild is in test_pipeline.py."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# step -> (its target under W, the steps whose outputs it reads): the pipeline as the Makefile should know it
STEPS = {
    "corpus": ("corpus/.done", []),
    "models": ("models/.done", []),
    "stats-dir": ("stats/.dir", []),
    "extract": ("extracted.jsonl.zst", ["corpus", "models", "stats-dir"]),
    "dedup": ("dedup.jsonl.zst", ["extract"]),
    "embed": ("embedded.jsonl.zst", ["dedup"]),
    "semdedup": ("semdedup.jsonl.zst", ["embed"]),
    "split-text": ("sentences.jsonl.zst", ["semdedup"]),
    "split-image": ("images.jsonl.zst", ["semdedup"]),
    "index": ("index/meta.json", ["split-text"]),
    "retrieve": ("retrieved.jsonl.zst", ["split-image", "index"]),
    "caption": ("captioned.jsonl.zst", ["retrieve", "index", "tags"]),
    "embed-syn": ("syn_embedded.jsonl.zst", ["caption"]),
    "balance": ("balanced.jsonl.zst", ["embed-syn"]),
    "pack": ("packed/_SUCCESS", ["balance"]),
    "report": ("report.html", ["pack"]),
}
# inputs that are not steps: the files of examples/ and bin/
SOURCES = {"make_corpus.py": "make_corpus.py", "tags.txt": "tags", "make-tiny-models": "models-script"}
STEPS["corpus"] = ("corpus/.done", ["make_corpus.py"])
STEPS["models"] = ("models/.done", ["models-script"])


def downstream(changed: str) -> set[str]:
    """The steps that read `changed` (a step or a source), directly or not."""
    found: set[str] = set()
    frontier = {changed}
    while frontier:
        frontier = {step for step, (_, deps) in STEPS.items() if frontier & set(deps)} - found
        found |= frontier
    return found


def steps_in(dry_run: str) -> set[str]:
    """The steps whose commands `make -n` printed."""
    steps = set(re.findall(r"--stats \S+/stats/([\w-]+)\.json", dry_run))
    steps |= {
        name
        for name, marker in (
            ("corpus", "make_corpus.py "),
            ("models", "make-tiny-models "),
            ("stats-dir", "touch "),
            ("report", " report "),
        )
        if marker in dry_run and (name != "stats-dir" or "stats/.dir" in dry_run)
    }
    return steps


@pytest.fixture
def built(tmp_path):
    """A copy of examples/ outside the repository and a work folder whose every target is newer than its inputs."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    examples = tmp_path / "examples"
    shutil.copytree(ROOT / "examples", examples, ignore=shutil.ignore_patterns("work"))
    work = tmp_path / "work"
    base = max(p.stat().st_mtime for p in [*examples.iterdir(), ROOT / "bin" / "make-tiny-models"]) + 10
    for i, (target, _) in enumerate(STEPS.values()):  # STEPS is in build order
        path = work / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (base + i, base + i))
    return examples, work, base + 100


def make(examples, work, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the rsyn whose bin/ a copied examples/ falls back to
    return subprocess.run(
        ["make", "-C", str(examples), f"W={work}", "PYTHON=python", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_nothing_runs_when_everything_is_up_to_date(built):
    examples, work, _ = built
    assert make(examples, work, "-q").returncode == 0


@pytest.mark.parametrize(
    "changed",
    ["make_corpus.py", "tags.txt", "make-tiny-models", *[s for s in STEPS if s not in ("corpus", "models", "report")]],
)
def test_a_changed_input_reruns_exactly_its_downstream_steps(built, changed, tmp_path):
    examples, work, later = built
    if changed == "make-tiny-models":  # a copy of bin/, named by BIN, so the repository's file stays untouched
        bin_copy = tmp_path / "bin"
        shutil.copytree(ROOT / "bin", bin_copy)
        for p in bin_copy.iterdir():
            os.utime(p, (later - 200, later - 200))
        os.utime(bin_copy / "make-tiny-models", (later, later))
        extra = [f"BIN={bin_copy}"]
        expected = downstream("models-script")
    else:
        path = examples / changed if changed in SOURCES else work / STEPS[changed][0]
        os.utime(path, (later, later))
        extra = []
        expected = downstream(SOURCES.get(changed, changed))
    proc = make(examples, work, "-n", *extra)
    assert proc.returncode == 0, proc.stderr
    assert steps_in(proc.stdout) == expected, proc.stdout
    if "pack" in expected:  # a rebuilt pack replaces its earlier output
        assert re.search(r"rsyn pack .*--overwrite", proc.stdout)


def test_a_copied_examples_folder_finds_rsyn_bin(built):
    examples, work, _ = built
    proc = make(examples, work, "-n", "-B", "all")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if "make-tiny-models" in line)
    script = Path(line.split()[1])
    assert script.resolve() == (ROOT / "bin" / "make-tiny-models").resolve()
    assert f"{examples}/make_corpus.py" in proc.stdout
