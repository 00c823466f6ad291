import subprocess
import sys

import pytest

from rsyn.stream import AtomicDirectory, OutputExists, temporary_name


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_runs_directory_is_removed_by_the_next_run(tmp_path):
    target = tmp_path / "out"
    stale = temporary_name(target)
    stale = stale.with_name(stale.name.rsplit("-", 1)[0] + f"-{dead_pid()}")
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "part.parquet").write_bytes(b"x" * 1000)
    out = AtomicDirectory(target, marker="done.json")
    assert not stale.exists()
    (out.tmp / "done.json").write_text("{}")
    out.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replaces_only_directories_holding_the_marker(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(OutputExists):
        AtomicDirectory(foreign, marker="done.json", overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "keep me"

    ours = tmp_path / "ours"
    first = AtomicDirectory(ours, marker="done.json")
    (first.tmp / "done.json").write_text("1")
    first.commit()
    with pytest.raises(OutputExists):
        AtomicDirectory(ours, marker="done.json")  # no --overwrite
    second = AtomicDirectory(ours, marker="done.json", overwrite=True)
    (second.tmp / "done.json").write_text("2")
    assert (ours / "done.json").read_text() == "1"  # the old one stays until the new one is complete
    second.commit()
    assert (ours / "done.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "ours"]
