"""Atomic file writes: a crash or a kill leaves the old file or the new one, never a part.

Every output a later stage or a resumed run reads (checkpoints, cache shards and index,
manifests, hypotheses, run summaries) is written through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

# mkstemp makes 0600 files; outputs get the mode a plain open() would give them
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)``: into a temporary file in the same folder
    (created when missing), fsync'd, renamed over ``path``, and the folder fsync'd so the
    rename itself is durable. Text modes use UTF-8. A failure removes the temporary file.
    Stale temporaries of killed writers are named ``.<name>.*.tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
