"""Importers: Kaldi data dirs, LibriSpeech trees, plain folders (and, in :mod:`asrkd.data.interop`,
NeMo manifests, Lhotse CutSets, Hugging Face datasets) to manifest entries.

Each importer parses its layout into candidates, then :func:`finalize` checks them all the
same way: audio headers are read in parallel (durations come from headers, never from
decoding whole files; only float files are decoded to look for NaN/Inf), texts are
normalised and checked against the vocabulary and the CTC length bound, and duplicate ids
are dropped. Every skipped item goes to a :class:`~asrkd.data.rejects.Rejects` with a
reason.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from asrkd.atomic import refuse_overwrite

from .audio import AudioError, AudioInfo, audio_info, decode_bytes, scan_nonfinite, write_audio
from .features import ctc_min_frames, frames_after_subsampling
from .manifest import MAX_DURATION_S, ManifestError, Utterance
from .rejects import Rejects
from .text import normalize_text

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


def _one_to_one(
    keys: list[str], safe: Callable[[str], str], digest: Callable[[str], str], fold: Callable[[str], str]
) -> tuple[dict[str, str], tuple[str, str] | None]:
    """A name per key: ``safe(key)``, with ``-<digest(key)>`` appended when ``safe`` changed the
    key or when two names are equal after ``fold``; also the first two keys whose names still
    coincide (a hash collision), or None. Hashing depends only on the key itself where it can,
    so a name does not change when other keys come or go."""
    hashed = {key for key in keys if safe(key) != key}
    while True:
        names = {key: f"{safe(key)}-{digest(key)}" if key in hashed else key for key in keys}
        owners: dict[str, list[str]] = {}
        for key, name in names.items():
            owners.setdefault(fold(name), []).append(key)
        clash = [group for group in owners.values() if len(group) > 1]
        if not clash:
            return names, None
        grow = {key for group in clash for key in group} - hashed
        if not grow:
            return names, (clash[0][0], clash[0][1])
        hashed |= grow


def pipe_file_stems(ids: list[str], digest: Callable[[str], str] = _id_digest) -> dict[str, str]:
    """A file-name stem per recording id, one-to-one even on case-insensitive filesystems.

    The stem is the id with unsafe characters replaced, leading dots dropped and cut to
    ``_STEM_MAX`` characters; when that changed the id, or when two stems are equal ignoring
    case, ``-<hash of the exact id>`` is appended. Raises :class:`PrepareError` naming two ids
    whose names still coincide (a hash collision).
    """

    def safe(uid: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", uid).lstrip(".")[:_STEM_MAX] or "rec"

    stems, clash = _one_to_one(ids, safe, digest, str.lower)
    if clash:
        a, b = clash
        raise PrepareError(
            f"recordings {a!r} and {b!r} would share the audio file {stems[a]}.flac (rename one of them)"
        )
    return stems


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _is_pipe(audio: str) -> bool:
    return audio.rstrip().endswith("|")


def refuse_outputs_over_inputs(outputs: Mapping[str, str | os.PathLike | None], inputs: Mapping[str, str]) -> None:
    """Raise ``ValueError`` naming both when an output (name -> path) is a file the import
    reads (``inputs``: path -> what it is, e.g. ``audio of recording a (wav.scp:3)``) through
    any spelling, link or hard link, or when two outputs are one path: what
    :func:`asrkd.atomic.refuse_overwrite` does, for any number of inputs. A missing output can
    only be a missing input (a piped recording's audio that another entry lists as its plain
    audio); about one ``stat`` per input (100 000 inputs: under a second)."""
    outs = {name: Path(p) for name, p in outputs.items() if p is not None and str(p) != "-"}
    by_inode: dict[tuple[int, int], str] = {}
    missing: dict[str, str] = {}  # real path of an output that does not exist yet -> its name
    real_outs: dict[str, str] = {}
    for name, out in outs.items():
        real = os.path.realpath(out)
        if real in real_outs:
            raise ValueError(f"{real_outs[real]} and {name} are the same path {out}: one would overwrite the other")
        real_outs[real] = name
        try:
            st = os.stat(out)
            by_inode[(st.st_dev, st.st_ino)] = name
        except OSError:
            missing[real] = name
    if not outs:
        return
    missing_names = {os.path.basename(real) for real in missing}
    for path, what in inputs.items():
        try:
            st = os.stat(path)
            name = by_inode.get((st.st_dev, st.st_ino))
        except OSError:  # realpath only where it can match: same name, or a dangling link
            name = None
            if missing and (os.path.basename(path) in missing_names or os.path.islink(path)):
                name = missing.get(os.path.realpath(path))
        if name is not None:  # the usual message of every command, naming both
            refuse_overwrite({name: outs[name]}, {what: path})
            raise ValueError(f"{name} {outs[name]} is the input {what} {path}: writing it would destroy the input")


def finalize(
    candidates: list[Candidate],
    rejects: Rejects,
    options: CheckOptions,
    *,
    jobs: int = 2,
    pipe_dir: Path | None = None,
    progress: bool = True,
    allow_commands: bool = False,
    outputs: Mapping[str, str | os.PathLike | None] | None = None,
    inputs: Mapping[str, str] | None = None,
) -> list[Utterance]:
    """Check candidates and turn the good ones into :class:`Utterance` (text normalised,
    audio paths absolute, durations from headers).

    Piped candidates run only with ``allow_commands``. Before any audio is read or a command
    run, :func:`refuse_outputs_over_inputs` checks ``outputs`` (what the caller will write)
    and the piped recordings' files under ``pipe_dir`` against ``inputs`` (every file the
    source lists)."""
    kept, texts = _check_texts(_drop_duplicates(candidates, rejects), rejects, options)
    infos, resolved = _check_audio(
        kept,
        jobs=jobs,
        pipe_dir=pipe_dir,
        progress=progress,
        allow_commands=allow_commands,
        outputs=outputs or {},
        inputs=inputs or {},
    )
    out: list[Utterance] = []
    for c in kept:
        info = infos[c.audio]
        if isinstance(info, AudioError):
            rejects.add(c.id, info.kind, f"{c.id}: {info.reason}")
            continue
        u = _utterance(c, info, texts[c.id], resolved[c.audio], rejects, options)
        if u is not None:
            out.append(u)
    return out


def _drop_duplicates(candidates: list[Candidate], rejects: Rejects) -> list[Candidate]:
    unique: list[Candidate] = []
    seen: set[str] = set()
    for c in candidates:
        if c.id in seen:
            rejects.add(c.id, "duplicate_id", f"{c.id}: duplicate utterance id (the first one is kept)")
            continue
        seen.add(c.id)
        unique.append(c)
    return unique


def _check_texts(
    candidates: list[Candidate], rejects: Rejects, options: CheckOptions
) -> tuple[list[Candidate], dict[str, str | None]]:
    """Normalisation and vocabulary (cheap: before touching audio)."""
    texts: dict[str, str | None] = {}
    kept: list[Candidate] = []
    for c in candidates:
        if c.text is None:
            texts[c.id] = None
            kept.append(c)
            continue
        norm = normalize_text(c.text)
        if not norm:
            rejects.add(
                c.id,
                "empty_text",
                f"{c.id}: empty or whitespace-only text"
                + (f" ({c.text.strip()!r} after normalisation)" if c.text.strip() else ""),
            )
            continue
        if options.tokenizer is not None:
            oov = options.tokenizer.oov_chars(norm)
            if oov:
                rejects.add(c.id, "oov_chars", f"{c.id}: characters outside the vocabulary: {''.join(oov)!r}")
                continue
        texts[c.id] = norm
        kept.append(c)
    return kept, texts


def _check_audio(
    kept: list[Candidate],
    *,
    jobs: int,
    pipe_dir: Path | None,
    progress: bool,
    allow_commands: bool,
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str],
):
    """Each audio source once, in parallel: ({source: AudioInfo | AudioError}, {source: absolute path})."""
    sources = sorted({c.audio for c in kept})
    names = {c.audio: c.recording or c.id for c in kept}
    stems = pipe_file_stems(sorted({names[s] for s in sources if _is_pipe(s)}))
    pipe_files = {
        s: pipe_dir / f"{stems[names[s]]}.flac"
        for s in sources
        if _is_pipe(s) and pipe_dir is not None and allow_commands
    }
    refuse_outputs_over_inputs(
        {**outputs, **{f"--pipe-dir file of recording {names[s]}": p for s, p in pipe_files.items()}}, inputs
    )

    def work(src: str):
        path = src
        if _is_pipe(src):
            if not allow_commands:
                raise AudioError(f"piped wav.scp entry not run without allow_commands=True: {src}", "unsupported")
            if pipe_dir is None:
                raise AudioError(f"piped wav.scp entry needs a folder to store its audio: {src}", "unsupported")
            path = run_pipe(src, pipe_files[src])
        return path, probe(path)

    infos: dict[str, AudioInfo | AudioError] = {}
    resolved: dict[str, str] = {}
    with (
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
        _progress(len(sources), "checking audio", progress) as bar,
    ):
        futures = {src: pool.submit(work, src) for src in sources}
        for src, fut in futures.items():
            try:
                path, info = fut.result()
                resolved[src] = str(Path(path).resolve())
                infos[src] = info
            except AudioError as err:
                infos[src] = err
            bar.update(1)
    return infos, resolved


def _utterance(
    c: Candidate, info: AudioInfo, text: str | None, audio: str, rejects: Rejects, options: CheckOptions
) -> Utterance | None:
    """The per-utterance checks that need the duration; None (and a record) for a reject."""
    total = info.duration
    if c.offset is not None:
        end = total if c.end is None else c.end
        if c.offset >= total or end > total + _SEGMENT_SLACK_S:
            rejects.add(
                c.id, "out_of_range", f"{c.id}: segment {c.offset:.2f}-{end:.2f} s outside {c.audio} ({total:.2f} s)"
            )
            return None
        duration = min(end, total) - c.offset
    else:
        duration = total
    if duration <= 0:
        rejects.add(c.id, "empty_audio", f"{c.id}: zero-length segment")
        return None
    if duration > MAX_DURATION_S:
        rejects.add(
            c.id,
            "too_long",
            f"{c.id}: {duration / 3600:.1f} h of {c.audio} is longer than an utterance "
            f"may be ({MAX_DURATION_S / 3600:.0f} h): cut it into segments (a Kaldi segments file)",
        )
        return None
    if text is not None:
        labels = options.tokenizer.encode(text) if options.tokenizer is not None else list(text)
        frames = frames_after_subsampling(
            int(duration * 16000), subsampling=options.subsampling, hop_ms=options.hop_ms, win_ms=options.win_ms
        )
        need = ctc_min_frames(labels)
        if frames < need:
            rejects.add(
                c.id,
                "too_short_for_ctc",
                f"{c.id}: {duration:.2f} s gives {frames} frames after "
                f"{options.subsampling}x subsampling, CTC needs {need} for {len(labels)} labels",
            )
            return None
    try:
        return Utterance(
            id=c.id, audio=audio, duration=round(duration, 4), text=text, speaker=c.speaker, offset=c.offset
        )
    except ManifestError as err:  # e.g. an offset past the sanity bound: one reject, not a crash
        rejects.add(c.id, err.kind, err.reason)
        return None


# -- Kaldi ----------------------------------------------------------------------------------------
Row = tuple[str, str, int]  # (key, rest of the line, line number)


def _read_table(path: Path, rejects: Rejects, min_fields: int, what: str) -> tuple[list[Row], dict[str, str]]:
    """The rows of a Kaldi table, and ``{key: reason}`` for lines that are not UTF-8.

    Lines are decoded one by one, so a stray byte spoils only its own line, named FILE:LINE.
    When such a line's key is readable the caller rejects what the key names (an utterance
    whose transcript cannot be read must not become unlabelled audio); otherwise the line is
    recorded here as ``malformed_line`` with id ``NAME:LINE``. Other malformed lines too."""
    rows: list[Row] = []
    broken: dict[str, str] = {}
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as err:
            reason = f"{path}:{n}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
            key = _readable_key(raw)
            if key is None:
                rejects.add(f"{path.name}:{n}", "malformed_line", reason)
            else:
                broken.setdefault(key, f"{key}: {reason}")
            continue
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
    return rows, broken


def _readable_key(raw: bytes) -> str | None:
    head = raw.split(maxsplit=1)
    try:
        return head[0].decode("utf-8") if head else None
    except UnicodeDecodeError:
        return None


def _first_wins(rows: list[Row], rejects: Rejects, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value, n in rows:
        if key in out:
            rejects.add(key, "duplicate_id", f"{name}:{n}: {key} listed twice (the first line is kept)")
            continue
        out[key] = value
    return out


def _kaldi_map(path: Path, rejects: Rejects, what: str, bad: dict[str, str], inputs: dict[str, str]) -> dict[str, str]:
    """An optional ``text`` / ``utt2spk``; keys of lines that are not UTF-8 go to ``bad``."""
    if not path.is_file():
        return {}
    inputs[str(path.resolve())] = f"Kaldi file {path.name} of the source"
    rows, broken = _read_table(path, rejects, 2, what)
    for key, reason in broken.items():
        bad.setdefault(key, reason)
    return _first_wins(rows, rejects, path.name)


def _kaldi_recordings(
    path: Path, rejects: Rejects, inputs: dict[str, str], allow_commands: bool
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """``wav.scp``: ({recording: absolute path or command}, {recording: (kind, reason) it cannot be
    used for}); the unusable ones are recorded. Every file it lists goes to ``inputs``."""
    inputs[str(path.resolve())] = "Kaldi file wav.scp of the source"
    rows, broken = _read_table(path, rejects, 2, "path or command |")
    unusable = {key: ("malformed_line", reason) for key, reason in broken.items()}
    recordings: dict[str, str] = {}
    piped = 0
    for key, value, n in rows:
        value = value.strip()
        why = None
        if value.endswith("|"):
            piped += 1
            if not allow_commands:
                why = (
                    f"wav.scp:{n}: {key}: a piped entry runs the shell command {value[:-1].strip()!r}; wav.scp "
                    "commands run only with --allow-commands (allow_commands=True), for data dirs you trust"
                )
        elif re.search(r"\.ark:\d+$", value) or (re.search(r":\d+$", value) and not os.path.exists(value)):
            inputs.setdefault(os.path.abspath(value.rsplit(":", 1)[0]), f"archive of recording {key} (wav.scp:{n})")
            why = (
                f"wav.scp:{n}: {key}: archive offsets ({value}) are not supported; "
                "write the audio out with wav-copy first"
            )
        else:
            value = os.path.abspath(value)
            inputs.setdefault(value, f"audio of recording {key} (wav.scp:{n})")
        if key in recordings or key in unusable:  # its file is still an input: never written over
            rejects.add(key, "duplicate_id", f"wav.scp:{n}: recording {key} listed twice (the first is kept)")
            continue
        if why is not None:
            unusable[key] = ("unsupported", why)
            continue
        recordings[key] = value
    if piped and not allow_commands and not recordings:
        raise PrepareError(
            f"{path}: no entry can be used without running shell commands ({piped} piped `cmd |` "
            "entries); asrkd runs them only with --allow-commands (library: allow_commands=True): "
            "pass it if you trust this data dir"
        )
    for key, (kind, reason) in unusable.items():
        rejects.add(key, kind, reason)
    return recordings, unusable


def import_kaldi(
    src: str | Path,
    rejects: Rejects,
    options: CheckOptions | None = None,
    *,
    jobs: int = 2,
    pipe_dir: Path | None = None,
    progress: bool = True,
    allow_commands: bool = False,
    outputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> list[Utterance]:
    """A Kaldi data dir: ``wav.scp`` (required), ``text``, ``utt2spk``, ``segments`` (optional).

    ``wav.scp`` paths relative to the current folder are resolved as Kaldi does (relative to
    where the recipe runs). Piped entries (``cmd ... |``) are shell commands: with
    ``allow_commands`` they are run with bash and their audio stored as FLAC under
    ``pipe_dir``; without, they are rejected as ``unsupported`` (a :class:`PrepareError` when
    no entry is left). ``ark:`` offsets are rejected as ``unsupported``; with ``segments``,
    every segment of a recording that cannot be used is recorded too. Lines that are not
    UTF-8 are ``malformed_line`` naming FILE:LINE, and the utterance (or recording) they name
    is rejected. Utterances without a ``text`` line are unlabelled. ``outputs`` (name ->
    path the caller will write) are refused, before anything is run, when one is a file the
    data dir lists (see :func:`refuse_outputs_over_inputs`).
    """
    src = Path(src)
    options = options or CheckOptions()
    if not (src / "wav.scp").is_file():
        raise PrepareError(f"{src}: not a Kaldi data dir (no wav.scp)")
    inputs: dict[str, str] = {}
    recordings, unusable = _kaldi_recordings(src / "wav.scp", rejects, inputs, allow_commands)
    bad: dict[str, str] = {}  # utterance id -> why its text / utt2spk line cannot be read
    texts = _kaldi_map(src / "text", rejects, "text", bad, inputs)
    spk = {k: v.strip() for k, v in _kaldi_map(src / "utt2spk", rejects, "speaker", bad, inputs).items()}
    if (src / "segments").is_file():
        inputs[str((src / "segments").resolve())] = "Kaldi file segments of the source"
        candidates, listed = _kaldi_segments(src / "segments", recordings, unusable, texts, spk, rejects)
    else:
        listed = set(unusable)
        candidates = [
            Candidate(key, value, texts.get(key), spk.get(key), recording=key) for key, value in recordings.items()
        ]
        listed.update(recordings)
    for key, reason in bad.items():
        rejects.add(key, "malformed_line", reason)
    candidates = [c for c in candidates if c.id not in bad]
    for key in texts:
        if key not in listed:
            rejects.add(key, "orphan_text", f"text: {key} has no audio entry (wav.scp/segments)")
    return finalize(
        candidates,
        rejects,
        options,
        jobs=jobs,
        pipe_dir=pipe_dir,
        progress=progress,
        allow_commands=allow_commands,
        outputs=outputs,
        inputs=inputs,
    )


def _kaldi_segments(
    path: Path,
    recordings: dict[str, str],
    unusable: dict[str, tuple[str, str]],
    texts: dict[str, str],
    spk: dict[str, str],
    rejects: Rejects,
) -> tuple[list[Candidate], set[str]]:
    """One candidate per good ``segments`` line, and every utterance id the file lists."""
    candidates: list[Candidate] = []
    rows, broken = _read_table(path, rejects, 2, "recording start end")
    listed = set(broken)
    for key, reason in broken.items():
        rejects.add(key, "malformed_line", reason)
    for key, rest, n in rows:
        listed.add(key)
        fields = rest.split()
        try:
            if len(fields) != 3:
                raise ValueError
            rec, start, end = fields[0], float(fields[1]), float(fields[2])
        except ValueError:
            rejects.add(
                key, "malformed_line", f"segments:{n}: expected '<utt> <recording> <start> <end>', got {key} {rest!r}"
            )
            continue
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or (end != -1 and end <= start):
            rejects.add(key, "malformed_line", f"segments:{n}: {key}: bad times start={start} end={end}")
            continue
        if rec in unusable:
            kind, why = unusable[rec]
            rejects.add(key, kind, f"segments:{n}: {key}: its recording {rec} cannot be used ({why})")
            continue
        if rec not in recordings:
            rejects.add(key, "missing_file", f"segments:{n}: {key}: recording {rec} is not in wav.scp")
            continue
        candidates.append(
            Candidate(
                key, recordings[rec], texts.get(key), spk.get(key), start, None if end == -1 else end, recording=rec
            )
        )
    return candidates, listed


# -- LibriSpeech ----------------------------------------------------------------------------------
def import_librispeech(
    src: str | Path,
    rejects: Rejects,
    options: CheckOptions | None = None,
    *,
    jobs: int = 2,
    progress: bool = True,
    outputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> list[Utterance]:
    """A LibriSpeech tree (any folder above ``SPEAKER/CHAPTER/``): ``*.trans.txt`` lines
    ``ID TEXT`` with ``ID.flac`` beside them; speaker = the first part of the id. Audio with no
    transcript line is kept as unlabelled; a transcript line that is not UTF-8 rejects its
    utterance. ``outputs``: as for :func:`import_kaldi`."""
    src = Path(src)
    options = options or CheckOptions()
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    trans_files = sorted(src.rglob("*.trans.txt"))
    if not trans_files:
        raise PrepareError(f"{src}: no *.trans.txt files (not a LibriSpeech tree)")
    candidates: list[Candidate] = []
    listed: set[Path] = set()
    inputs: dict[str, str] = {}
    for tf in trans_files:
        inputs[str(tf.resolve())] = "transcript file of the source"
        rows, broken = _read_table(tf, rejects, 2, "text")
        for key, reason in broken.items():  # its audio is not imported as unlabelled either
            rejects.add(key, "malformed_line", reason)
            listed.add(_librispeech_audio(tf.parent, key))
        for key, text, _ in rows:
            audio = _librispeech_audio(tf.parent, key)
            listed.add(audio)
            if key not in broken:
                candidates.append(Candidate(key, str(audio.resolve()), text, key.split("-")[0]))
    for d in sorted({tf.parent for tf in trans_files}):
        for audio in sorted(d.glob("*.flac")):
            if audio not in listed:
                candidates.append(Candidate(audio.stem, str(audio.resolve()), None, audio.stem.split("-")[0]))
    inputs.update((c.audio, f"audio of {c.id}") for c in candidates)
    return finalize(candidates, rejects, options, jobs=jobs, progress=progress, outputs=outputs, inputs=inputs)


def _librispeech_audio(folder: Path, key: str) -> Path:
    audio = folder / f"{key}.flac"
    return folder / f"{key}.wav" if not audio.exists() and (folder / f"{key}.wav").exists() else audio


# -- folder ---------------------------------------------------------------------------------------
def import_folder(
    src: str | Path,
    rejects: Rejects,
    options: CheckOptions | None = None,
    *,
    jobs: int = 2,
    progress: bool = True,
    outputs: Mapping[str, str | os.PathLike | None] | None = None,
) -> list[Utterance]:
    """Audio files anywhere under ``src`` with optional same-stem ``.txt`` transcripts (no
    ``.txt``: unlabelled). id = path relative to ``src`` without suffix, whitespace -> ``_``;
    when that changed the path or two files would share an id, ``-<hash of the relative path>``
    is appended (see :func:`_folder_ids`); files differing only in suffix (``x.wav``,
    ``x.flac``) share a transcript: the first is kept, the others are ``duplicate_id``.
    speaker = the relative folder, if any. ``outputs``: as for :func:`import_kaldi`."""
    src = Path(src)
    options = options or CheckOptions()
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    audio_files = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    if not audio_files:
        raise PrepareError(f"{src}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    stems = {p.with_suffix("") for p in audio_files}
    first: dict[Path, Path] = {}  # stem -> its first audio file (sorted: .flac before .wav)
    for p in audio_files:
        first.setdefault(p.with_suffix(""), p)
    ids = _folder_ids(src, first)
    candidates: list[Candidate] = []
    for p in audio_files:
        stem = p.with_suffix("")
        uid = ids[stem]
        if first[stem] != p:  # one .txt cannot label two files: the same recording in two formats
            rejects.add(
                uid,
                "duplicate_id",
                f"{uid}: {p} has the same name as {first[stem]} but another suffix (the first one is kept)",
            )
            continue
        rel = stem.relative_to(src)
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
    inputs = {
        str(p.resolve()): f"file {p.relative_to(src)} of the source"
        for p in files
        if p.suffix.lower() in (*AUDIO_SUFFIXES, ".txt")
    }
    return finalize(candidates, rejects, options, jobs=jobs, progress=progress, outputs=outputs, inputs=inputs)


def _folder_ids(src: Path, files: dict[Path, Path]) -> dict[Path, str]:
    """One id per audio file (``files``: path without suffix -> the file): the relative path
    with whitespace as ``_``, plus ``-<hash of the exact relative path>`` when that changed it
    or when it equals another file's id (``a b.wav`` and ``a_b.wav`` are two utterances)."""
    rel = {stem.relative_to(src).as_posix(): stem for stem in files}
    ids, clash = _one_to_one(sorted(rel), lambda r: re.sub(r"\s+", "_", r), _id_digest, lambda i: i)
    if clash:
        a, b = (files[rel[k]] for k in clash)
        raise PrepareError(f"{a} and {b} would get the same utterance id {ids[clash[0]]} (rename one of them)")
    return {rel[k]: uid for k, uid in ids.items()}


def _interop(name: str) -> Callable[..., list[Utterance]]:
    """An importer of :mod:`asrkd.data.interop` (imported when used: it builds on this module)."""

    def run(*args, **kwargs) -> list[Utterance]:
        from . import interop

        return getattr(interop, name)(*args, **kwargs)

    run.__name__ = name
    return run


IMPORTERS: dict[str, Callable[..., list[Utterance]]] = {
    "kaldi": import_kaldi,
    "librispeech": import_librispeech,
    "folder": import_folder,
    "nemo": _interop("import_nemo"),
    "lhotse": _interop("import_lhotse"),
    "hf": _interop("import_hf"),
}
