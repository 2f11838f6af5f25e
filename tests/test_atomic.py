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


def test_no_process_wide_umask_flip(tmp_path, monkeypatch):
    """The file mode comes from the kernel's own umask handling: changing the process umask
    (racy with other threads creating files) is never needed."""
    import importlib

    import asrkd.atomic

    def no_umask(_mask):
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", no_umask)
    mod = importlib.reload(asrkd.atomic)
    mod.atomic_write(tmp_path / "f.txt", lambda f: f.write("x"), mode="w")
    monkeypatch.undo()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys

    from asrkd.atomic import _HOST

    # A writer killed mid-write: its temporary (named after its pid) stays behind.
    code = (
        "import os, sys, signal; from asrkd.atomic import atomic_write; "
        "atomic_write(sys.argv[1], lambda f: (f.write(b'x' * 1000), f.flush(), os.kill(os.getpid(), signal.SIGKILL)))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ck.pt")], check=False)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 1 and left[0].startswith(f".ck.pt.{_HOST}-") and left[0].endswith(".tmp"), left
    # A live writer's temporary (this process: pid alive) and other files are left alone.
    live = tmp_path / f".ck.pt.{_HOST}-{os.getppid()}-abcd1234.tmp"
    live.write_bytes(b"busy")
    (tmp_path / "other.txt").write_text("keep")
    atomic_write(tmp_path / "ck.pt", lambda f: f.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck.pt", live.name, "other.txt"])
    assert (tmp_path / "ck.pt").read_bytes() == b"new"


def test_a_full_disk_is_an_error_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    import asrkd.atomic

    path = tmp_path / "hyp.txt"
    atomic_write(path, lambda f: f.write("old\n"), mode="w")

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(asrkd.atomic.os, "fsync", full)
    with pytest.raises(OSError, match=r"cannot write .*hyp.txt: No space left on device") as info:
        atomic_write(path, lambda f: f.write("new\n"), mode="w")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hyp.txt"]


def test_read_only_folder_is_an_error_naming_the_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot write .*ro/x.txt"):
            atomic_write(folder / "x.txt", lambda f: f.write("x"), mode="w")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
def test_refuse_overwrite_names_both(tmp_path, spelling):
    from asrkd.atomic import refuse_overwrite

    src = tmp_path / "m.jsonl"
    src.write_text("{}\n")
    out = {
        "same": src,
        "dotted": tmp_path / "." / "m.jsonl",
        "symlink": tmp_path / "link.jsonl",
        "hardlink": tmp_path / "hard.jsonl",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(src)
    elif spelling == "hardlink":
        os.link(src, out)
    with pytest.raises(ValueError, match=r"--out .* is the input --manifest .*m.jsonl"):
        refuse_overwrite({"--out": out}, {"--manifest": src})
    refuse_overwrite({"--out": tmp_path / "hyp.txt"}, {"--manifest": src, "--lm": None})  # distinct: fine
    with pytest.raises(ValueError, match="--out and --json are the same path"):
        refuse_overwrite({"--out": tmp_path / "a", "--json": tmp_path / "a"}, {})
