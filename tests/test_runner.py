"""rsyn plan / rsyn run: every engine gives the example Makefile's release, byte for byte; resume, retries, signals.

The corpus, the tiny models and the Makefile's release are built once (conftest.example_work, shared with
tests/test_pipeline.py); the whole run of every engine is started once, side by side, and each test checks one
(whole_runs); the local run is reused by the rerun tests; the kill test then shards one cheap pass of its output.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, ROOT, rsyn, subprocess_env

EXAMPLE = ROOT / "examples" / "pipeline.toml"
PAPER = ROOT / "examples" / "pipeline-paper.toml"
GOLDEN = ROOT / "tests" / "golden" / "slurm-paper"
FAKE_STAGE = ROOT / "tests" / "runner_fake_stage.py"


def example_settings(work: Path, out: Path) -> list[str]:
    """The example pipeline on the test corpus, with the options tests/test_pipeline.py gives the Makefile."""
    sets = [
        f"vars.work={work}",
        f"pipeline.output={out}",
        "pipeline.device=cpu",
        "thresholds.clusters=4",
        "thresholds.per_cluster=3",
    ]
    return [w for s in sets for w in ("--set", s)]


def graph_of(work: Path, out: Path, *extra: str):
    """The pass graph `rsyn run` builds for the example with these settings."""
    from rsyn.pipeline.config import load_pipeline
    from rsyn.pipeline.passes import build_graph

    sets = example_settings(work, out) + list(extra)
    return build_graph(load_pipeline(EXAMPLE, sets[1::2]))


def part_names(graph, until: str | None = None) -> list[str]:
    names = graph.upstream([until]) if until else list(graph.passes)
    return [part.name for n in names for part in graph.passes[n].parts]


def lines(*paths: Path) -> list[bytes]:
    """The records of rsyn outputs, concatenated in order (multi-frame zstd: rsyn's own reader)."""
    from rsyn.stream import iter_line_blocks

    return [line for p in paths for _, block in iter_line_blocks(str(p)) for line in block if line.strip()]


def release(directory: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(directory.glob("*.parquet"))}
    assert files, f"no parquet in {directory}"
    files["_stats.json"] = (directory / "_stats.json").read_bytes()
    files["_SUCCESS"] = (directory / "_SUCCESS").read_bytes()
    return files


def leftovers(out: Path) -> list[str]:
    """Temporaries a run must not leave: rsyn's atomic-write names and the parts' TMPDIRs."""
    found = [str(p) for p in out.rglob("*") if re.search(r"\.rsyn-(tmp|old)-(.+-)?\d+$", p.name)]
    return found + [str(p) for p in out.rglob(".tmp")]


@pytest.fixture(scope="module")
def example(example_work):
    """The test corpus, the tiny models and examples/Makefile's release on them (the reference; conftest.py)."""
    return example_work


@pytest.fixture(scope="module")
def whole_runs(example) -> dict[str, subprocess.CompletedProcess]:
    """Every engine's whole run of the example, each in its own directory beside the Makefile's, started side by
    side (their passes that run once leave a core idle that another run's split passes fill): `rsyn run` with the
    local engine (to the report) and with Ray (to the release, where Ray is installed), and the emitted Makefile
    under `make -j2` and the emitted Slurm scripts under the fake sbatch (to the release). Each test checks one."""
    root = example.parent
    make_plan = ["--emit", "make", "-o", root / "make-plan"]
    rsyn("plan", EXAMPLE, *make_plan, *example_settings(example, root / "make"), check=True)
    rsyn(
        "plan",
        EXAMPLE,
        *("--emit", "slurm", "-o", root / "slurm-plan", "--until", "pack"),
        *example_settings(example, root / "slurm"),
        check=True,
    )
    run = [sys.executable, "-m", "rsyn", "run", EXAMPLE]
    shim_path = f"{ROOT / 'tests' / 'slurm_shim'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    commands = {
        "local": (run + example_settings(example, root / "local") + ["--engine", "local", "--workers", "2"], {}),
        "make": (["make", "-C", root / "make-plan", "-j2", "pack", f"RSYN={sys.executable} -m rsyn"], {}),
        "slurm": (
            ["bash", root / "slurm-plan" / "submit.sh"],
            {"PATH": shim_path, "SHIM_DIR": str(root / "slurm-shim"), "RSYN": f"{sys.executable} -m rsyn"},
        ),
    }
    if importlib.util.find_spec("ray") is not None:
        ray_options = ["--engine", "ray", "--workers", "2", "--until", "pack"]
        commands["ray"] = (run + example_settings(example, root / "ray") + ray_options, {})
    started = {}
    for name, (command, env) in commands.items():
        with open(root / f"{name}.stdout", "w") as out, open(root / f"{name}.stderr", "w") as err:
            started[name] = subprocess.Popen(
                [str(c) for c in command],
                env=subprocess_env(**env),
                cwd=ROOT,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a timeout ends the run's whole process group
            )
    done = {}
    deadline = time.monotonic() + 1800
    for name, proc in started.items():
        try:
            status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
        stdout, stderr = (root / f"{name}.stdout").read_text(), (root / f"{name}.stderr").read_text()
        done[name] = subprocess.CompletedProcess(proc.args, status, stdout, stderr)
    return done


def finished(whole_runs, engine: str) -> subprocess.CompletedProcess:
    proc = whole_runs[engine]
    assert proc.returncode == 0, f"the {engine} run exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def local_run(example, whole_runs):
    # the one whole run with the report; the other engines stop at the release (pack)
    return example.parent / "local", finished(whole_runs, "local").stderr


def test_local_engine_gives_the_makefile_release(example, local_run):
    out, log = local_run
    assert release(out / "packed") == release(example / "packed")
    assert (out / "report.html").stat().st_size > 0
    graph = graph_of(example, out)
    counts = {name: len(q.parts) for name, q in graph.passes.items()}
    # dedup, semdedup and balance ran as their split passes, with the example file's shard and partition counts
    assert {k: v for k, v in counts.items() if k.startswith(("dedup", "semdedup", "balance"))} == {
        "dedup-split": 3,
        "dedup-scan": 3,
        "dedup-exact": 2,
        "dedup-settle-exact": 1,
        "dedup-near": 2,
        "dedup-settle-near": 1,
        "dedup-filter": 3,
        "semdedup-split": 3,
        "semdedup-scan": 3,
        "semdedup-train": 1,
        "semdedup-assign": 3,
        "semdedup-pairs": 2,
        "semdedup-select": 1,
        "semdedup-filter": 3,
        "balance-split": 2,
        "balance-scan": 2,
        "balance-plan": 1,
        "balance-assign": 2,
        "balance-cap": 1,
        "balance-filter": 2,
    }
    names = part_names(graph)
    for name in names:
        marker = json.loads((out / ".done" / f"{name}.json").read_text())
        assert marker["status"] == 0
        assert (out / "logs" / f"{name}.log").read_text().count("attempt 1: done") == 1
    assert f"{len(names)}/{len(names)} parts done ({len(names)} run, 0 already done)" in log
    assert leftovers(out) == []
    # the split passes' part files, in part order, are the Makefile's one-process outputs, record for record
    for parts, whole in (("dedup", "dedup"), ("semdedup", "semdedup"), ("balanced", "balanced")):
        files = sorted((out / "shards").glob(f"{parts}-0*.jsonl.zst"))
        assert len(files) >= 2 and lines(*files) == lines(example / f"{whole}.jsonl.zst"), parts


def test_rerun_skips_every_done_part_and_redoes_a_changed_one(example, local_run):
    out, _ = local_run
    n = len(part_names(graph_of(example, out), "pack"))
    again = rsyn("run", EXAMPLE, *example_settings(example, out), "--until", "pack", check=True, text=True)
    assert f"{n}/{n} parts done (0 run, {n} already done)" in again.stderr
    # a different option for one pass: that pass and everything after it run again, nothing before it
    # (per_cluster is an option of balance's cap pass: not of its scan, plan or assign)
    changed = rsyn(
        "run",
        EXAMPLE,
        *example_settings(example, out),
        "--until",
        "pack",
        "--set",
        "thresholds.per_cluster=2",
        check=True,
        text=True,
    )
    started = re.findall(r"rsyn run: (\S+): started", changed.stderr)
    assert sorted(started) == ["balance-cap", "balance-filter-00000-of-00002", "balance-filter-00001-of-00002", "pack"]
    # back to the reference settings
    rsyn("run", EXAMPLE, *example_settings(example, out), "--until", "pack", check=True, text=True)
    assert release(out / "packed") == release(example / "packed")


def test_ray_engine_gives_the_makefile_release(example, whole_runs):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'rsyn[ray]')")
    out = example.parent / "ray"
    proc = finished(whole_runs, "ray")
    n = len(part_names(graph_of(example, out), "pack"))
    assert f"{n}/{n} parts done ({n} run" in proc.stderr
    assert release(out / "packed") == release(example / "packed")
    assert leftovers(out) == []


def test_emitted_makefile_with_make_j2_gives_the_same_release(example, whole_runs):
    out, plan = example.parent / "make", example.parent / "make-plan"
    makefile = (plan / "Makefile").read_text()
    filters = " ".join(f"{out}/.done/dedup-filter-{k:05d}-of-00003.json" for k in range(3))
    assert f"{out}/.done/embed.json: {filters}\n" in makefile
    finished(whole_runs, "make")
    assert release(out / "packed") == release(example / "packed")
    # every part ran through `rsyn run --part`: its marker and log are there, and make now has nothing to do
    n = len(part_names(graph_of(example, out), "pack"))
    assert len(list((out / ".done").glob("*.json"))) == n
    assert subprocess.run(["make", "-C", str(plan), "-q", "pack"], env=subprocess_env()).returncode == 0
    # and the markers make's parts wrote are the ones `rsyn run` resumes from
    again = rsyn("run", EXAMPLE, *example_settings(example, out), "--until", "pack", check=True, text=True)
    assert f"{n}/{n} parts done (0 run, {n} already done)" in again.stderr


def _normalised(text: str) -> str:
    return text.replace(str(ROOT), "@ROOT@")


def test_emitted_sbatch_scripts_match_the_golden_files(tmp_path):
    rsyn("plan", PAPER, "--emit", "slurm", "-o", tmp_path, check=True, text=True)
    emitted = {p.name: _normalised(p.read_text()) for p in sorted(tmp_path.iterdir())}
    if os.environ.get("RSYN_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        GOLDEN.mkdir(parents=True)
        for name, text in emitted.items():
            (GOLDEN / name).write_text(text)
    golden = {p.name: p.read_text() for p in sorted(GOLDEN.iterdir())}
    assert emitted == golden
    # the properties the golden files hold, stated
    embed = emitted["09-embed.sbatch"]
    assert "#SBATCH --array=0-511" in embed and "#SBATCH --gpus-per-task=1" in embed
    # split passes: per shard, per partition or once, GPUs only where a pass uses them, per-pass memory
    assert "#SBATCH --array=0-511" in emitted["03-dedup-scan.sbatch"]
    assert "--gpus-per-task" not in emitted["03-dedup-scan.sbatch"]
    assert "#SBATCH --array=0-255" in emitted["06-dedup-near.sbatch"] and "--mem=96G" in emitted["06-dedup-near.sbatch"]
    assert "#SBATCH --array=0-0" in emitted["05-dedup-settle-exact.sbatch"]
    assert "--gpus-per-task=1" in emitted["13-semdedup-pairs.sbatch"]
    assert "--gpus-per-task" not in emitted["10-semdedup-scan.sbatch"]
    assert "--gpus-per-task=1" in emitted["26-balance-plan.sbatch"]
    assert "--gpus-per-task" not in emitted["27-balance-assign.sbatch"]
    assert "#SBATCH --array=0-511" in emitted["18-index-collect.sbatch"]
    assert "#SBATCH --array=0-63" in emitted["20-index-add.sbatch"] and "--mem=96G" in emitted["20-index-add.sbatch"]
    assert "#SBATCH --array=0-0" in emitted["21-index-merge.sbatch"]
    # parts line up: each split pass reads its upstream stage's part files directly, with no split pass
    assert not any("split.sbatch" in name and "split-" not in name for name in emitted)
    assert "--dependency=afterok:$job_split_image:$job_index_merge 22-retrieve.sbatch" in emitted["submit.sh"]


def test_slurm_scripts_under_a_fake_sbatch_give_the_same_release(example, whole_runs):
    out, shim = example.parent / "slurm", example.parent / "slurm-shim"
    finished(whole_runs, "slurm")
    jobs = [json.loads(line) for line in (shim / "jobs.jsonl").read_text().splitlines()]
    graph = graph_of(example, out)
    assert len(jobs) == len(graph.upstream(["pack"])) and all(job["ok"] for job in jobs), jobs
    script = {j["script"].split("-", 1)[1].removesuffix(".sbatch"): j for j in jobs}
    assert script["retrieve"]["after"] == [script[s]["id"] for s in ("split-image", "index-merge")]
    assert len(script["dedup-near"]["tasks"]) == 2 and len(script["dedup-filter"]["tasks"]) == 3
    assert release(out / "packed") == release(example / "packed")
    assert leftovers(out) == []


def _fake_settings(tmp_path: Path, out: Path, shards: int = 2) -> list[str]:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("{}\n")
    sets = [
        f"pipeline.output={out}",
        f"inputs.documents=['{docs}']",
        f"stages.extract.shards={shards}",
        f"stages.extract.program=['{sys.executable}', '{FAKE_STAGE}']",
    ]
    return [w for s in sets for w in ("--set", s)]


def test_a_part_that_fails_twice_is_retried_and_succeeds(tmp_path):
    out = tmp_path / "out"
    env = dict(FAKE_STATE=str(tmp_path / "state"), FAKE_FAIL="2", FAKE_FAIL_SHARD="1/2")
    proc = rsyn(
        "run",
        EXAMPLE,
        *_fake_settings(tmp_path, out),
        "--until",
        "extract",
        "--retries",
        "2",
        env=env,
        check=True,
        text=True,
    )
    assert proc.stderr.count("extract-00001-of-00002: failed (exit 3), retrying") == 2
    log = (out / "logs" / "extract-00001-of-00002.log").read_text()
    assert log.count("failing on purpose") == 2 and "attempt 3: done" in log
    assert json.loads((out / ".done" / "extract-00001-of-00002.json").read_text())["attempt"] == 3
    assert (out / ".done" / "extract-00000-of-00002.json").exists()


def test_a_part_that_always_fails_ends_the_run_with_exit_2_naming_it_and_its_log(tmp_path):
    out = tmp_path / "out"
    env = dict(FAKE_STATE=str(tmp_path / "state"), FAKE_FAIL="99", FAKE_FAIL_SHARD="1/2")
    proc = rsyn(
        "run",
        EXAMPLE,
        *_fake_settings(tmp_path, out),
        "--until",
        "extract",
        "--retries",
        "2",
        env=env,
        check=False,
        text=True,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    log = out / "logs" / "extract-00001-of-00002.log"
    assert last == f"rsyn: error: part extract-00001-of-00002 failed 3 times (exit status 3); its log: {log}"
    assert "Traceback" not in proc.stderr
    assert not (out / ".done" / "extract-00001-of-00002.json").exists()
    assert leftovers(out) == []


def test_local_engine_gives_each_gpu_part_its_own_gpu(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    env = dict(FAKE_STATE=str(state), FAKE_SLEEP="0.5", CUDA_VISIBLE_DEVICES="0,1")
    rsyn(
        "run",
        EXAMPLE,
        *_fake_settings(tmp_path, out, shards=4),
        "--set",
        "stages.extract.gpus=1",
        "--until",
        "extract",
        "--workers",
        "4",
        env=env,
        check=True,
        text=True,
    )
    runs = [(p.read_text().split()) for p in sorted(state.glob("ran-*-4"))]
    assert len(runs) == 4 and all(gpu in ("0", "1") for gpu, _, _ in runs)
    spans = [(float(a), float(b)) for _, a, b in runs]
    for t in {a for a, _ in spans}:  # never more parts at once than GPUs, though 4 workers were free
        assert sum(a <= t < b for a, b in spans) <= 2
    for (g1, a1, b1), (g2, a2, b2) in ((x, y) for x in runs for y in runs if x is not y):
        assert not (g1 == g2 and float(a1) < float(b2) and float(a2) < float(b1)), "two parts shared a GPU"


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_stop_the_parts_and_leave_no_temporaries(tmp_path, signum, status):
    out = tmp_path / "out"
    state = tmp_path / "state"
    env = subprocess_env(FAKE_STATE=str(state), FAKE_HANG="1", FAKE_FAIL_SHARD="1/2")
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rsyn",
            "run",
            str(EXAMPLE),
            *_fake_settings(tmp_path, out),
            "--until",
            "extract",
            "--workers",
            "2",
        ],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (state / "pid").exists():
        assert run.poll() is None and time.monotonic() < deadline, "the hanging part never started"
        time.sleep(0.1)
    time.sleep(0.2)
    child = int((state / "pid").read_text())
    assert leftovers(out), "the hanging part should have left temporaries to clean"
    run.send_signal(signum)
    assert run.wait(60) == status
    assert "interrupted" in run.stderr.read()
    assert leftovers(out) == []
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_killed_run_resumes_only_its_unfinished_parts(example, local_run, tmp_path):
    """SIGKILL `rsyn run` during a split pass (dedup-filter, 3 parts); the rerun runs only the parts without a
    marker, and the parts equal those of the uninterrupted run."""
    out, _ = local_run
    name = "dedup-filter"
    parts = [f"{name}-{k:05d}-of-00003" for k in range(3)]
    outputs = [out / "shards" / f"dedup-{k:05d}-of-00003.jsonl.zst" for k in range(3)]
    reference = [p.read_bytes() for p in outputs]
    slow = ["sh", "-c", 'sleep 1; exec "$0" "$@"', "rsyn"]  # each part takes a second: the kill lands mid-pass
    sets = [
        *example_settings(example, out),
        "--set",
        f"stages.{name}.program={json.dumps(slow)}",
        "--until",
        name,
        "--workers",
        "1",
    ]
    first = out / ".done" / f"{parts[0]}.json"
    first.unlink()  # the program changed, so the whole pass reruns: wait for its first new marker
    run = subprocess.Popen(
        [sys.executable, "-m", "rsyn", "run", str(EXAMPLE), *sets],
        env=subprocess_env(),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not first.exists():
        assert run.poll() is None and time.monotonic() < deadline, "the split pass never finished a part"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(0.5)  # the part it was running gets SIGKILL too (PR_SET_PDEATHSIG): no orphan races the rerun
    assert _processes_naming(out / "work") == []
    done_before = {
        p.name[:-5] for p in (out / ".done").glob(f"{name}-*.json") if json.loads(p.read_text())["argv"][:2] == slow[:2]
    }
    assert 1 <= len(done_before) < 3
    # what a dead attempt leaves: a half-written output and a spill in its TMPDIR
    (out / "shards" / ".dedup-00002-of-00003.jsonl.zst.rsyn-tmp-999999").write_bytes(b"half")
    (out / ".tmp" / parts[2] / "rsyn-dedup-x").mkdir(parents=True)

    again = rsyn("run", EXAMPLE, *sets, check=True, text=True)
    started = re.findall(r"rsyn run: (\S+): started", again.stderr)
    expected = sorted(set(parts) - done_before)
    assert sorted(started) == expected  # nothing before the split pass, none of its finished parts
    logged = [(out / "logs" / f"{part}.log").read_text().count("attempt 1: done") for part in expected]
    assert logged == [2] * len(expected)  # the first whole run's and the rerun's; a killed attempt logs no end
    assert leftovers(out) == []
    assert [p.read_bytes() for p in outputs] == reference


def _processes_naming(path: Path) -> list[int]:
    """Pids of the live processes whose command line mentions `path` (Linux /proc)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(path).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_bad_pipeline_files_fail_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    head = '[pipeline]\noutput = "x"\n[inputs]\ndocuments = ["a"]\n'
    for table, message in (
        ("[stages.pack]\nshards = 4", "pack compares records across the whole stream"),
        ("[stages.embed]\npartitions = 2", "only dedup, semdedup and index have per-partition passes"),
        ("[stages.dedup-near]\nshards = 2", "part counts are set on the stage, [stages.dedup]"),
        ("[stages.dedup-nope]\ncpus = 2", "[stages.dedup-nope] is not a stage or a pass"),
    ):
        bad.write_text(f"{head}[stages.dedup]\nshards = 2\n{table}\n")
        proc = rsyn("plan", bad, "--emit", "make", check=False, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    bad.write_text('[pipeline]\noutput = "x"\n[inputs]\ndocuments = ["a"]\n[thresholds]\nmax_pp = 3\n')
    proc = rsyn("run", bad, check=False, text=True)
    assert proc.returncode == 2 and "[thresholds] has no 'max_pp'" in proc.stderr and "Traceback" not in proc.stderr
    proc = rsyn("run", EXAMPLE, "--part", "embed/7", check=False, text=True)
    assert proc.returncode == 2 and "--part 'embed/7': no such part" in proc.stderr


def test_ray_engine_without_ray_says_how_to_install(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; from rsyn.cli import main; "
        f"sys.argv = ['rsyn', 'run', {str(EXAMPLE)!r}, '--engine', 'ray', '--set', 'pipeline.output={tmp_path}']; "
        "main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr == "rsyn: error: the ray engine needs Ray: pip install 'rsyn[ray]'\n"
