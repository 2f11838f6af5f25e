"""Audio files named on the command line, as utterances: ``asrkd decode a.wav b.flac DIR/``.

:func:`utterances_from_paths` turns files and folders (searched recursively for the suffixes of
:data:`asrkd.data.importers.AUDIO_SUFFIXES`) into :class:`~asrkd.data.manifest.Utterance` entries
without text. A file named directly gets its stem as id; a file found in a folder gets its path
relative to that folder (without suffix); whitespace becomes ``_`` and an id seen before gets
``-2``, ``-3``, ... Any sample rate and channel count is fine: the decoders read audio with
:func:`asrkd.data.audio.load_audio` (channels averaged, resampled to 16 kHz with torchaudio).
A path that does not exist or a file that cannot be read is recorded in ``rejects`` and skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from asrkd.data.audio import AudioError, audio_info
from asrkd.data.importers import AUDIO_SUFFIXES
from asrkd.data.manifest import Utterance
from asrkd.data.rejects import Rejects

__all__ = ["utterances_from_paths"]


def _found(paths: Iterable[str | os.PathLike], rejects: Rejects) -> list[tuple[Path, str]]:
    """(file, base id) for every audio file the paths name."""
    out = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                rejects.add(str(p), "missing_file", f"{p}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in it")
            out += [(f, f.relative_to(p).with_suffix("").as_posix()) for f in files]
        elif p.is_file():
            out.append((p, p.stem))
        else:
            rejects.add(str(p), "missing_file", f"{p}: no such file or folder")
    return out


def utterances_from_paths(paths: Iterable[str | os.PathLike], rejects: Rejects | None = None) -> list[Utterance]:
    """Unlabelled utterances for audio files and folders (see the module docstring)."""
    rejects = Rejects() if rejects is None else rejects
    seen: dict[str, int] = {}
    utts = []
    for path, base in _found(paths, rejects):
        base = re.sub(r"\s+", "_", base) or "utt"
        n = seen.get(base, 0) + 1
        seen[base] = n
        uid = base if n == 1 else f"{base}-{n}"
        try:
            info = audio_info(path)
        except AudioError as err:
            rejects.add(uid, err.kind, f"{uid}: {err.reason}")
            continue
        utts.append(Utterance(uid, str(path.resolve()), info.duration))
    return utts
