"""Importers: Kaldi data dirs, LibriSpeech trees and plain folders to manifest entries.

Each importer parses its layout into candidates, then :func:`finalize` checks them all the
same way: audio headers are read in parallel (durations come from headers, never from
decoding whole files; only float files are decoded to look for NaN/Inf), texts are
normalised and checked against the vocabulary and the CTC length bound, and duplicate ids
are dropped. Every skipped item goes to a :class:`~asrkd.data.rejects.Rejects` with a
reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .audio import AudioError, AudioInfo, audio_info, decode_bytes, scan_nonfinite, write_audio
from .features import ctc_min_frames, frames_after_subsampling
from .manifest import Utterance
from .rejects import Rejects
from .tokenizer import normalize_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".sph", ".aif", ".aiff", ".au", ".m4a")
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_SEGMENT_SLACK_S = 0.01  # a segment may end this far past the file end (rounding in segment tables)


class PrepareError(RuntimeError):
    """The source as a whole cannot be imported (e.g. no wav.scp); not a per-item problem."""


@dataclass
class Candidate:
    id: str
    audio: str  # a path, or a Kaldi command ending in "|"
    text: str | None = None
    speaker: str | None = None
    offset: float | None = None
    end: float | None = None  # segment end in seconds; None = end of file
    recording: str | None = None  # Kaldi recording id (names the audio a piped entry produces)


@dataclass
class CheckOptions:
    """Text checks run by :func:`finalize`. ``tokenizer=None`` disables the vocabulary check
    (the CTC check then counts normalised characters)."""

    tokenizer: object | None = None
    subsampling: int = 4
    hop_ms: float = 10.0
    win_ms: float = 25.0


# -- probing audio ------------------------------------------------------------------------------
def probe(path: str) -> AudioInfo:
    """Header + integrity check of one file; float files are also scanned for NaN/Inf."""
    info = audio_info(path, verify=True)
    if info.subtype in _FLOAT_SUBTYPES:
        bad = scan_nonfinite(path)
        if bad:
            raise AudioError(f"{path}: {bad} NaN/Inf samples", "nan_audio")
    return info


def run_pipe(command: str, out_path: Path, timeout: float = 600.0) -> str:
    """Run a Kaldi ``wav.scp`` command (``cmd ... |``) and store its audio as 16-bit FLAC."""
    cmd = command.rstrip()[:-1].strip()
    try:
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AudioError(f"command timed out after {timeout:.0f} s: {cmd}", "pipe_failed") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise AudioError(f"command exited with {proc.returncode}: {cmd}: {tail[0]}", "pipe_failed")
    try:
        wave, rate = decode_bytes(proc.stdout)
    except AudioError as err:
        raise AudioError(f"command gave no usable audio: {cmd}: {err}", "pipe_failed") from err
    import numpy as np

    if not np.isfinite(wave).all():
        raise AudioError(f"command output has NaN/Inf samples: {cmd}", "nan_audio")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(out_path, wave, rate)
    return str(out_path)


_STEM_MAX = 100  # characters of an id kept in a file name (ASCII after sanitising: far below 255 bytes)


def _id_digest(uid: str) -> str:
    return hashlib.sha1(uid.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def pipe_file_stems(ids: list[str], digest: Callable[[str], str] = _id_digest) -> dict[str, str]:
    """A file-name stem per recording id, one-to-one even on case-insensitive filesystems.

    The stem is the id with unsafe characters replaced, leading dots dropped and cut to
    ``_STEM_MAX`` characters; when that changed the id, or when two stems are equal ignoring
    case, ``-<hash of the exact id>`` is appended. Raises :class:`PrepareError` naming two ids
    whose names still coincide (a hash collision).
    """
    def safe(uid: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", uid).lstrip(".")[:_STEM_MAX] or "rec"

    hashed = {uid for uid in ids if safe(uid) != uid}
    while True:
        stems = {uid: f"{safe(uid)}-{digest(uid)}" if uid in hashed else uid for uid in ids}
        owners: dict[str, list[str]] = {}
        for uid, stem in stems.items():
            owners.setdefault(stem.lower(), []).append(uid)
        clash = [group for group in owners.values() if len(group) > 1]
        if not clash:
            return stems
        grow = {uid for group in clash for uid in group} - hashed
        if not grow:
            a, b = clash[0][:2]
            raise PrepareError(f"recordings {a!r} and {b!r} would share the audio file {stems[a]}.flac "
                               "(rename one of them)")
        hashed |= grow


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def finalize(candidates: list[Candidate], rejects: Rejects, options: CheckOptions, *, jobs: int = 2,
             pipe_dir: Path | None = None, progress: bool = True) -> list[Utterance]:
    """Check candidates and turn the good ones into :class:`Utterance` (text normalised,
    audio paths absolute, durations from headers)."""
    # 1. duplicate ids: keep the first
    unique: list[Candidate] = []
    seen: set[str] = set()
    for c in candidates:
        if c.id in seen:
            rejects.add(c.id, "duplicate_id", f"{c.id}: duplicate utterance id (the first one is kept)")
            continue
        seen.add(c.id)
        unique.append(c)

    # 2. texts (cheap, before touching audio)
    texts: dict[str, str | None] = {}
    kept: list[Candidate] = []
    for c in unique:
        if c.text is None:
            texts[c.id] = None
            kept.append(c)
            continue
        norm = normalize_text(c.text)
        if not norm:
            rejects.add(c.id, "empty_text", f"{c.id}: empty or whitespace-only text"
                        + (f" ({c.text.strip()!r} after normalisation)" if c.text.strip() else ""))
            continue
        if options.tokenizer is not None:
            oov = options.tokenizer.oov_chars(norm)
            if oov:
                rejects.add(c.id, "oov_chars", f"{c.id}: characters outside the vocabulary: {''.join(oov)!r}")
                continue
        texts[c.id] = norm
        kept.append(c)

    # 3. audio, once per file, in parallel
    sources = sorted({c.audio for c in kept})
    infos: dict[str, AudioInfo | AudioError] = {}
    resolved: dict[str, str] = {}

    def work(src: str):
        path = src
        if src.rstrip().endswith("|"):
            if pipe_dir is None:
                raise AudioError(f"piped wav.scp entry needs a folder to store its audio: {src}", "unsupported")
            path = run_pipe(src, pipe_dir / f"{stems[names[src]]}.flac")
        return path, probe(path)

    names = {c.audio: c.recording or c.id for c in kept}
    stems = pipe_file_stems(sorted({names[s] for s in sources if s.rstrip().endswith("|")}))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, \
            _progress(len(sources), "checking audio", progress) as bar:
        futures = {src: pool.submit(work, src) for src in sources}
        for src, fut in futures.items():
            try:
                path, info = fut.result()
                resolved[src] = str(Path(path).resolve())
                infos[src] = info
            except AudioError as err:
                infos[src] = err
            bar.update(1)

    # 4. per-utterance checks that need the duration
    out: list[Utterance] = []
    for c in kept:
        info = infos[c.audio]
        if isinstance(info, AudioError):
            rejects.add(c.id, info.kind, f"{c.id}: {info.reason}")
            continue
        total = info.duration
        if c.offset is not None:
            end = total if c.end is None else c.end
            if c.offset >= total or end > total + _SEGMENT_SLACK_S:
                rejects.add(c.id, "out_of_range", f"{c.id}: segment {c.offset:.2f}-{end:.2f} s outside "
                            f"{c.audio} ({total:.2f} s)")
                continue
            duration = min(end, total) - c.offset
        else:
            duration = total
        if duration <= 0:
            rejects.add(c.id, "empty_audio", f"{c.id}: zero-length segment")
            continue
        text = texts[c.id]
        if text is not None:
            labels = options.tokenizer.encode(text) if options.tokenizer is not None else list(text)
            frames = frames_after_subsampling(int(duration * 16000), subsampling=options.subsampling,
                                              hop_ms=options.hop_ms, win_ms=options.win_ms)
            need = ctc_min_frames(labels)
            if frames < need:
                rejects.add(c.id, "too_short_for_ctc", f"{c.id}: {duration:.2f} s gives {frames} frames after "
                            f"{options.subsampling}x subsampling, CTC needs {need} for {len(labels)} labels")
                continue
        out.append(Utterance(id=c.id, audio=resolved[c.audio], duration=round(duration, 4), text=text,
                             speaker=c.speaker, offset=c.offset))
    return out


# -- Kaldi ----------------------------------------------------------------------------------------
def _read_table(path: Path, rejects: Rejects, min_fields: int, what: str) -> list[tuple[str, str, int]]:
    """(key, rest, line number) of a Kaldi table; malformed lines are recorded."""
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as err:
            raise PrepareError(f"{path}: not UTF-8 text ({err})") from err
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < min_fields:
            key = parts[0]
            if what == "text":  # an id with no words: an empty transcript, not a parse error
                rows.append((key, "", n))
                continue
            rejects.add(f"{path.name}:{n}", "malformed_line", f"{path}:{n}: expected '<id> <{what}>', got {line!r}")
            continue
        rows.append((parts[0], parts[1] if len(parts) > 1 else "", n))
    return rows


def _first_wins(rows: list[tuple[str, str, int]], rejects: Rejects, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value, n in rows:
        if key in out:
            rejects.add(key, "duplicate_id", f"{name}:{n}: {key} listed twice (the first line is kept)")
            continue
        out[key] = value
    return out


def import_kaldi(src: str | Path, rejects: Rejects, options: CheckOptions | None = None, *, jobs: int = 2,
                 pipe_dir: Path | None = None, progress: bool = True) -> list[Utterance]:
    """A Kaldi data dir: ``wav.scp`` (required), ``text``, ``utt2spk``, ``segments`` (optional).

    ``wav.scp`` paths relative to the current folder are resolved as Kaldi does (relative to
    where the recipe runs). Piped entries (``cmd ... |``) are run with bash and their audio
    stored as FLAC under ``pipe_dir``; ``ark:`` offsets are rejected as ``unsupported``.
    Utterances without a ``text`` line are unlabelled.
    """
    src = Path(src)
    options = options or CheckOptions()
    if not (src / "wav.scp").is_file():
        raise PrepareError(f"{src}: not a Kaldi data dir (no wav.scp)")
    recordings: dict[str, str] = {}
    for key, value, n in _read_table(src / "wav.scp", rejects, 2, "path or command |"):
        value = value.strip()
        if key in recordings:
            rejects.add(key, "duplicate_id", f"wav.scp:{n}: recording {key} listed twice (the first is kept)")
            continue
        if not value.endswith("|"):
            if re.search(r"\.ark:\d+$", value) or (re.search(r":\d+$", value) and not os.path.exists(value)):
                rejects.add(key, "unsupported", f"wav.scp:{n}: {key}: archive offsets ({value}) are not supported; "
                            "write the audio out with wav-copy first")
                continue
            value = os.path.abspath(value)
        recordings[key] = value
    texts = _first_wins(_read_table(src / "text", rejects, 2, "text"), rejects, "text") \
        if (src / "text").is_file() else {}
    spk = {k: v.strip() for k, v in _first_wins(_read_table(src / "utt2spk", rejects, 2, "speaker"),
                                                 rejects, "utt2spk").items()} \
        if (src / "utt2spk").is_file() else {}

    candidates: list[Candidate] = []
    listed: set[str] = set()  # utterance ids with an audio entry, usable or not
    if (src / "segments").is_file():
        for key, rest, n in _read_table(src / "segments", rejects, 2, "recording start end"):
            listed.add(key)
            fields = rest.split()
            try:
                if len(fields) != 3:
                    raise ValueError
                rec, start, end = fields[0], float(fields[1]), float(fields[2])
            except ValueError:
                rejects.add(key, "malformed_line", f"segments:{n}: expected '<utt> <recording> <start> <end>', "
                            f"got {key} {rest!r}")
                continue
            if start < 0 or (end != -1 and end <= start):
                rejects.add(key, "malformed_line", f"segments:{n}: {key}: bad times start={start} end={end}")
                continue
            if rec not in recordings:
                rejects.add(key, "missing_file", f"segments:{n}: {key}: recording {rec} is not in wav.scp")
                continue
            candidates.append(Candidate(key, recordings[rec], texts.get(key), spk.get(key), start,
                                        None if end == -1 else end, recording=rec))
    else:
        listed.update(rejects.ids("unsupported"))
        for key, value in recordings.items():
            listed.add(key)
            candidates.append(Candidate(key, value, texts.get(key), spk.get(key), recording=key))
    for key in texts:
        if key not in listed:
            rejects.add(key, "orphan_text", f"text: {key} has no audio entry (wav.scp/segments)")
    return finalize(candidates, rejects, options, jobs=jobs, pipe_dir=pipe_dir, progress=progress)


# -- LibriSpeech ----------------------------------------------------------------------------------
def import_librispeech(src: str | Path, rejects: Rejects, options: CheckOptions | None = None, *,
                       jobs: int = 2, progress: bool = True) -> list[Utterance]:
    """A LibriSpeech tree (any folder above ``SPEAKER/CHAPTER/``): ``*.trans.txt`` lines
    ``ID TEXT`` with ``ID.flac`` beside them; speaker = the first part of the id. Audio with no
    transcript line is kept as unlabelled."""
    src = Path(src)
    options = options or CheckOptions()
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    trans_files = sorted(src.rglob("*.trans.txt"))
    if not trans_files:
        raise PrepareError(f"{src}: no *.trans.txt files (not a LibriSpeech tree)")
    candidates: list[Candidate] = []
    listed: set[Path] = set()
    for tf in trans_files:
        for key, text, n in _read_table(tf, rejects, 2, "text"):
            audio = tf.parent / f"{key}.flac"
            if not audio.exists() and (tf.parent / f"{key}.wav").exists():
                audio = tf.parent / f"{key}.wav"
            listed.add(audio)
            candidates.append(Candidate(key, str(audio.resolve()), text, key.split("-")[0]))
    for d in sorted({tf.parent for tf in trans_files}):
        for audio in sorted(d.glob("*.flac")):
            if audio not in listed:
                candidates.append(Candidate(audio.stem, str(audio.resolve()), None, audio.stem.split("-")[0]))
    return finalize(candidates, rejects, options, jobs=jobs, progress=progress)


# -- folder ---------------------------------------------------------------------------------------
def import_folder(src: str | Path, rejects: Rejects, options: CheckOptions | None = None, *, jobs: int = 2,
                  progress: bool = True) -> list[Utterance]:
    """Audio files anywhere under ``src`` with optional same-stem ``.txt`` transcripts (no
    ``.txt``: unlabelled). id = path relative to ``src`` without suffix (whitespace -> ``_``);
    speaker = the relative folder, if any."""
    src = Path(src)
    options = options or CheckOptions()
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    audio_files = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    if not audio_files:
        raise PrepareError(f"{src}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    stems = {p.with_suffix("") for p in audio_files}
    candidates: list[Candidate] = []
    for p in audio_files:
        rel = p.relative_to(src).with_suffix("")
        uid = re.sub(r"\s+", "_", rel.as_posix())
        txt = p.with_suffix(".txt")
        text = None
        if txt.is_file():
            try:
                text = txt.read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                rejects.add(uid, "bad_field", f"{uid}: transcript {txt} is not UTF-8 ({err.reason})")
                continue
        speaker = rel.parent.as_posix() if rel.parent != Path(".") else None
        candidates.append(Candidate(uid, str(p.resolve()), text, speaker))
    for p in files:
        if p.suffix.lower() == ".txt" and p.with_suffix("") not in stems:
            rid = re.sub(r"\s+", "_", p.relative_to(src).as_posix())
            rejects.add(rid, "orphan_text", f"{p}: transcript without an audio file of the same stem")
    return finalize(candidates, rejects, options, jobs=jobs, progress=progress)


IMPORTERS: dict[str, Callable[..., list[Utterance]]] = {
    "kaldi": import_kaldi,
    "librispeech": import_librispeech,
    "folder": import_folder,
}
