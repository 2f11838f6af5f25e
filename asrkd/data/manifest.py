"""Manifests: one :class:`Utterance` per JSONL line.

Format (one JSON object per line)::

    {"id": "spk1-utt3", "audio": "/data/a.flac", "duration": 3.21,
     "text": "hello world", "speaker": "spk1", "offset": 12.5}

``id`` (unique, no whitespace), ``audio`` (path; a relative path is relative to the
manifest's folder) and ``duration`` (seconds, > 0, at most :data:`MAX_DURATION_S` = 24 h) are
required. ``text`` is optional:
an entry without it is unlabelled audio, allowed everywhere. ``offset`` (seconds) makes the
entry the segment ``[offset, offset + duration)`` of the file (at most :data:`MAX_OFFSET_S` =
30 days in); without it the entry is the whole file. Other keys are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from asrkd.atomic import atomic_write

from .rejects import Rejects

_KNOWN = ("id", "audio", "duration", "text", "speaker", "offset")
# Sanity bounds: a larger value is a corrupt field, not audio (1e308 s overflowed int(samples) in the
# dataset). No utterance is a day long; no recording a segment is cut from runs for a month.
MAX_DURATION_S = 24 * 3600.0
MAX_OFFSET_S = 30 * 24 * 3600.0


class ManifestError(ValueError):
    """A manifest entry that cannot be used; ``kind`` is a :data:`~asrkd.data.rejects.KINDS` key."""

    def __init__(self, reason: str, kind: str = "bad_field", id: str | None = None):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.id = id


@dataclass
class Utterance:
    id: str
    audio: str
    duration: float
    text: str | None = None
    speaker: str | None = None
    offset: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def validate(self) -> None:
        """Raise :class:`ManifestError` naming the field and the reason."""
        if not isinstance(self.id, str) or not self.id or any(c.isspace() for c in self.id):
            raise ManifestError(f"id must be a non-empty string without whitespace, got {self.id!r}", id=str(self.id))
        if not isinstance(self.audio, str) or not self.audio:
            raise ManifestError(f"{self.id}: audio must be a non-empty path string, got {self.audio!r}", id=self.id)
        if (
            isinstance(self.duration, bool)
            or not isinstance(self.duration, (int, float))
            or not math.isfinite(self.duration)
        ):
            raise ManifestError(f"{self.id}: duration must be a finite number, got {self.duration!r}", id=self.id)
        if self.duration <= 0:
            raise ManifestError(f"{self.id}: duration {self.duration} s: no audio", "empty_audio", id=self.id)
        if self.duration > MAX_DURATION_S:
            raise ManifestError(
                f"{self.id}: duration {self.duration!r} s is above the sanity bound of "
                f"{MAX_DURATION_S:.0f} s (24 h): a corrupt field, not an utterance",
                id=self.id,
            )
        if self.text is not None:
            if not isinstance(self.text, str):
                raise ManifestError(f"{self.id}: text must be a string, got {type(self.text).__name__}", id=self.id)
            if not self.text.strip():
                raise ManifestError(f"{self.id}: empty or whitespace-only text", "empty_text", id=self.id)
        if self.speaker is not None and not isinstance(self.speaker, str):
            raise ManifestError(f"{self.id}: speaker must be a string, got {self.speaker!r}", id=self.id)
        if self.offset is not None and (
            isinstance(self.offset, bool)
            or not isinstance(self.offset, (int, float))
            or not math.isfinite(self.offset)
            or self.offset < 0
        ):
            raise ManifestError(f"{self.id}: offset must be a number >= 0, got {self.offset!r}", id=self.id)
        if self.offset is not None and self.offset > MAX_OFFSET_S:
            raise ManifestError(
                f"{self.id}: offset {self.offset!r} s is above the sanity bound of "
                f"{MAX_OFFSET_S:.0f} s (30 days): a corrupt field",
                id=self.id,
            )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "audio": self.audio, "duration": round(float(self.duration), 4)}
        if self.text is not None:
            d["text"] = self.text
        if self.speaker is not None:
            d["speaker"] = self.speaker
        if self.offset is not None:
            d["offset"] = round(float(self.offset), 4)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | Path | None = None) -> "Utterance":
        """Validate one decoded JSON object; a relative ``audio`` path is joined to ``base_dir``."""
        if not isinstance(d, Mapping):
            raise ManifestError(f"expected a JSON object, got {type(d).__name__}", "malformed_line")
        missing = [k for k in ("id", "audio", "duration") if k not in d]
        if missing:
            raise ManifestError(f"{d.get('id', '?')}: missing field(s) {', '.join(missing)}", id=d.get("id"))
        audio = d["audio"]
        if isinstance(audio, str) and audio and base_dir is not None and not os.path.isabs(audio):
            audio = os.path.normpath(os.path.join(base_dir, audio))
        return cls(
            id=d["id"],
            audio=audio,
            duration=d["duration"],
            text=d.get("text"),
            speaker=d.get("speaker"),
            offset=d.get("offset"),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    def load_audio(self, sample_rate: int | None = None):
        """The utterance's waveform, (N,) float32 at ``sample_rate`` (default
        :data:`asrkd.data.audio.SAMPLE_RATE`; see :func:`asrkd.data.audio.load_audio`).

        Every command loads utterance audio through here, so all check it alike: a segment
        entry (``offset``) must lie inside its file (``out_of_range``); a whole-file entry whose
        file's length is not ``duration`` within max(0.1 s, 2 %) raises
        ``AudioError(kind="duration_mismatch")``: the manifest describes other audio, and
        batching, budgets and the CTC check all trusted its duration.
        """
        from .audio import SAMPLE_RATE, load_audio

        sample_rate = SAMPLE_RATE if sample_rate is None else sample_rate
        if self.offset is not None:
            return load_audio(self.audio, offset=self.offset, duration=self.duration, sample_rate=sample_rate)
        return load_audio(self.audio, sample_rate=sample_rate, declared_duration=self.duration)


def iter_manifest_lines(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``("PATH:LINE", decoded JSON value)`` for every non-blank line of a JSONL file.

    Lines are read as bytes and decoded one by one, so one line that is not UTF-8 or not
    JSON spoils only itself: it is yielded as a :class:`ManifestError` (kind
    ``malformed_line``) in place of the value. A UTF-8 byte-order mark before the first
    line is allowed.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield (
                    where,
                    ManifestError(
                        f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})", "malformed_line"
                    ),
                )
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, ManifestError(f"{where}: not valid JSON ({err.msg})", "malformed_line")


def load_manifest(path: str | Path, rejects: Rejects | None = None, *, audio_only: bool = False) -> list[Utterance]:
    """Read a JSONL manifest.

    Malformed lines (not UTF-8, not JSON), invalid fields, empty texts and duplicate ids
    (later ones) are recorded in ``rejects`` and skipped; without ``rejects`` the first such
    line raises :class:`ManifestError` naming the file, line and reason. ``audio_only`` (for
    commands that only need the audio, e.g. decoding): an empty or whitespace-only ``text``
    is read as no text instead of a reject.
    """
    path = Path(path)
    base = path.parent
    out: list[Utterance] = []
    seen: set[str] = set()
    for where, d in iter_manifest_lines(path):
        try:
            if isinstance(d, ManifestError):
                raise d
            if audio_only and isinstance(d, dict) and isinstance(d.get("text"), str) and not d["text"].strip():
                d = {k: v for k, v in d.items() if k != "text"}
            try:
                u = Utterance.from_dict(d, base)
            except ManifestError as err:
                raise ManifestError(f"{where}: {err.reason}", err.kind, err.id) from None
            if u.id in seen:
                raise ManifestError(f"{where}: duplicate id {u.id}", "duplicate_id", u.id)
        except ManifestError as err:
            if rejects is None:
                raise
            rejects.add(err.id if err.id is not None else where, err.kind, err.reason)
            continue
        seen.add(u.id)
        out.append(u)
    return out


def save_manifest(path: str | Path, utterances: Iterable[Utterance], *, relative_to: str | Path | None = None) -> None:
    """Write utterances as JSONL atomically (temporary file + rename).

    With ``relative_to`` (usually the manifest's folder) audio paths under it are written
    relative to it, making the folder relocatable.
    """
    rel = Path(relative_to).resolve() if relative_to is not None else None

    def write(f) -> None:
        for u in utterances:
            d = u.to_dict()
            if rel is not None:
                try:
                    d["audio"] = Path(u.audio).resolve().relative_to(rel).as_posix()
                except ValueError:
                    pass
            f.write(json.dumps(d, ensure_ascii=False) + "\n")

    atomic_write(path, write, mode="w")


def filter_by_duration(
    utterances: Iterable[Utterance],
    min_duration: float | None = None,
    max_duration: float | None = None,
    rejects: Rejects | None = None,
) -> list[Utterance]:
    """Keep utterances with ``min_duration <= duration <= max_duration``; the others are
    recorded in ``rejects`` (kinds ``too_short`` / ``too_long``)."""
    out = []
    for u in utterances:
        if min_duration is not None and u.duration < min_duration:
            if rejects is not None:
                rejects.add(u.id, "too_short", f"{u.id}: {u.duration:.2f} s < minimum {min_duration} s")
            continue
        if max_duration is not None and u.duration > max_duration:
            if rejects is not None:
                rejects.add(u.id, "too_long", f"{u.id}: {u.duration:.2f} s > maximum {max_duration} s")
            continue
        out.append(u)
    return out


def split_manifest(
    utterances: Sequence[Utterance], fractions: Mapping[str, float], *, seed: int = 0, by_speaker: bool = False
) -> dict[str, list[Utterance]]:
    """Split into named parts, e.g. ``{"train": 0.9, "dev": 0.05, "test": 0.05}``.

    Fractions must sum to 1 (each utterance lands in exactly one part). With ``by_speaker``
    whole speakers are assigned (utterances without speaker count as their own speaker), so
    the parts share no speaker; sizes then follow the fractions in utterances approximately.
    Deterministic from ``seed``; input order is kept within each part.
    """
    if not fractions or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utterances):
        groups[(u.speaker or f"\0{u.id}") if by_speaker else u.id].append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    names = list(fractions)
    total = len(utterances)
    targets, acc = [], 0.0
    for name in names:
        acc += fractions[name]
        targets.append(acc * total)
    assign: dict[int, str] = {}
    done, part = 0, 0
    for k in keys:
        while part < len(names) - 1 and done >= targets[part] - 1e-9:
            part += 1
        for i in groups[k]:
            assign[i] = names[part]
        done += len(groups[k])
    out: dict[str, list[Utterance]] = {n: [] for n in names}
    for i, u in enumerate(utterances):
        out[assign[i]].append(u)
    return out


def merge_manifests(*parts: Iterable[Utterance], rejects: Rejects | None = None) -> list[Utterance]:
    """Concatenate manifests; a repeated id keeps its first entry and the others are
    recorded as ``duplicate_id`` (or raise :class:`ManifestError` without ``rejects``)."""
    out, seen = [], set()
    for part in parts:
        for u in part:
            if u.id in seen:
                err = ManifestError(f"duplicate id {u.id} while merging manifests", "duplicate_id", u.id)
                if rejects is None:
                    raise err
                rejects.add(u.id, err.kind, err.reason)
                continue
            seen.add(u.id)
            out.append(u)
    return out


def manifest_stats(utterances: Sequence[Utterance]) -> dict[str, Any]:
    """Counts and hours, for summaries."""
    labelled = sum(1 for u in utterances if u.has_text)
    return {
        "utterances": len(utterances),
        "hours": sum(u.duration for u in utterances) / 3600.0,
        "labelled": labelled,
        "unlabelled": len(utterances) - labelled,
        "speakers": len({u.speaker for u in utterances if u.speaker is not None}),
    }
