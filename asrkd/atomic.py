"""Atomic file writes: a crash or a kill leaves the old file or the new one, never a part.

Every file asrkd writes (checkpoints, cache shards and index, manifests, hypotheses, tokenizers,
exported models, reports and run summaries) goes through :func:`atomic_write`; every command
that writes checks with :func:`refuse_overwrite` that no output is one of its inputs.
"""

from __future__ import annotations

import errno
import glob
import os
import secrets
import socket
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Mapping

# A temporary is named after its writer, so that a later writer can tell a killed one's
# leftovers (same host, process gone) from a live concurrent writer's.
_HOST = socket.gethostname().replace(".", "_")[:32] or "host"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporaries that killed writers of ``folder/name`` left behind (this host's,
    whose process is gone); returns what was removed. ``name="*"``: every file in the folder."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".{name if name == '*' else glob.escape(name)}.{_HOST}-*-*.tmp"):
        try:
            pid = int(tmp.name[: -len(".tmp")].rsplit("-", 2)[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _writer_alive(pid):
            _unlink_quietly(tmp)
            removed.append(tmp)
    return removed


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], None], mode: str = "wb", *, durable: bool = True
) -> None:
    """Write ``path`` through ``write(file)``: into a temporary file in the same folder
    (created when missing), fsync'd, renamed over ``path``, and the folder fsync'd so the
    rename itself is durable. Text modes use UTF-8. The new file gets the mode a plain
    ``open()`` would give it (0666 less the umask, applied by the kernel). A failure removes
    the temporary and raises ``OSError`` naming ``path``; temporaries of killed writers of
    the same path are removed first. ``durable=False`` skips the fsyncs (for many small files
    that can be made again, e.g. synthesized audio): a killed process still leaves the old file
    or the new one; only a power failure may lose the latest writes."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _named(err, path.parent) from None
    remove_stale_temporaries(path.parent, path.name)
    tmp = _temp_name(path)
    recorder = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            recorder = _Recorder(f)
            write(recorder)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _unlink_quietly(tmp)
        # A writer in C++ (torch.save) turns a failed write into its own error ("unexpected
        # pos ..."): the OSError it swallowed says what happened (no space left, ...).
        cause = err if isinstance(err, OSError) else (recorder.error if recorder is not None else None)
        if cause is not None and not isinstance(err, KeyboardInterrupt):
            raise _named(cause, path) from None
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Recorder:
    """The temporary file as the writer sees it: every call goes to the file, and the first
    ``OSError`` a write or flush raises is kept, whatever the writer does with it."""

    def __init__(self, f: IO[Any]):
        self._f = f
        self.error: OSError | None = None

    def _call(self, name: str, *args):
        try:
            return getattr(self._f, name)(*args)
        except OSError as err:
            self.error = self.error or err
            raise

    def write(self, data):
        return self._call("write", data)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _unlink_quietly(path: Path) -> None:
    """Remove a temporary after a failure without hiding that failure (on a read-only file
    system even a missing file's unlink raises)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _named(err: OSError, path: Path) -> OSError:
    """The same error class and errno, with ``path`` as its file name (a bare ``[Errno 28]``
    from a write says neither which file nor that nothing was written)."""
    code = err.errno if err.errno is not None else errno.EIO
    return type(err)(code, f"cannot write {path}: {err.strerror or err}", str(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrite(
    outputs: Mapping[str, str | os.PathLike | None], inputs: Mapping[str, str | os.PathLike | None]
) -> None:
    """Raise ``ValueError`` naming both when an output path is an input path (the same file,
    through any spelling, link or hard link) or two outputs are one path. ``None`` entries
    are ignored. Keys are what the user called them (``--out``, ``--manifest``)."""
    outs = {k: Path(v) for k, v in outputs.items() if v is not None and str(v) != "-"}
    ins = {k: Path(v) for k, v in inputs.items() if v is not None and str(v) != "-"}
    for out_name, out in outs.items():
        for in_name, src in ins.items():
            if out.resolve() == src.resolve() or _same_file(out, src):
                raise ValueError(
                    f"{out_name} {out} is the input {in_name} {src}: writing it would destroy the "
                    "input; choose another output path"
                )
            if src.is_dir() and out.exists() and out.resolve().is_relative_to(src.resolve()):
                raise ValueError(
                    f"{out_name} {out} is a file of the input {in_name} {src}: writing it would "
                    "destroy part of that input; choose another output path"
                )
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if outs[a].resolve() == outs[b].resolve():
                raise ValueError(f"{a} and {b} are the same path {outs[a]}: one would overwrite the other")


def refuse_overwrite_files(
    outputs: Mapping[str, str | os.PathLike | None], files: Iterable[str | os.PathLike], what: str
) -> None:
    """:func:`refuse_overwrite` against many inputs at once (e.g. every audio file a manifest
    lists): ``ValueError`` naming the output and ``what`` the input is."""
    resolved = {Path(f).resolve() for f in files}
    for name, out in outputs.items():
        if out is not None and str(out) != "-" and Path(out).resolve() in resolved:
            raise ValueError(f"{name} {out} is {what}: writing it would destroy that input; choose another path")
