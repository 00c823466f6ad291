"""The stream contract through the real `rsyn` command line: cat, errors, shards, atomic output."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import compress, decode_stream, jsonl, read_stream_file, rsyn, rsyn_here
from hypothesis import given, settings
from hypothesis import strategies as st

import rsyn as rsyn_package
from rsyn.stream import RecordWriter, StreamError, iter_lines, read_records

RECORDS = [
    {"id": f"{i:05d}", "kind": "text", "doc": f"d{i // 10}", "pos": i % 10, "text": f"sentence number {i} é ✓"}
    for i in range(10_000)
]


def registered_commands():
    """Every command registered on the Typer app, passes included: (words that reach it, command, its group)."""
    import typer.main

    from rsyn.cli import app

    def walk(group, words):
        for name, command in group.commands.items():
            yield (*words, name), command, group
            if hasattr(command, "commands"):
                yield from walk(command, (*words, name))

    return list(walk(typer.main.get_command(app), ()))


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def test_help_lists_every_registered_command_and_each_one_has_its_own_help():
    commands = registered_commands()
    top = {words[0]: command for words, command, _ in commands if len(words) == 1}
    # each module of rsyn/commands registers its command: a new one that cli.py forgets to import fails here
    modules = {p.stem for p in (Path(rsyn_package.__file__).parent / "commands").glob("*.py")} - {"__init__"}
    assert modules <= top.keys(), modules - top.keys()
    listed = re.findall(r"^│ ([a-z][a-z-]*) ", rsyn("--help", check=True).stdout.decode(), flags=re.M)
    assert sorted(listed) == sorted(name for name, command in top.items() if not command.hidden)
    assert len(commands) > len(top)  # the passes of index and balance are subcommands
    for words, command, group in commands:
        # the words a user types: the registered name, or a group's pass name without the group's prefix
        ctx = group.context_class(group, info_name=words[-2] if len(words) > 1 else "rsyn")
        candidates = [words[-1]] + ([words[-1].removeprefix(f"{words[-2]}-")] if len(words) > 1 else [])
        typed = next((w for w in candidates if group.resolve_command(ctx, [w])[1] is command), None)
        assert typed is not None, f"no word reaches {words}"
        argv = [*words[:-1], typed, "--help"]
        proc = rsyn_here(*argv)
        assert proc.returncode == 0, argv
        if hasattr(command, "commands"):
            continue  # `rsyn index --help`, `rsyn balance --help`: the whole run's help (its own entry below)
        # its own help, not its group's or a neighbour's: the first words of its docstring
        first = _flat((command.help or command.short_help or "").split(". ")[0])
        assert len(first) > 10 and first[:60] in _flat(proc.stdout.decode()), argv


def test_version():
    assert rsyn("--version", check=True).stdout.decode() == f"rsyn {rsyn_package.__version__}\n"


@pytest.mark.parametrize("kind", ["zstd", "gzip", "plain"])
def test_cat_round_trips_every_compression_through_stdin(kind):
    proc = rsyn("cat", input=compress(jsonl(RECORDS), kind), check=True)
    assert proc.stdout[:4] == b"\x28\xb5\x2f\xfd"  # zstd out
    assert decode_stream(proc.stdout) == RECORDS
    assert "10000 in, 10000 out" in proc.stderr.decode()


@pytest.mark.parametrize("kind", ["zstd", "gzip", "plain"])
def test_cat_reads_files_by_content_not_name(tmp_path, kind):
    path = tmp_path / "misnamed.txt"  # the name says nothing about the compression
    path.write_bytes(compress(jsonl(RECORDS[:100]), kind))
    out = tmp_path / "out.jsonl.zst"
    rsyn("cat", path, "-o", out, "--quiet", check=True)
    assert read_stream_file(out) == RECORDS[:100]


def test_cat_concatenates_globs_and_multi_frame_streams(tmp_path):
    a, b = RECORDS[:50], RECORDS[50:120]
    (tmp_path / "a.jsonl.zst").write_bytes(compress(jsonl(a), "zstd"))
    # two zstd frames back to back, as `cat x.zst y.zst` makes
    (tmp_path / "b.jsonl.zst").write_bytes(compress(jsonl(b[:30]), "zstd") + compress(jsonl(b[30:]), "zstd"))
    proc = rsyn("cat", str(tmp_path / "*.jsonl.zst"), check=True)
    assert decode_stream(proc.stdout) == a + b
    assert "2 input files matched" in proc.stderr.decode()


def test_plain_and_limit():
    proc = rsyn("cat", "--plain", "--limit", "7", input=jsonl(RECORDS), check=True)
    assert proc.stdout.splitlines()[0] == orjson.dumps(RECORDS[0])
    assert decode_stream(proc.stdout) == RECORDS[:7]


def _with_bad_line_7(kind="plain"):
    lines = [orjson.dumps(r) for r in RECORDS[:20]]
    lines[6] = b'{"id": "broken", '
    return compress(b"\n".join(lines) + b"\n", kind)


def test_malformed_line_fails_with_one_line_naming_it():
    proc = rsyn("cat", input=_with_bad_line_7())
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.startswith("rsyn: error: <stdin>:7: invalid JSON")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_not_an_object_names_the_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": 1}\n[1, 2]\n')
    proc = rsyn("cat", path)
    assert proc.returncode == 2
    assert f"{path}:2: record is a JSON list, not an object" in proc.stderr.decode()


def test_skip_counts_and_logs_the_bad_line(tmp_path):
    rejects, stats = tmp_path / "rejects.jsonl", tmp_path / "stats.json"
    proc = rsyn("cat", "--on-error", "skip", "--rejects", rejects, "--stats", stats, input=_with_bad_line_7("zstd"))
    assert proc.returncode == 0, proc.stderr
    assert len(decode_stream(proc.stdout)) == 19
    summary = orjson.loads(stats.read_bytes())
    assert summary["in"] == 19 and summary["out"] == 19 and summary["errors"] == {"invalid_json": 1}
    (entry,) = read_stream_file(rejects)
    assert entry["where"] == "<stdin>:7" and entry["raw"] == '{"id": "broken", '
    assert "1 skipped errors" in proc.stderr.decode()


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_truncated_stream_is_an_error_not_silent_loss(tmp_path, kind):
    data = compress(jsonl(RECORDS), kind)
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    proc = rsyn("cat", path)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith(f"rsyn: error: {path}:") and "truncated" in err and "Traceback" not in err
    proc = rsyn("cat", path, "--on-error", "skip", "--rejects", tmp_path / "r.jsonl")
    assert proc.returncode == 0
    got = decode_stream(proc.stdout)
    assert 0 < len(got) < len(RECORDS) and got == RECORDS[: len(got)]
    assert read_stream_file(tmp_path / "r.jsonl")[0]["reason"] == "corrupt_stream"


def test_corrupt_zstd_bytes(tmp_path):
    data = bytearray(compress(jsonl(RECORDS[:3000]), "zstd"))
    for i in range(200, 260):
        data[i] ^= 0xFF
    path = tmp_path / "bad.zst"
    path.write_bytes(bytes(data))
    with pytest.raises(StreamError):
        list(read_records([str(path)]))
    proc = rsyn("cat", path)
    assert proc.returncode == 2 and "corrupt zstd frame" in proc.stderr.decode()


def test_shards_are_disjoint_and_complete(tmp_path):
    src = tmp_path / "in.jsonl.zst"
    src.write_bytes(compress(jsonl(RECORDS[:1000]), "zstd"))
    parts = [decode_stream(rsyn("cat", src, "--shard", f"{k}/3", check=True).stdout) for k in range(3)]
    ids = [{r["id"] for r in p} for p in parts]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sorted(r["id"] for p in parts for r in p) == [r["id"] for r in RECORDS[:1000]]
    assert rsyn("cat", src, "--shard", "3/3").returncode == 2


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.integers(1, 7))
def test_shard_partition_property(n_records, n_shards):
    from rsyn.command import Run

    records = [{"id": str(i)} for i in range(n_records)]
    seen = []
    for k in range(n_shards):
        run = Run("cat", shard=(k, n_shards), quiet=True)
        seen.append([r["id"] for r in run.in_shard(records)])
    flat = [i for part in seen for i in part]
    assert sorted(flat, key=int) == [r["id"] for r in records]
    assert len(set(flat)) == len(flat)


def test_identical_input_gives_identical_bytes(tmp_path):
    src = compress(jsonl(RECORDS), "gzip")
    a = rsyn("cat", input=src, check=True).stdout
    b = rsyn("cat", input=src, check=True).stdout
    assert a == b
    rsyn("cat", "-o", tmp_path / "a.zst", input=src, check=True)
    rsyn("cat", "-o", tmp_path / "b.zst", input=src, check=True)
    assert (tmp_path / "a.zst").read_bytes() == (tmp_path / "b.zst").read_bytes() == a


BIG_INPUT = jsonl(RECORDS * 6)  # ~5 MB: several frames are written before the input ends


def _writer_mid_stream(out):
    """A `rsyn cat -o OUT` fed part of its input, stdin left open, once its temporary holds data."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsyn", "cat", "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        proc.stdin.write(BIG_INPUT)  # stdin stays open: the run is mid-stream
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while True:
            assert not out.exists(), "the output appeared under its final name mid-stream: the writer is not atomic"
            temporaries = [p for p in out.parent.glob(f".{out.name}.rsyn-tmp-*") if p.stat().st_size > 0]
            if temporaries and not out.exists():
                return proc, temporaries[0]
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no temporary with data appeared: the writer wrote nothing"
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise


def test_killed_write_leaves_no_output_file_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "out.jsonl.zst"
    proc, temporary = _writer_mid_stream(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    proc.stderr.close()
    assert not out.exists() and temporary.exists()  # SIGKILL: nothing can clean, but nothing looks done
    assert f"-{proc.pid}" in temporary.name  # its owner is in its name
    rsyn("cat", "-o", out, "--quiet", input=jsonl(RECORDS), check=True)  # the next run of the same target
    assert read_stream_file(out) == RECORDS
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl.zst"]


@pytest.mark.parametrize("sig,status,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupted_or_terminated_write_removes_its_temporary(tmp_path, sig, status, word):
    out = tmp_path / "out.jsonl.zst"
    proc, _ = _writer_mid_stream(out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == status, err
    assert f"rsyn cat: {word}".encode() in err and b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_runs_on_this_host_are_removed(tmp_path):
    from rsyn.stream import remove_stale_temporaries, temporary_name

    target = tmp_path / "index"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temporary_name(target)
    assert mine.parent == tmp_path and mine.name.startswith(".index.rsyn-tmp-")
    assert mine.name.endswith(f"-{os.getpid()}")
    host = mine.name[len(".index.rsyn-tmp-") :].rsplit("-", 1)[0]
    stale_dir = tmp_path / f".index.rsyn-tmp-{host}-{dead.pid}"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "part.bin").write_bytes(b"x" * 100)
    stale_file = tmp_path / f".index.rsyn-tmp-{host}-{dead.pid + 1_000_000}"  # no such pid
    stale_file.write_bytes(b"x")
    keep = [
        mine,
        tmp_path / f".index.rsyn-tmp-otherhost-{dead.pid}",  # alive / not ours to judge
        tmp_path / f".indexes.rsyn-tmp-{host}-{dead.pid}",  # another target
        tmp_path / f".index.rsyn-tmp-{host}-{os.getppid()}",
    ]  # a live process
    for path in keep:
        path.write_bytes(b"x")
    removed = remove_stale_temporaries(target)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_head_ends_quietly():
    src = compress(jsonl(RECORDS * 5), "zstd")
    proc = subprocess.run(
        f"{sys.executable} -m rsyn cat --plain | head -n 3", shell=True, input=src, capture_output=True
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr


def test_run_counters_change_only_through_its_methods(tmp_path):
    """Stages count through Run's methods; the counters they can read cannot be written behind its back."""
    from rsyn.command import Run

    run = Run("x", inputs=["a"], output=str(tmp_path / "out.jsonl"), quiet=True)
    with pytest.raises(TypeError):
        run.dropped["over_cluster_cap"] = 1
    with pytest.raises(AttributeError):
        run.inputs = ["b"]
    run.count_dropped("over_cluster_cap", 3)
    run.drop({"id": "1"}, "over_cluster_cap")
    run.count_in(5)
    assert dict(run.dropped) == {"over_cluster_cap": 4} and run.n_in == 5 and run.inputs == ("a",)
    run.plain_output()
    run.write([{"id": "2"}])
    with pytest.raises(RuntimeError):
        run.plain_output()
    run.__exit__(None, None, None)
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"id":"2"}\n'


def test_missing_input_file():
    proc = rsyn("cat", "/nonexistent/x.jsonl")
    assert proc.returncode == 2 and proc.stderr.decode().startswith("rsyn: error: /nonexistent/x.jsonl: no such file")


def test_a_directory_as_input_is_one_line(tmp_path):
    proc = rsyn_here("cat", tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"rsyn: error: {tmp_path}: is a directory")


def test_library_reader_and_writer(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    w = RecordWriter(str(path))
    for r in RECORDS[:10]:
        w.write(r)
    assert not path.exists()  # not there until complete
    w.close()
    assert list(read_records([str(path)])) == RECORDS[:10]
    assert [n for n, _ in iter_lines(str(path))] == list(range(1, 11))


def test_blank_lines_are_ignored_and_crlf_tolerated():
    proc = rsyn("cat", input=b'{"a": 1}\r\n\n  \n{"a": 2}', check=True)
    assert decode_stream(proc.stdout) == [{"a": 1}, {"a": 2}]


def test_cat_kind_splits_a_mixed_stream(tmp_path):
    mixed = [{"id": str(i), "kind": "image" if i % 3 == 0 else "text"} for i in range(30)]
    stats = tmp_path / "s.json"
    proc = rsyn("cat", "--kind", "image", "--stats", stats, input=jsonl(mixed), check=True)
    assert [r["id"] for r in decode_stream(proc.stdout)] == [str(i) for i in range(0, 30, 3)]
    assert orjson.loads(stats.read_bytes())["dropped"] == {"kind_not_image": 20}
