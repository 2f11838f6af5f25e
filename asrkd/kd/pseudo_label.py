"""Pseudo-labels for untranscribed audio from Whisper's decoder (sequence-level KD).

:func:`pseudo_label_manifest` fills ``text`` of every entry that has none with Whisper's
transcript (normalised to the student's characters) and keeps the confidence in the entry:

    "pseudo_label": {"teacher": "whisper-tiny.en", "avg_logprob": -0.21,
                     "ctc_wer": 12.5, "ctc_cer": 4.1}

The filter is distil-whisper's, with the CTC teacher as the second opinion: an utterance whose
decoder transcript and CTC teacher's greedy transcript differ by more than ``max_wer`` (WER of
the CTC transcript against the decoder's, in %) or ``max_cer`` is not labelled. It stays in the
output without ``text`` (the KD term still uses it) or, with ``drop_filtered``, is left out; either
way it is counted. ``min_avg_logprob`` filters on Whisper's own confidence. Entries that already
have a transcript pass through unchanged. The trainer then uses the texts for its CTC term and
the frame posteriors for its KD term, as for transcribed audio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from asrkd.data import Rejects, Utterance, load_manifest

__all__ = ["PseudoLabelResult", "pseudo_label_manifest"]


@dataclass
class PseudoLabelResult:
    utterances: list[Utterance]  # the output manifest, input order
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        return (
            f"pseudo-labelled {c['labelled']} of {c['unlabelled']} untranscribed entries "
            f"({c['filtered_wer']} over the WER limit, {c['filtered_cer']} over the CER limit, "
            f"{c['filtered_confidence']} under the confidence limit, {c['empty']} empty transcripts, "
            f"{c['failed']} unreadable or too long); {c['transcribed']} transcribed entries kept as they were"
        )


def _rates(ref: str, hyp: str) -> tuple[float, float]:
    """WER and CER (%) of ``hyp`` against ``ref`` (both normalised)."""
    from asrkd.eval.scoring import Counts, align, error_rate

    w = Counts.of(align(ref.split(), hyp.split()))
    c = Counts.of(align(list(" ".join(ref.split())), list(" ".join(hyp.split()))))
    return error_rate(w.errors, w.ref), error_rate(c.errors, c.ref)


def pseudo_label_manifest(
    teacher: Any,
    manifest: str | os.PathLike | list[Utterance],
    *,
    ctc_teacher: Any = None,
    max_wer: float | None = None,
    max_cer: float | None = None,
    min_avg_logprob: float | None = None,
    drop_filtered: bool = False,
    beam_size: int = 1,
    batch_size: int = 8,
    device: str = "cpu",
    rejects: Rejects | None = None,
    progress: bool = False,
) -> PseudoLabelResult:
    """Label the untranscribed entries of ``manifest`` with ``teacher`` (a Whisper spec).

    Args:
        ctc_teacher: a CTC model (checkpoint path, teacher spec or AcousticModel) whose greedy
            transcript is the second opinion for ``max_wer``/``max_cer``; needed by them.
    """
    from asrkd.eval.transcribe import transcribe_manifest

    if (max_wer is not None or max_cer is not None) and ctc_teacher is None:
        raise ValueError("max_wer/max_cer compare with the CTC teacher's transcript: give ctc_teacher")
    rejects = Rejects() if rejects is None else rejects
    utts = list(load_manifest(manifest, rejects) if isinstance(manifest, (str, os.PathLike)) else manifest)
    todo = [u for u in utts if not u.has_text]
    result = transcribe_manifest(
        teacher, todo, beam_size=beam_size, batch_size=batch_size, device=device, rejects=rejects, progress=progress
    )
    ctc_texts = _ctc_transcripts(ctc_teacher, todo, device, rejects, progress) if ctc_teacher is not None else {}
    counts = dict.fromkeys(("labelled", "filtered_wer", "filtered_cer", "filtered_confidence", "empty", "failed"), 0)
    counts.update(unlabelled=len(todo), transcribed=len(utts) - len(todo))
    spec = teacher if isinstance(teacher, str) else type(teacher).__name__
    out = []
    for u in utts:
        if u.has_text:
            out.append(u)
            continue
        verdict, label = _judge(u, result, ctc_texts, max_wer, max_cer, min_avg_logprob, spec)
        counts[verdict] += 1
        if verdict == "labelled":
            out.append(label)
        elif not drop_filtered:
            out.append(u)
    stats = dict(result.stats, ctc_teacher=str(ctc_teacher) if ctc_teacher is not None else None)
    return PseudoLabelResult(out, counts, stats)


def _judge(u, result, ctc_texts, max_wer, max_cer, min_avg_logprob, spec) -> tuple[str, Utterance | None]:
    """The verdict on one untranscribed entry and, when labelled, its new entry."""
    transcript = result.transcripts.get(u.id)
    if transcript is None:
        return "failed", None
    text = result.texts[u.id]
    if not text:
        return "empty", None
    info: dict[str, Any] = {"teacher": spec, "avg_logprob": round(transcript.avg_logprob, 4)}
    if u.id in ctc_texts:
        wer, cer = _rates(text, ctc_texts[u.id])
        info.update(ctc_wer=round(wer, 2), ctc_cer=round(cer, 2))
        if max_wer is not None and wer > max_wer:
            return "filtered_wer", None
        if max_cer is not None and cer > max_cer:
            return "filtered_cer", None
    if min_avg_logprob is not None and transcript.avg_logprob < min_avg_logprob:
        return "filtered_confidence", None
    extra = dict(u.extra, pseudo_label=info)
    return "labelled", Utterance(u.id, u.audio, u.duration, text, u.speaker, u.offset, extra)


def _ctc_transcripts(ctc_teacher, utts, device, rejects, progress) -> dict[str, str]:
    from asrkd.data.text import normalize_text
    from asrkd.eval.decode import decode_manifest

    hyps, stats = decode_manifest(ctc_teacher, utts, device=device, rejects=rejects, progress=progress)
    failed = set(stats["failed_ids"])
    return {uid: normalize_text(t) for uid, t in hyps.items() if uid not in failed}
