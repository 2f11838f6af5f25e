"""Data where it lives: NeMo manifests, Lhotse CutSets, Hugging Face ``datasets`` folders.

Importers (``asrkd prepare {nemo|lhotse|hf} SRC OUT.jsonl``) parse their format into
:class:`~asrkd.data.importers.Candidate` entries and hand them to
:func:`~asrkd.data.importers.finalize`, so audio headers, texts, vocabulary, CTC length and
duplicate ids are checked exactly as for Kaldi dirs, and every skipped item is counted.

- **NeMo** (``MANIFEST.json``, one JSON object per line): ``audio_filepath`` (relative paths are
  relative to the manifest's folder), ``duration``, ``text`` (optional: unlabelled), optional
  ``offset``; id = the file stem (``-<offset ms>`` for a segment; clashes get a hash).
- **Lhotse** (``CUTS.jsonl`` or ``.jsonl.gz``, a CutSet as ``CutSet.to_file`` writes it): one
  entry per supervision of every ``MonoCut`` (its segment: cut start + supervision start, clipped
  to the cut; text; speaker), a cut without supervisions is one unlabelled entry. Recordings must
  have a ``file`` source; multi-channel recordings are mixed down (asrkd reads mono).
  :func:`write_lhotse_cuts` writes an asrkd manifest back as such a CutSet.
- **Hugging Face**: a folder written by ``Dataset.save_to_disk`` (needs ``datasets``:
  ``asrkd[hf]``), read with ``load_from_disk``; its audio column is read without decoding
  (``Audio(decode=False)``: the file when its path exists, else its bytes written out under
  ``OUT stem + '.audio/'``); or an audio folder (audio files + ``metadata.csv``/``.jsonl`` with
  ``file_name``), read directly. Text from the first of ``text``, ``sentence``,
  ``transcription``, ``transcript``, ``normalized_text`` present.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .importers import Candidate, CheckOptions, PrepareError, finalize
from .manifest import Utterance
from .rejects import Rejects

TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text")


def _json_lines(path: Path, rejects: Rejects) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    rejects.add(f"{path}:{n}", "malformed_line", f"{path}:{n}: not JSON ({err.msg})")
                    continue
                if not isinstance(obj, dict):
                    rejects.add(f"{path}:{n}", "malformed_line", f"{path}:{n}: not a JSON object")
                    continue
                yield n, obj
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise PrepareError(f"{path}: cannot read it ({err})") from None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _safe_id(text: str) -> str:
    return "_".join(text.split()) or "utt"


# -------------------------------------------------------------------------------- NeMo
def _nemo_candidate(n: int, obj: dict, base: Path, path: Path, rejects: Rejects) -> Candidate | None:
    where = f"{path}:{n}"
    audio, duration = obj.get("audio_filepath"), _number(obj.get("duration"))
    offset = _number(obj.get("offset", 0.0))
    if not isinstance(audio, str) or not audio:
        rejects.add(where, "bad_field", f"{where}: audio_filepath missing or not a string")
        return None
    if duration is None or duration <= 0 or offset is None:
        rejects.add(where, "bad_field", f"{where}: duration must be a number > 0 and offset >= 0")
        return None
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        rejects.add(where, "bad_field", f"{where}: text is not a string")
        return None
    audio_path = Path(audio) if os.path.isabs(audio) else base / audio
    uid = _safe_id(Path(audio).stem) + (f"-{round(offset * 1000):08d}" if "offset" in obj else "")
    segment = "offset" in obj
    return Candidate(
        uid,
        str(audio_path),
        text,
        obj.get("speaker") if isinstance(obj.get("speaker"), str) else None,
        offset if segment else None,
        offset + duration if segment else None,
    )


def import_nemo(src: str | Path, rejects: Rejects, options: CheckOptions | None = None, **kw) -> list[Utterance]:
    """A NeMo ASR manifest (see the module docstring)."""
    path = Path(src)
    if not path.is_file():
        raise PrepareError(f"{path}: not a NeMo manifest file")
    cands = [c for n, obj in _json_lines(path, rejects) if (c := _nemo_candidate(n, obj, path.parent, path, rejects))]
    return finalize(_unique(cands), rejects, options or CheckOptions(), **_finalize_kw(kw, path, cands))


def _unique(cands: list[Candidate]) -> list[Candidate]:
    """Ids made from file names can repeat (two folders, one stem): the later ones get a hash of
    their audio path and segment, so no entry is lost as a duplicate."""
    seen: set[str] = set()
    for c in cands:
        if c.id in seen:
            c.id = f"{c.id}-{hashlib.sha1(f'{c.audio}|{c.offset}'.encode()).hexdigest()[:10]}"
        seen.add(c.id)
    return cands


def _finalize_kw(kw: Mapping[str, Any], src: Path, cands: Sequence[Candidate]) -> dict[str, Any]:
    inputs = {str(src.resolve()): "the source manifest"}
    inputs.update({str(Path(c.audio).resolve()): f"audio of {c.id}" for c in cands})
    return {**kw, "inputs": inputs}


# -------------------------------------------------------------------------------- Lhotse
def _recording_path(rec: Mapping[str, Any], base: Path) -> tuple[str | None, str]:
    sources = rec.get("sources") if isinstance(rec, Mapping) else None
    if not isinstance(sources, list) or not sources:
        return None, "the recording has no sources"
    files = [s for s in sources if isinstance(s, Mapping) and s.get("type") == "file"]
    if not files or not isinstance(files[0].get("source"), str):
        kinds = sorted({str(s.get("type")) for s in sources if isinstance(s, Mapping)})
        return None, f"recording source type {', '.join(kinds)}: only 'file' sources are read"
    p = files[0]["source"]
    return (p if os.path.isabs(p) else str(base / p)), ""


def _cut_candidates(n: int, cut: dict, base: Path, path: Path, rejects: Rejects) -> list[Candidate]:
    where = f"{path}:{n}"
    if cut.get("type", "MonoCut") != "MonoCut":
        rejects.add(str(cut.get("id", where)), "unsupported", f"{where}: a {cut.get('type')}: only MonoCut is read")
        return []
    cid, start, dur = cut.get("id"), _number(cut.get("start")), _number(cut.get("duration"))
    if not isinstance(cid, str) or start is None or not dur:
        rejects.add(where, "bad_field", f"{where}: a cut needs id (str), start >= 0 and duration > 0")
        return []
    audio, why = _recording_path(cut.get("recording"), base)
    if audio is None:
        rejects.add(cid, "unsupported", f"{cid}: {why}")
        return []
    sups = [s for s in cut.get("supervisions") or [] if isinstance(s, Mapping)]
    if not sups:
        return [Candidate(_safe_id(cid), audio, None, None, start, start + dur)]
    out = []
    for s in sups:
        raw = s.get("start", 0.0)
        s_dur = _number(s.get("duration"))
        sid = s.get("id") if isinstance(s.get("id"), str) else f"{cid}-{len(out)}"
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not s_dur:
            rejects.add(sid, "bad_field", f"{sid}: supervision start/duration missing or not numbers")
            continue
        # lhotse lets a supervision reach outside its cut: the entry is the part inside it
        a, b = start + max(0.0, float(raw)), min(start + dur, start + float(raw) + s_dur)
        if b <= a:
            rejects.add(sid, "out_of_range", f"{sid}: the supervision lies outside its cut {cid}")
            continue
        text = s.get("text") if isinstance(s.get("text"), str) else None
        speaker = s.get("speaker") if isinstance(s.get("speaker"), str) else None
        out.append(Candidate(_safe_id(sid), audio, text, speaker, a, b))
    return out


def import_lhotse(src: str | Path, rejects: Rejects, options: CheckOptions | None = None, **kw) -> list[Utterance]:
    """A Lhotse CutSet JSONL(.gz) (see the module docstring)."""
    path = Path(src)
    if not path.is_file():
        raise PrepareError(f"{path}: not a Lhotse CutSet file")
    cands = [c for n, cut in _json_lines(path, rejects) for c in _cut_candidates(n, cut, path.parent, path, rejects)]
    return finalize(_unique(cands), rejects, options or CheckOptions(), **_finalize_kw(kw, path, cands))


def write_lhotse_cuts(path: str | Path, utterances: Sequence[Utterance]) -> None:
    """An asrkd manifest as a Lhotse CutSet (JSONL, gzip when ``path`` ends in ``.gz``): one
    ``MonoCut`` per utterance, its ``Recording`` (the whole file, from its header) and, with text,
    one ``SupervisionSegment``. Written atomically."""
    from asrkd.atomic import atomic_write

    from .audio import audio_info

    lines = []
    for u in utterances:
        info = audio_info(u.audio, verify=False)
        rec_id = f"{_safe_id(Path(u.audio).stem)}-{hashlib.sha1(u.audio.encode()).hexdigest()[:8]}"
        recording = {
            "id": rec_id,
            "sources": [{"type": "file", "channels": list(range(info.channels)), "source": str(u.audio)}],
            "sampling_rate": info.sample_rate,
            "num_samples": info.frames,
            "duration": info.duration,
            "channel_ids": list(range(info.channels)),
        }
        cut = {"id": u.id, "start": u.offset or 0.0, "duration": u.duration, "channel": 0, "supervisions": []}
        if u.text is not None:
            sup = {"id": u.id, "recording_id": rec_id, "start": 0.0, "duration": u.duration, "channel": 0}
            sup.update(text=u.text, **({"speaker": u.speaker} if u.speaker else {}))
            cut["supervisions"].append(sup)
        cut.update(recording=recording, type="MonoCut")
        lines.append(json.dumps(cut, ensure_ascii=False) + "\n")
    data = "".join(lines).encode("utf-8")
    atomic_write(path, lambda f: f.write(gzip.compress(data, mtime=0) if str(path).endswith(".gz") else data))


# -------------------------------------------------------------------------------- Hugging Face
def _load_hf(src: Path, split: str | None):
    try:
        import datasets
    except ImportError as err:
        raise PrepareError("prepare hf needs the datasets package: pip install 'asrkd[hf]'") from err
    ds = datasets.load_from_disk(str(src))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) > 1:
            raise PrepareError(f"{src} holds the splits {', '.join(names)}: choose one with --split")
        name = split or names[0]
        if name not in ds:
            raise PrepareError(f"{src} has no split {name!r} (it has {', '.join(names)})")
        ds = ds[name]
    audio_cols = [c for c, f in ds.features.items() if isinstance(f, datasets.Audio)]
    if not audio_cols:
        raise PrepareError(f"{src}: no Audio column (columns: {', '.join(ds.column_names)})")
    return ds.cast_column(audio_cols[0], datasets.Audio(decode=False)), audio_cols[0]


def _hf_audio_file(value: Any, uid: str, audio_dir: Path, src: Path) -> str | None:
    """A path to the example's audio: its file when it exists, else its bytes written out."""
    if not isinstance(value, Mapping):
        return None
    path, data = value.get("path"), value.get("bytes")
    if isinstance(path, str) and path:
        for candidate in (Path(path), src / path):
            if candidate.is_file():
                return str(candidate.resolve())
    if isinstance(data, (bytes, bytearray)) and data:
        from asrkd.atomic import atomic_write

        suffix = Path(path).suffix.lower() if isinstance(path, str) and Path(path).suffix else ".wav"
        out = audio_dir / f"{hashlib.sha1(uid.encode()).hexdigest()[:16]}{suffix}"
        atomic_write(out, lambda f: f.write(bytes(data)), durable=False)
        return str(out)
    return None


def import_hf(
    src: str | Path,
    rejects: Rejects,
    options: CheckOptions | None = None,
    *,
    split: str | None = None,
    audio_dir: str | Path | None = None,
    **kw,
) -> list[Utterance]:
    """A Hugging Face ``datasets`` folder (see the module docstring); ``audio_dir`` receives the
    audio of examples stored as bytes (default: beside ``src``, ``<src name>.audio``)."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: not a folder (a saved dataset or an audio folder)")
    if not any((src / n).is_file() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
        cands = _audiofolder_candidates(src, rejects)
        return finalize(_unique(cands), rejects, options or CheckOptions(), **_finalize_kw(kw, src, cands))
    ds, col = _load_hf(src, split)
    audio_dir = Path(audio_dir) if audio_dir is not None else src.parent / f"{src.name}.audio"
    text_col = next((c for c in TEXT_COLUMNS if c in ds.column_names), None)
    id_col = next((c for c in ("id", "utt_id", "segment_id", "file") if c in ds.column_names), None)
    speaker_col = next((c for c in ("speaker", "speaker_id", "client_id") if c in ds.column_names), None)
    cands = []
    for i, ex in enumerate(ds):
        uid = _safe_id(str(ex[id_col])) if id_col and ex.get(id_col) not in (None, "") else f"{src.name}-{i:06d}"
        audio = _hf_audio_file(ex[col], uid, audio_dir, src)
        if audio is None:
            rejects.add(uid, "missing_file", f"{uid}: example {i} has neither an audio file nor audio bytes")
            continue
        text = ex.get(text_col) if text_col else None
        speaker = ex.get(speaker_col) if speaker_col else None
        cands.append(
            Candidate(
                uid, audio, text if isinstance(text, str) else None, str(speaker) if speaker is not None else None
            )
        )
    return finalize(_unique(cands), rejects, options or CheckOptions(), **_finalize_kw(kw, src, cands))


def _audiofolder_candidates(src: Path, rejects: Rejects) -> list[Candidate]:
    """``datasets``' audio-folder layout read directly (its loader decodes audio with torchcodec):
    ``metadata.csv`` or ``metadata.jsonl`` anywhere under ``src`` with a ``file_name`` column
    relative to the metadata's folder, and the text in one of :data:`TEXT_COLUMNS`."""
    import csv

    metas = sorted(src.rglob("metadata.csv")) + sorted(src.rglob("metadata.jsonl"))
    if not metas:
        raise PrepareError(
            f"{src}: neither a saved dataset (dataset_info.json) nor an audio folder (metadata.csv/.jsonl)"
        )
    cands = []
    for meta in metas:
        if meta.suffix == ".csv":
            with open(meta, newline="", encoding="utf-8") as f:
                rows = list(enumerate(csv.DictReader(f), 2))
        else:
            rows = list(_json_lines(meta, rejects))
        for n, row in rows:
            name = row.get("file_name")
            if not isinstance(name, str) or not name:
                rejects.add(f"{meta}:{n}", "bad_field", f"{meta}:{n}: no file_name")
                continue
            text = next((row[c] for c in TEXT_COLUMNS if isinstance(row.get(c), str)), None)
            speaker = next((str(row[c]) for c in ("speaker", "speaker_id", "client_id") if row.get(c)), None)
            rel = (meta.parent / name).relative_to(src).with_suffix("").as_posix()
            cands.append(Candidate(_safe_id(rel), str(meta.parent / name), text, speaker))
    return cands
