"""Outputs are durable when they appear: AtomicFile and AtomicDirectory (rsyn.stream, the only two ways rsyn
publishes an output) fsync the content before the rename and the parent directory after it.

os.fsync and os.replace are recorded (each fsync names the path its descriptor points at), so the order is
checked, not only that fsync was called."""

import os
from pathlib import Path

import pytest
from conftest import jsonl, read_stream_file, rsyn_here

from rsyn.stream import AtomicDirectory, AtomicFile, temporary_name, write_bytes_atomic


@pytest.fixture
def events(monkeypatch):
    """[("fsync", path) | ("replace", src, dst)] in the order they happened."""
    seen: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        seen.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def _where(events, event) -> int:
    assert event in events, (event, events)
    return events.index(event)


def _published(events, target: Path) -> tuple[int, str]:
    """(position of the rename onto `target`, its source)."""
    renames = [(i, e[1]) for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(target)]
    assert len(renames) == 1, events
    return renames[0]


def test_atomic_file_fsyncs_data_then_renames_then_fsyncs_the_directory(tmp_path, events):
    target = tmp_path / "sub" / "out.bin"
    with AtomicFile(target) as out:
        out.write(b"x" * 100_000)
        assert not target.exists()
    assert target.read_bytes() == b"x" * 100_000
    at, tmp = _published(events, target)
    assert tmp == str(temporary_name(target))
    assert _where(events, ("fsync", tmp)) < at < _where(events, ("fsync", str(target.parent)))


def test_write_bytes_atomic_is_durable(tmp_path, events):
    target = tmp_path / "marker.json"
    write_bytes_atomic(target, b"{}")
    at, tmp = _published(events, target)
    assert _where(events, ("fsync", tmp)) < at < _where(events, ("fsync", str(tmp_path)))


def test_atomic_file_without_durability_renames_without_fsync(tmp_path, events):
    with AtomicFile(tmp_path / "work.npy", durable=False) as out:
        out.write(b"scratch")
    assert (tmp_path / "work.npy").read_bytes() == b"scratch"
    assert [e[0] for e in events] == ["replace"]


def test_atomic_file_discards_on_an_exception(tmp_path, events):
    target = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        with AtomicFile(target) as out:
            out.write(b"half")
            assert temporary_name(target).exists()
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [] and events == []


def test_atomic_directory_fsyncs_the_tree_then_renames_then_fsyncs_the_parent(tmp_path, events):
    target = tmp_path / "out"
    with AtomicDirectory(target, marker="done") as out:
        (out.tmp / "shards").mkdir()
        (out.tmp / "shards" / "0.tar").write_bytes(b"a" * 5000)
        (out.tmp / "done").write_bytes(b"")
    tmp = str(temporary_name(target))
    at, source = _published(events, target)
    assert source == tmp
    for inside in (tmp, f"{tmp}/shards", f"{tmp}/shards/0.tar", f"{tmp}/done"):
        assert _where(events, ("fsync", inside)) < at
    assert at < _where(events, ("fsync", str(tmp_path)))
    assert (target / "shards" / "0.tar").read_bytes() == b"a" * 5000


def test_atomic_directory_discards_on_an_exception(tmp_path, events):
    target = tmp_path / "out"
    with pytest.raises(ValueError):
        with AtomicDirectory(target, marker="done") as out:
            (out.tmp / "part").write_bytes(b"x")
            raise ValueError("the stage failed")
    assert list(tmp_path.iterdir()) == [] and events == []


def test_a_command_output_file_is_durable(tmp_path, events):
    out = tmp_path / "out.jsonl.zst"
    rsyn_here("cat", "-", "-o", out, input=jsonl([{"id": str(i)} for i in range(5)]), check=True)
    assert [r["id"] for r in read_stream_file(out)] == [str(i) for i in range(5)]
    at, tmp = _published(events, out)
    assert _where(events, ("fsync", tmp)) < at < _where(events, ("fsync", str(tmp_path)))


def test_a_command_output_directory_is_durable(tmp_path, events):
    records = [
        {"id": f"i{i}", "kind": "image", "url": f"http://127.0.0.1:9/{i}.jpg", "syn_text": "a dog"} for i in range(3)
    ]
    out = tmp_path / "packed"
    rsyn_here("pack", "-", "--format", "parquet", "-o", out, input=jsonl(records), check=True)
    at, tmp = _published(events, out)
    for path in [out, *out.rglob("*")]:
        inside = tmp + str(path)[len(str(out)) :]
        assert _where(events, ("fsync", inside)) < at
    assert at < _where(events, ("fsync", str(tmp_path)))
