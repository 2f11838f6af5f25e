"""Bookkeeping for skipped items: nothing bad kills a run, nothing vanishes silently.

Every component that skips an item records it in a :class:`Rejects` with a ``kind`` (a short
machine-readable class such as ``missing_file``) and a ``reason`` (a sentence for people).
Commands print :meth:`Rejects.summary` at the end and write :meth:`Rejects.write_report`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

#: Every kind used by asrkd.data, with what it means (the summary prints them in this order).
KINDS: dict[str, str] = {
    "malformed_line": "a manifest / Kaldi file line that cannot be parsed",
    "bad_field": "a manifest field with a wrong type or value",
    "duplicate_id": "an utterance id seen before (the first one is kept)",
    "missing_file": "the audio file does not exist",
    "unreadable": "not an audio file soundfile or librosa can read",
    "truncated": "the file is shorter than its header says, or its end cannot be decoded",
    "duration_mismatch": "the file's length differs from the manifest's duration (beyond max(0.1 s, 2 %))",
    "empty_audio": "zero samples",
    "nan_audio": "NaN or Inf samples",
    "out_of_range": "the segment lies (partly) outside the audio file",
    "unsupported": "an entry form asrkd does not handle (Kaldi ark: entries), or will not without an opt-in "
    "(piped wav.scp commands without --allow-commands)",
    "pipe_failed": "a Kaldi wav.scp command (`cmd |`) failed or gave no audio",
    "orphan_text": "a transcript whose audio is not listed (Kaldi text without wav.scp/segments entry, "
    ".txt without audio)",
    "empty_text": "an empty or whitespace-only transcript",
    "oov_chars": "characters outside the vocabulary",
    "too_short_for_ctc": "fewer frames after subsampling than label length + adjacent repeats",
    "too_short": "shorter than the minimum duration, or too short for one feature frame",
    "too_long": "longer than the maximum duration (or than a batch may hold)",
}


@dataclass(frozen=True)
class RejectRecord:
    id: str
    kind: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class Rejects:
    """A counter of skipped items: one record per item, under the first reason it was skipped
    for. An item skipped again (every epoch, or by a later stage for another reason: the CMVN
    pass finds its audio bad, then the sampler finds it too long) is not counted again, so
    the total is a number of items. A ``duplicate_id`` record stands for another line that
    repeats the id, not for the kept item, and is kept apart. Picklable and mergeable
    (DataLoader workers send their records to the main process inside batches, see
    :func:`asrkd.data.dataset.collate`)."""

    def __init__(self, records: Iterable[RejectRecord] = ()):
        self._records: list[RejectRecord] = []
        self._seen: set[tuple[str, bool]] = set()
        self.extend(records)

    def add(self, id: str, kind: str, reason: str) -> bool:
        """Record one skipped item; returns False when this item was already recorded."""
        if kind not in KINDS:
            raise ValueError(f"unknown reject kind {kind!r}; known: {sorted(KINDS)}")
        key = (str(id), kind == "duplicate_id")
        if key in self._seen:
            return False
        self._seen.add(key)
        self._records.append(RejectRecord(str(id), kind, reason))
        return True

    def extend(self, records: Iterable[RejectRecord]) -> int:
        return sum(self.add(r.id, r.kind, r.reason) for r in records)

    def merge(self, other: "Rejects") -> int:
        return self.extend(other.records)

    @property
    def records(self) -> list[RejectRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[RejectRecord]:
        return iter(self._records)

    def counts(self) -> dict[str, int]:
        c = Counter(r.kind for r in self._records)
        order = list(KINDS)
        return {k: c[k] for k in sorted(c, key=order.index)}

    def ids(self, kind: str) -> list[str]:
        return [r.id for r in self._records if r.kind == kind]

    def summary(self, max_ids: int = 3, title: str = "rejected") -> str:
        """A table ``kind | count | first ids``; one line when nothing was rejected."""
        counts = self.counts()
        if not counts:
            return f"{title}: none"
        rows = [
            (k, str(n), ", ".join(self.ids(k)[:max_ids]) + (", ..." if n > max_ids else "")) for k, n in counts.items()
        ]
        rows.append(("total", str(len(self)), ""))
        w0 = max(len("kind"), *(len(r[0]) for r in rows))
        w1 = max(len("count"), *(len(r[1]) for r in rows))
        lines = [f"{title}:", f"  {'kind':<{w0}}  {'count':>{w1}}  first ids", f"  {'-' * w0}  {'-' * w1}  {'-' * 9}"]
        lines += [f"  {k:<{w0}}  {n:>{w1}}  {ids}".rstrip() for k, n, ids in rows]
        return "\n".join(lines)

    def write_report(self, path: str | Path) -> None:
        """One JSON object per rejected item: ``{"id", "kind", "reason"}``."""
        from asrkd.atomic import atomic_write

        lines = [json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in self._records]
        atomic_write(path, lambda f: f.writelines(lines), mode="w")

    def __getstate__(self):
        return {"records": self._records}

    def __setstate__(self, state):
        self.__init__(state["records"])

    def __repr__(self) -> str:
        return f"Rejects({self.counts()})"
