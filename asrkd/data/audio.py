"""Audio input: soundfile reading, mono mix-down, resampling to 16 kHz, integrity checks.

Every problem with a file is raised as :class:`AudioError` whose ``kind`` is one of
:data:`AUDIO_ERROR_KINDS`; callers skip the item and count it under that kind.
"""

from __future__ import annotations

import functools
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asrkd.atomic import atomic_write

SAMPLE_RATE = 16000

#: Kinds of :class:`AudioError`, in the order a file is checked.
AUDIO_ERROR_KINDS = (
    "missing_file",
    "unreadable",
    "truncated",
    "duration_mismatch",
    "empty_audio",
    "nan_audio",
    "out_of_range",
)

# A manifest's duration may differ from the file's length by this much (rounding, resampling,
# encoder padding of compressed formats); beyond it the manifest describes other audio.
DURATION_TOLERANCE_S = 0.1
DURATION_TOLERANCE_REL = 0.02


def duration_tolerance(declared: float) -> float:
    """How far (seconds) a whole file's length may be from its declared duration: max(0.1 s, 2 %)."""
    return max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_REL * declared)


def check_duration(path: str | Path, have: float, declared: float) -> None:
    """Raise ``AudioError(kind="duration_mismatch")`` when ``have`` seconds of audio are not the
    ``declared`` ones within :func:`duration_tolerance`."""
    if abs(have - declared) > duration_tolerance(declared):
        raise AudioError(
            f"{path}: holds {have:.2f} s, the manifest says {declared:.2f} s (more than "
            f"{duration_tolerance(declared):.2f} s apart)",
            "duration_mismatch",
        )


# WAV writers that stream to a pipe (espeak-ng --stdout, sox -) put a placeholder size in the
# header; libsndfile then reports "should be" sizes that are no sign of truncation.
_STREAMING_SIZE = 0x7FFF0000


class AudioError(ValueError):
    """A file that cannot be used as audio. ``kind`` names the reason class (see
    :data:`AUDIO_ERROR_KINDS`), the message says what exactly is wrong."""

    def __init__(self, reason: str, kind: str = "unreadable"):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What the header says: ``frames`` per channel at ``sample_rate``."""

    sample_rate: int
    frames: int
    channels: int
    subtype: str | None = None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _librosa_load(path: str, sr: int | None, offset: float, duration: float | None):
    # Formats libsndfile cannot read (m4a, ...). librosa is imported lazily: its first call
    # JIT-compiles for tens of seconds, so it must stay out of the common path.
    import librosa

    wave, rate = librosa.load(path, sr=sr, mono=True, offset=offset, duration=duration, dtype=np.float32)
    return wave, int(rate)


# Formats libsndfile reads itself: if it cannot, librosa/audioread will not either.
_SNDFILE_SUFFIXES = {
    ".wav",
    ".wave",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aif",
    ".aiff",
    ".au",
    ".snd",
    ".sph",
    ".nist",
    ".w64",
    ".caf",
    ".rf64",
    ".htk",
    ".voc",
}


def _try_librosa(path: Path, err: Exception) -> bool:
    """Fall back to librosa only for a suffix libsndfile does not handle (m4a, ...)."""
    recognised = "Format not recognised" in str(err) or "unknown format" in str(err).lower()
    return recognised and path.suffix.lower() not in _SNDFILE_SUFFIXES


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file", "missing_file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file", "unreadable")


def audio_info(path: str | Path, *, verify: bool = True) -> AudioInfo:
    """Header information without decoding the file.

    With ``verify`` the cheap integrity checks run too: a WAV whose data chunk is shorter
    than its header says, or a compressed file whose last block cannot be decoded, raises
    ``AudioError(kind="truncated")``; zero frames raise ``kind="empty_audio"``. Only the last
    few thousand frames are decoded, never the whole file.
    """
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as err:
        if _try_librosa(path, err):
            return _librosa_info(path)
        raise AudioError(f"{path}: unreadable ({err})", "unreadable") from err
    except RuntimeError as err:  # soundfile raises plain RuntimeError on some corrupt headers
        raise AudioError(f"{path}: unreadable ({err})", "unreadable") from err
    out = AudioInfo(int(info.samplerate), int(info.frames), int(info.channels), info.subtype)
    if not verify:
        return out
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info or "", re.MULTILINE)
    if m and int(m.group(1)) < _STREAMING_SIZE and int(m.group(1)) > int(m.group(2)):
        raise AudioError(f"{path}: truncated: data chunk says {m.group(1)} bytes, file holds {m.group(2)}", "truncated")
    if out.frames <= 0:
        raise AudioError(f"{path}: no samples", "empty_audio")
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(max(0, f.frames - 4096))
            tail = f.read(dtype="float32")
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: truncated or corrupt near the end ({err})", "truncated") from err
    if len(tail) == 0:
        raise AudioError(f"{path}: header promises {out.frames} frames, none readable at the end", "truncated")
    return out


def _librosa_info(path: Path) -> AudioInfo:
    try:
        wave, rate = _librosa_load(str(path), None, 0.0, None)
    except Exception as err:
        raise AudioError(
            f"{path}: unreadable (not an audio format soundfile or librosa can read: {err})", "unreadable"
        ) from err
    if wave.size == 0:
        raise AudioError(f"{path}: no samples", "empty_audio")
    return AudioInfo(rate, int(wave.shape[-1]), 1, None)


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig, new, dtype=torch.float32)


def resample(wave: torch.Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling (torchaudio, kernel cached per rate pair). wave: (..., N)."""
    if orig_rate == new_rate:
        return wave
    with torch.no_grad():
        return _resampler(int(orig_rate), int(new_rate))(wave.float())


def load_audio(
    path: str | Path,
    *,
    offset: float = 0.0,
    duration: float | None = None,
    sample_rate: int = SAMPLE_RATE,
    declared_duration: float | None = None,
) -> torch.Tensor:
    """Read ``duration`` seconds from ``offset`` (whole file: ``None``) as float32 mono.

    Returns a (N,) tensor at ``sample_rate`` (channels averaged, resampled with torchaudio).
    Raises :class:`AudioError` for a missing, unreadable, truncated or empty file, a segment
    outside the file (more than 10 ms past its end), and NaN/Inf samples. With
    ``declared_duration`` (a whole file's length as a manifest states it) a file whose length
    differs by more than :func:`duration_tolerance` raises ``kind="duration_mismatch"``,
    checked from the header before decoding.
    """
    path = Path(path)
    _check_exists(path)
    if offset < 0 or (duration is not None and duration <= 0):
        raise AudioError(f"{path}: bad segment offset={offset} duration={duration}", "out_of_range")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            if declared_duration is not None:
                check_duration(path, f.frames / rate, declared_duration)
            start = int(round(offset * rate))
            if start >= f.frames and f.frames > 0:
                raise AudioError(
                    f"{path}: segment starts at {offset:.3f} s, file has {f.frames / rate:.3f} s", "out_of_range"
                )
            want = f.frames - start if duration is None else int(round(duration * rate))
            if start:
                f.seek(start)
            data = f.read(frames=want, dtype="float32", always_2d=True)
            if duration is not None and len(data) < want - max(1, rate // 100):
                # A segment running past the end by more than 10 ms: the segment table and the
                # file disagree, do not pretend the shorter read is the utterance.
                raise AudioError(
                    f"{path}: segment {offset:.3f}+{duration:.3f} s runs past the end ({f.frames / rate:.3f} s)",
                    "out_of_range",
                )
            if duration is None and len(data) < want:
                raise AudioError(f"{path}: header promises {want} frames, read {len(data)}", "truncated")
    except AudioError:
        raise
    except sf.LibsndfileError as err:
        if not _try_librosa(path, err):
            kind = "truncated" if "lost sync" in str(err) or "seek" in str(err) else "unreadable"
            raise AudioError(f"{path}: {kind} ({err})", kind) from err
        try:
            mono, rate = _librosa_load(str(path), None, offset, duration)
        except Exception as err2:
            raise AudioError(
                f"{path}: unreadable (not an audio format soundfile or librosa can read: {err2})", "unreadable"
            ) from err2
        data = mono[:, None]
        if declared_duration is not None:
            check_duration(path, len(data) / rate, declared_duration)
    except RuntimeError as err:
        raise AudioError(f"{path}: unreadable ({err})", "unreadable") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples", "empty_audio")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(f"{path}: {bad} NaN/Inf samples", "nan_audio")
    wave = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    return resample(wave, rate, sample_rate)


def scan_nonfinite(path: str | Path, block_frames: int = 1 << 18) -> int:
    """Count NaN/Inf samples by streaming the file in blocks (float/double files only can
    hold them; callers check ``AudioInfo.subtype`` first)."""
    bad = 0
    with sf.SoundFile(str(path)) as f:
        for block in f.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
            bad += int((~np.isfinite(block)).sum())
    return bad


def decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an in-memory audio file (e.g. a subprocess's stdout) to float32 mono."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"not audio ({len(data)} bytes): {err}", "unreadable") from err
    if wave.shape[0] == 0:
        raise AudioError("no samples", "empty_audio")
    return wave.mean(axis=1), int(rate)


def write_audio(path: str | Path, wave: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono audio as 16-bit PCM (WAV or FLAC by suffix), clipping to [-1, 1]; atomically
    (a killed writer leaves no half file), without fsync (such files can be made again)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    fmt = Path(path).suffix.lstrip(".").upper() or "WAV"
    atomic_write(path, lambda f: sf.write(f, wave, sample_rate, subtype="PCM_16", format=fmt), durable=False)
