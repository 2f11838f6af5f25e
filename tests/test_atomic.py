"""atomic_write: all or nothing, ordinary file permissions."""

from __future__ import annotations

import os

import pytest

from asrkd.atomic import atomic_write


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    atomic_write(path, lambda f: f.write("first\n"), mode="w")
    atomic_write(path, lambda f: f.write("second\n"), mode="w")
    assert path.read_text() == "second\n"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
