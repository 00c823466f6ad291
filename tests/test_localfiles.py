import os

import pytest

from rsyn.localfiles import LocalFileError, allowed_root, read_local_file


def read(path, root, max_bytes=1000):
    return read_local_file(str(path), root=allowed_root(root), max_bytes=max_bytes)


def test_reads_a_regular_file_under_the_root(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert read(tmp_path / "a.bin", tmp_path) == b"abc"


def test_refuses_paths_outside_the_root_and_never_quotes_contents(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0")
    root = tmp_path / "data"
    root.mkdir()
    (root / "link").symlink_to(secret)
    for path in (secret, root / ".." / "secret.txt", root / "link"):
        with pytest.raises(LocalFileError) as info:
            read(path, root)
        assert info.value.reason == "outside_root"
        assert "root:x" not in info.value.message


def test_refuses_special_files_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(LocalFileError) as info:
        read(fifo, tmp_path)
    assert info.value.reason == "not_a_regular_file"
    with pytest.raises(LocalFileError) as info:
        read("/dev/zero", "/")
    assert info.value.reason == "not_a_regular_file"


def test_caps_the_bytes_read(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 1001)
    with pytest.raises(LocalFileError) as info:
        read(tmp_path / "big", tmp_path, max_bytes=1000)
    assert info.value.reason == "too_large"
    assert read(tmp_path / "big", tmp_path, max_bytes=1001) == b"x" * 1001


def test_missing_file(tmp_path):
    with pytest.raises(LocalFileError) as info:
        read(tmp_path / "nope", tmp_path)
    assert info.value.reason == "file_not_found"
