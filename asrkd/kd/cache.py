"""Teacher-logit cache: run a frozen teacher once over a manifest, keep its outputs.

``asrkd cache-teacher --teacher SPEC --manifest M.jsonl --out DIR [--topk K]`` writes::

    DIR/index.json        the key and its parts (teacher, settings, manifest), the shard plan
                          (per shard its ids, and once written its size and SHA-256), per
                          utterance its shard, frame count and entry fingerprint, the rejects
    DIR/shard-00000.pt    ids, frame counts, offsets and the outputs of up to --shard-size
    DIR/shard-00001.pt    utterances, concatenated over frames
    ...

Per utterance the cache stores either the teacher's **dense** log-probabilities
``(T_t, V_t)`` fp16 (``log_softmax`` of its logits: softmax is shift invariant, so they
serve as logits, and normalising first keeps the largest values near 0 where fp16 is most
precise and cannot overflow), or its **top-k** log-probabilities ``(T_t, K)`` fp16 with
their token ids ``(T_t, K)`` (int16 when ``V_t <= 32767``, else int32): what
:func:`asrkd.ops.kd_kl_div_topk` takes.

**Key.** Each utterance's key (:func:`cache_key`) hashes the teacher (its spec string,
every tensor of its state dict, vocabulary, blank and frame rate: :func:`teacher_fingerprint`),
the manifest entry (id, absolute audio path, offset, duration, and the audio file's size
and modification time: :func:`entry_fingerprint`) and the cache settings (kind, K, dtype,
sample rate: :func:`cache_settings`). The cache's key hashes the teacher, the settings and
the whole manifest. A cache that does not match is refused with :class:`CacheKeyError`,
whose message says which part differs (teacher, a setting, or which entries and fields).

**Resume.** The shard plan is fixed when the cache is started (manifest order, ``shard_size``
utterances each). Every shard is written to a temporary file and renamed, then the index is
rewritten the same way with that shard marked done, so after a kill the finished shards are
kept and the partial one is redone by running the same command again.

**Integrity.** Each finished shard's size and the SHA-256 of the bytes written (hashed as
they are written) go into the index. :meth:`TeacherCache.open` (so ``asrkd train``, before
its first step) and every ``cache-teacher`` run re-hash all shards in 1 MiB blocks (about
0.2 s per 300 MB from the page cache; otherwise disk bound): a shard that is missing, has
another size or hash (truncated, altered, a copy of another shard) or cannot be read makes
``open`` raise :class:`CacheIntegrityError` naming each such shard and its reason, and makes
``cache-teacher`` recompute exactly those shards (it says which), keeping the others byte
for byte. A loaded shard must also hold exactly the ids (and frame counts) the plan and the
index give it. An index written before shards were hashed records no hashes; its shards
cannot be verified, so they are treated as bad: ``open`` refuses them and ``cache-teacher``
recomputes them (hashing the old files would only vouch for whatever they hold now).

**The index is only data.** No name in it is used: shard ``n`` is always
``DIR/shard-NNNNN.pt`` (:data:`SHARD_PATTERN`), an index naming another file is inconsistent,
and ``--force`` deletes only index.json and ``shard-NNNNN.pt`` files. Each read checks the
whole index: its structure and types; the key recomputed from the parts it stores (teacher
fingerprint with vocabulary, blank and frame rate; settings; manifest hash); the plan (no id
in two shards, every entry in its shard's plan with a frame count >= 0, every planned id
cached or rejected); and every shard's contents (ids, frame counts, offsets, shapes; each
shard memory-mapped, about 1 ms) against it. ``open`` refuses an index that fails, naming it
and the first problems, so the trainer never fails half way. ``cache-teacher`` also checks
the plan and each entry's key against the manifest, recomputes the shards concerned, and
recomputes the whole cache (saying why) when the index as a whole is unusable: not JSON, a
part missing, a part edited so that it no longer gives the key, or a plan that does not fit
the manifest. That holds even for an index whose stored key is not this run's: nothing can
use such a cache.

**Bad audio** (missing, unreadable, truncated, empty, NaN) is skipped and counted, as are
clips shorter than the teacher accepts (``too_short``; :func:`teacher_min_samples`: 320
samples for Whisper's front-end, what a log-mel student's front-end needs) and utterances
the teacher gives no frames or non-finite outputs for; the index keeps the records, the
command prints the summary, and the trainer counts them again as its own rejects.

Library side (``docs/internals.md``; the command is :mod:`asrkd.cli.cache_teacher` over
:func:`cache_teacher`)::

    cache = TeacherCache.open("exp/mini/cache")
    cache.check_entries(train_utts, rejects)      # CacheKeyError when an entry changed
    teacher = cache.targets(batch["ids"], device)  # a TeacherOutput: DistillationLoss(..., teacher=teacher)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asrkd.atomic import atomic_write, remove_stale_temporaries
from asrkd.data.audio import SAMPLE_RATE
from asrkd.data.sampler import duration_batches
from asrkd.kd.align import TeacherOutput
from asrkd.models.checkpoint import weights_hash

FORMAT = "asrkd-teacher-cache-v1"
INDEX = "index.json"
SHARD_PATTERN = "shard-{:05d}.pt"
_SHARD_NAME = re.compile(r"shard-(\d{5,})\.pt")
# The tensors of a shard by cache kind (besides ids, frames and offsets). "logits" holds the dense
# log-probabilities: the name is the format's (v1), kept so that existing caches open.
_SHARD_TENSORS = {"dense": ("logits",), "topk": ("topk_idx", "topk_logprob")}


class CacheKeyError(ValueError):
    """A cache that does not belong to the given teacher, settings or manifest entries;
    the message names the part that differs."""


class CacheIntegrityError(ValueError):
    """Shards whose bytes are not the ones the index records (missing, truncated, altered,
    another shard's, unreadable); the message names each with the reason."""


# --------------------------------------------------------------------------------------
# Keys


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def teacher_fingerprint(teacher) -> dict[str, Any]:
    """What identifies a teacher for the cache: ``spec``, ``weights`` (:func:`weights_hash`),
    ``vocab``, ``blank_id``, ``frame_rate`` and ``hash`` (of all of these)."""
    fp = {
        "spec": str(getattr(teacher, "spec", "")),
        "weights": weights_hash(teacher),
        "vocab": list(teacher.vocab),
        "blank_id": int(teacher.blank_id),
        "frame_rate": float(teacher.frame_rate),
    }
    fp["hash"] = _sha256(fp)
    return fp


def entry_fingerprint(utt) -> dict[str, Any]:
    """A manifest entry as the cache sees it: ``id``, absolute ``audio`` path, ``offset``,
    ``duration``, and the file's ``size`` and ``mtime_ns`` (None when it cannot be read:
    such an entry is rejected when its audio is loaded)."""
    path = os.path.abspath(utt.audio)
    try:
        st = os.stat(path)
        size, mtime = int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        size = mtime = None
    return {
        "id": utt.id,
        "audio": path,
        "offset": None if utt.offset is None else round(float(utt.offset), 4),
        "duration": round(float(utt.duration), 4),
        "size": size,
        "mtime_ns": mtime,
    }


def cache_settings(kind: str, topk: int | None, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """The settings that change what is stored (part of every key)."""
    if kind not in ("dense", "topk"):
        raise ValueError(f"cache kind must be 'dense' or 'topk', got {kind!r}")
    if kind == "topk" and (topk is None or topk < 1):
        raise ValueError(f"top-k caching needs topk >= 1, got {topk}")
    return {
        "format": FORMAT,
        "kind": kind,
        "topk": int(topk) if kind == "topk" else None,
        "values": "log_softmax",
        "dtype": "float16",
        "sample_rate": int(sample_rate),
    }


def cache_key(teacher_hash: str, manifest_entry: Mapping[str, Any], feature_settings: Mapping[str, Any]) -> str:
    """Key of one utterance's cached targets: a hash of the teacher's hash, the entry's
    fingerprint (:func:`entry_fingerprint`) and the settings (:func:`cache_settings`)."""
    return _sha256([teacher_hash, dict(manifest_entry), dict(feature_settings)])


def _manifest_hash(fingerprints: Sequence[Mapping[str, Any]]) -> str:
    return _sha256([dict(fp) for fp in fingerprints])


def _overall_key(teacher_hash: str, settings: Mapping[str, Any], manifest_hash: str) -> str:
    return _sha256([teacher_hash, dict(settings), manifest_hash])


def _describe_entry_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    fields = [k for k in ("audio", "offset", "duration", "size", "mtime_ns") if old.get(k) != new.get(k)]
    what = {"size": "file size", "mtime_ns": "file modification time"}
    return ", ".join(f"{what.get(k, k)} {old.get(k)!r} -> {new.get(k)!r}" for k in fields) or "key differs"


def _describe_teacher_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    parts = []
    if old.get("spec") != new.get("spec"):
        parts.append(f"spec {old.get('spec')!r} -> {new.get('spec')!r}")
    if old.get("weights") != new.get("weights"):
        parts.append(f"weights hash {str(old.get('weights'))[:12]} -> {str(new.get('weights'))[:12]}")
    for k in ("vocab", "blank_id", "frame_rate"):
        if old.get(k) != new.get(k):
            parts.append(f"{k} {old.get(k)!r} -> {new.get(k)!r}")
    return "; ".join(parts) or "hash differs"


# --------------------------------------------------------------------------------------
# Reading


@dataclass
class TeacherTargets:
    """One utterance's cached teacher outputs.

    ``kind`` ``"dense"``: ``log_probs`` (T_t, V_t) fp16 log-probabilities. ``kind`` ``"topk"``:
    ``topk_idx`` (T_t, K) int16/int32 and ``topk_logprob`` (T_t, K) fp16.
    """

    kind: str
    frames: int
    log_probs: torch.Tensor | None = None
    topk_idx: torch.Tensor | None = None
    topk_logprob: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor | None:
        """Deprecated name of :attr:`log_probs` (what the cache stores are log-probabilities)."""
        warnings.warn(
            "TeacherTargets.logits is deprecated: use TeacherTargets.log_probs", DeprecationWarning, stacklevel=2
        )
        return self.log_probs


def collate_teacher(items: Sequence[TeacherTargets]) -> dict[str, torch.Tensor]:
    """Pad per-utterance targets into a batch: ``logits`` (B, T_t, V_t) (the log-probabilities)
    or ``topk_idx`` + ``topk_logprob`` (B, T_t, K), and ``lengths`` (B,) int64. A
    :class:`~asrkd.kd.align.TeacherOutput` of the same: :meth:`TeacherCache.targets`.

    Padded frames hold a valid distribution (uniform over distinct ids ``0..K-1`` for top-k,
    zeros for dense), so checks on the whole tensor pass; the lengths mask them out."""
    if not items:
        raise ValueError("collate_teacher: empty batch")
    kinds = {t.kind for t in items}
    if len(kinds) != 1:
        raise ValueError(f"collate_teacher: mixed kinds {sorted(kinds)}")
    lengths = torch.tensor([t.frames for t in items], dtype=torch.long)
    T = int(lengths.max())
    if items[0].kind == "dense":
        V = items[0].log_probs.shape[1]
        out = torch.zeros(len(items), T, V, dtype=items[0].log_probs.dtype)
        for b, t in enumerate(items):
            out[b, : t.frames] = t.log_probs
        return {"logits": out, "lengths": lengths}
    K = items[0].topk_idx.shape[1]
    idx = torch.arange(K, dtype=items[0].topk_idx.dtype).expand(len(items), T, K).clone()
    lp = torch.full((len(items), T, K), -math.log(K), dtype=items[0].topk_logprob.dtype)
    for b, t in enumerate(items):
        idx[b, : t.frames] = t.topk_idx
        lp[b, : t.frames] = t.topk_logprob
    return {"topk_idx": idx, "topk_logprob": lp, "lengths": lengths}


class TeacherCache:
    """A finished cache directory, read-only. Shards are memory-mapped when first used."""

    def __init__(self, directory: Path, index: dict[str, Any]):
        self.dir = directory
        self.index = index
        self.key: str = index["key"]
        self.settings: dict[str, Any] = index["settings"]
        self.kind: str = self.settings["kind"]
        self.topk: int | None = self.settings["topk"]
        self.teacher: dict[str, Any] = index["teacher"]
        self.frame_rate: float = float(self.teacher["frame_rate"])
        self.vocab: list[str] = list(self.teacher["vocab"])
        self.blank_id: int = int(self.teacher["blank_id"])
        self._entries: dict[str, dict[str, Any]] = index["entries"]
        self._rejected: dict[str, dict[str, str]] = {r["id"]: r for s in index["shards"] for r in s["rejected"]}
        self._shards: dict[int, dict[str, Any]] = {}
        # What each shard must hold, in plan order: a loaded shard is compared with it.
        self._planned: list[list[str]] = [[u for u in s["ids"] if u in self._entries] for s in index["shards"]]

    @classmethod
    def open(cls, directory: str | os.PathLike, *, expect_key: str | None = None) -> TeacherCache:
        """Open a finished cache. Raises ``FileNotFoundError`` (no index), ``ValueError``
        (unfinished: rerun ``asrkd cache-teacher``), :class:`CacheIntegrityError` (the index is
        not JSON, lacks a part, no longer gives its key or contradicts itself; or a shard is
        missing, its size or content hash is not the one the index records, or its ids, frame
        counts, offsets or shapes are not the ones the index gives; all shards are hashed, about
        0.2 s per 300 MB, and memory-mapped) or :class:`CacheKeyError` (its key is not ``expect_key``)."""
        directory = Path(directory)
        index = _open_index(directory)
        bad = _bad_shards(directory, index)
        if bad:
            raise CacheIntegrityError(
                f"teacher cache {directory}: {_describe_bad(index, bad)}; run the same "
                "`asrkd cache-teacher` command again to recompute them"
            )
        if expect_key is not None and expect_key != index["key"]:
            raise CacheKeyError(
                f"teacher cache {directory} has key {index['key'][:16]}, expected "
                f"{expect_key[:16]} (teacher {index['teacher']['spec']!r}, manifest "
                f"{index['manifest'].get('path')}): use TeacherCache.check_teacher / "
                "check_entries to see which part differs"
            )
        return cls(directory, index)

    # -- contents -------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return list(self._entries)

    @property
    def rejected(self) -> list[dict[str, str]]:
        """Entries whose audio the teacher never saw: ``{"id", "kind", "reason"}``."""
        return list(self._rejected.values())

    def __len__(self) -> int:
        return len(self._entries)

    def targets(self, ids: Sequence[str], device: str | torch.device = "cpu") -> TeacherOutput:
        """The cached teacher outputs of a batch of these ids, padded (:func:`collate_teacher`),
        on ``device``: what :class:`asrkd.kd.loss.DistillationLoss` takes as ``teacher=``."""
        batch = collate_teacher([self.get(i) for i in ids])
        return TeacherOutput(
            logits=batch.get("logits"),
            topk_idx=batch.get("topk_idx"),
            topk_logprob=batch.get("topk_logprob"),
            lengths=batch["lengths"],
        ).to(device, non_blocking=True)

    def loss_inputs(self, ids: Sequence[str], device: str | torch.device = "cpu") -> dict[str, Any]:
        """Deprecated: ``DistillationLoss(..., teacher=cache.targets(ids, device))``. The same
        outputs as the separate teacher keyword arguments of ``DistillationLoss``:
        ``teacher_logits`` (dense) or ``teacher_topk`` (top-k), and ``teacher_lengths``."""
        warnings.warn(
            "TeacherCache.loss_inputs is deprecated: pass teacher=cache.targets(ids, device) to DistillationLoss",
            DeprecationWarning,
            stacklevel=2,
        )
        t = self.targets(ids, device)
        out: dict[str, Any] = {"teacher_lengths": t.lengths}
        if t.kind == "dense":
            out["teacher_logits"] = t.logits
        else:
            out["teacher_topk"] = (t.topk_idx, t.topk_logprob)
        return out

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._entries

    def _shard(self, number: int) -> dict[str, Any]:
        shard = self._shards.get(number)
        if shard is None:
            path = self.dir / SHARD_PATTERN.format(number)
            shard, problem = _load_shard(path, self._planned[number], self.index)  # checked by open(): changed since
            if problem:
                raise CacheIntegrityError(
                    f"teacher cache shard {path} {problem}; run the same `asrkd cache-teacher` "
                    "command again to recompute it"
                )
            shard["pos"] = {u: i for i, u in enumerate(shard["ids"])}
            self._shards[number] = shard
        return shard

    def get(self, utt_id: str) -> TeacherTargets:
        """The cached targets of one utterance (``KeyError`` naming it when absent)."""
        entry = self._entries.get(utt_id)
        if entry is None:
            why = f" (rejected while caching: {self._rejected[utt_id]['reason']})" if utt_id in self._rejected else ""
            raise KeyError(f"utterance {utt_id!r} is not in the teacher cache {self.dir}{why}")
        shard = self._shard(entry["shard"])
        i = shard["pos"][utt_id]
        a, b = int(shard["offsets"][i]), int(shard["offsets"][i + 1])
        if self.kind == "dense":
            return TeacherTargets("dense", b - a, log_probs=shard["logits"][a:b])
        return TeacherTargets("topk", b - a, topk_idx=shard["topk_idx"][a:b], topk_logprob=shard["topk_logprob"][a:b])

    # -- checks ---------------------------------------------------------------------------
    def check_teacher(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise :class:`CacheKeyError` unless ``fingerprint`` (:func:`teacher_fingerprint`)
        is the teacher the cache was made with."""
        if fingerprint["hash"] != self.teacher["hash"]:
            raise CacheKeyError(
                f"teacher cache {self.dir} was made with another teacher: "
                f"{_describe_teacher_diff(self.teacher, fingerprint)}"
            )

    def check_entries(self, utterances: Iterable, rejects=None) -> list:
        """The utterances the cache holds, checked against their cached keys.

        An entry whose id is cached but whose key differs (audio path, offset, duration, file
        size or time changed) or that the cache does not know raises :class:`CacheKeyError`
        naming up to 5 of them and what differs. Entries rejected while caching (bad audio)
        are dropped and, with ``rejects``, counted with the cache's kind and reason.
        """
        keep, changed, missing = [], [], []
        teacher_hash = self.teacher["hash"]
        for u in utterances:
            if u.id in self._rejected:
                if rejects is not None:
                    r = self._rejected[u.id]
                    rejects.add(u.id, r["kind"], r["reason"])
                continue
            entry = self._entries.get(u.id)
            if entry is None:
                missing.append(u.id)
                continue
            fp = entry_fingerprint(u)
            if cache_key(teacher_hash, fp, self.settings) != entry["key"]:
                changed.append(f"{u.id}: {_describe_entry_diff(entry['entry'], fp)}")
                continue
            keep.append(u)
        problems = []
        if changed:
            problems.append(
                f"{len(changed)} manifest entries differ from the cached ones, e.g. " + "; ".join(changed[:5])
            )
        if missing:
            problems.append(f"{len(missing)} utterances are not in the cache, e.g. {', '.join(missing[:5])}")
        if problems:
            raise CacheKeyError(
                f"teacher cache {self.dir} (made from {self.index['manifest'].get('path')}) does not "
                f"match: {'; '.join(problems)}. Rerun `asrkd cache-teacher` on this manifest "
                "into a new folder"
            )
        return keep


# --------------------------------------------------------------------------------------
# The index: parsed and checked


def _parse_index(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(index, None)``, or ``(None, why)`` for a file that is not JSON (a truncated write: the cache
    recomputes it). ``ValueError`` for JSON that is not an asrkd cache index: someone else's file."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{path} is not valid JSON ({err})"
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        fmt = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{path} is not an asrkd teacher cache index (format {fmt!r})")
    return index, None


# An index is only data: every name and number in it is checked before use, so an edited or
# damaged one is refused (or recomputed by cache-teacher) up front, never half way through a run.

_TEACHER_FIELDS = ("spec", "weights", "vocab", "blank_id", "frame_rate")
_PART_NAMES = {
    "spec": "spec",
    "weights": "weights hash",
    "vocab": "vocabulary",
    "blank_id": "blank id",
    "frame_rate": "frame rate",
}


def _what(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _teacher_problem(t: Mapping[str, Any]) -> str | None:
    for k in (*_TEACHER_FIELDS, "hash"):
        if k not in t:
            return f"'teacher' has no {k!r}"
    if not all(isinstance(t[k], str) for k in ("spec", "weights", "hash")):
        return "'teacher' spec, weights and hash are not all strings"
    if not isinstance(t["vocab"], list) or not all(isinstance(v, str) for v in t["vocab"]):
        return "'teacher' vocab is not a list of symbols"
    if not _is_count(t["blank_id"]) or t["blank_id"] >= len(t["vocab"]):
        return f"'teacher' blank_id {t['blank_id']!r} is not an index into its vocab of {len(t['vocab'])}"
    rate = t["frame_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        return f"'teacher' frame_rate {rate!r} is not a positive number"
    return None


def _structure_problem(index: Mapping[str, Any]) -> str | None:
    """Why an index cannot be used at all (None when its top level is sound)."""
    if not isinstance(index.get("key"), str):
        return "no 'key'" if "key" not in index else f"'key' is {_what(index['key'])}, not a string"
    for name, kind in (("teacher", dict), ("settings", dict), ("manifest", dict), ("shards", list), ("entries", dict)):
        if name not in index:
            return f"no {name!r}"
        if not isinstance(index[name], kind):
            return f"{name!r} is {_what(index[name])}, not {_what(kind())}"
    problem = _teacher_problem(index["teacher"])
    if problem:
        return problem
    s = index["settings"]
    try:
        valid = cache_settings(s.get("kind"), s.get("topk"), s.get("sample_rate")) == s
    except (TypeError, ValueError):
        valid = False
    if not valid:
        return f"'settings' {json.dumps(s)} are not cache settings"
    if not isinstance(index["manifest"].get("hash"), str):
        return "'manifest' has no hash"
    return None


def _edited_part(
    index: Mapping[str, Any],
    teacher_fp: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    manifest_hash: str | None = None,
) -> str | None:
    """Which stored part no longer gives the stored key (None when all agree). With this run's
    teacher fingerprint, settings and manifest hash, and the stored key theirs, it names the part."""
    t = index["teacher"]
    teacher_hash = _sha256({k: t[k] for k in _TEACHER_FIELDS})
    if (
        teacher_hash == t["hash"]
        and _overall_key(t["hash"], index["settings"], index["manifest"]["hash"]) == index["key"]
    ):
        return None
    if teacher_fp is not None and index["key"] == _overall_key(teacher_fp["hash"], settings, manifest_hash):
        parts = [f"teacher {_PART_NAMES[k]}" for k in _TEACHER_FIELDS if t[k] != teacher_fp[k]]
        parts += ["teacher hash"] if not parts and t["hash"] != teacher_fp["hash"] else []
        parts += ["settings"] if index["settings"] != dict(settings) else []
        parts += ["manifest hash"] if index["manifest"]["hash"] != manifest_hash else []
        if parts:
            verb = "matches" if len(parts) == 1 and parts != ["settings"] else "match"
            return f"its {' and '.join(parts)} no longer {verb} its key"
    if teacher_hash != t["hash"]:
        return "its teacher fingerprint (spec, weights, vocabulary, blank id or frame rate) no longer matches its key"
    return "its settings or manifest hash no longer match its key"


def _index_problem(path: Path, index: Mapping[str, Any], *args: Any) -> str | None:
    """Why the index at ``path`` is unusable as a whole, the path first (None when it is usable)."""
    problem = _structure_problem(index)
    if problem:
        return f"{path} is unusable: {problem}"
    problem = _edited_part(index, *args)
    return f"{path} was edited: {problem}" if problem else None


def _shard_record_problems(
    n: int, s: Any, owner: dict[str, int], rejected_in: dict[str, int], plan: Sequence[Sequence[str]] | None
) -> list[str]:
    """What is wrong with shard ``n``'s record; fills ``owner`` (id -> first shard planning it)
    and ``rejected_in`` (id -> shard rejecting it)."""
    if not isinstance(s, dict):
        return [f"its record is {_what(s)}, not an object"]
    why = []
    if s.get("file") != SHARD_PATTERN.format(n):
        why.append(f"its record names the file {s.get('file')!r}, not {SHARD_PATTERN.format(n)!r}")
    if not isinstance(s.get("done"), bool):
        why.append(f"'done' is {_what(s.get('done'))}, not true or false")
    if (s.get("size") is not None and not _is_count(s["size"])) or not isinstance(
        s.get("sha256", ""), (str, type(None))
    ):
        why.append("'size' or 'sha256' is not a byte count and a hash")
    ids = s.get("ids")
    if not isinstance(ids, list) or not all(isinstance(u, str) for u in ids):
        return [*why, "'ids' is not a list of utterance ids"]
    if plan is not None and ids != list(plan[n]):
        why.append("its planned ids differ from the manifest's")
    for u in ids:
        if u in owner:
            why.append(f"utterance {u!r} is also in shard {owner[u]}")
        else:
            owner[u] = n
    rejected = s.get("rejected")
    if not isinstance(rejected, list):
        return [*why, f"'rejected' is {_what(rejected)}, not a list"]
    for r in rejected:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("id", "kind", "reason")):
            why.append(f"a 'rejected' record {json.dumps(r)[:60]} is not an id, kind and reason")
        elif owner.get(r["id"]) != n:
            why.append(f"rejected utterance {r['id']!r} is not in its plan")
        else:
            rejected_in[r["id"]] = n
    return why


def _entry_problem(
    uid: str, e: Any, n: int | None, shards: Sequence[Any], rejected_in: Mapping[str, int]
) -> str | None:
    """What is wrong with one entry that shard ``n``'s plan lists (``n`` None: no plan lists it)."""
    if not isinstance(e, dict):
        return f"entry {uid!r} is {_what(e)}, not an object"
    shard = e.get("shard")
    if isinstance(shard, bool) or not isinstance(shard, int):
        return f"entry {uid!r} has shard {shard!r}, not a shard number"
    if not 0 <= shard < len(shards):
        return f"entry {uid!r} names shard {shard}, out of range (the index has {len(shards)} shards)"
    if n is None:
        return f"entry {uid!r} is in no shard's plan"
    if shard != n:
        return f"entry {uid!r} names shard {shard}, but shard {n}'s plan holds it"
    if not _is_count(e.get("frames")):
        return f"entry {uid!r} has frames {e.get('frames')!r}, not a frame count >= 0"
    if not isinstance(e.get("key"), str) or not isinstance(e.get("entry"), dict) or e["entry"].get("id") != uid:
        return f"entry {uid!r} has no key or no fingerprint of its own"
    if not (isinstance(shards[n], dict) and shards[n].get("done") is True):
        return f"entry {uid!r} is in a shard not marked done"
    if uid in rejected_in:
        return f"utterance {uid!r} is both cached and rejected"
    return None


def _shard_index_problems(
    index: Mapping[str, Any],
    plan: Sequence[Sequence[str]] | None = None,
    fingerprints: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[str | None, dict[int, str]]:
    """Problems of a structurally sound index that concern single shards: shard number -> reason,
    and a problem no shard can be blamed for (or None). ``plan`` and ``fingerprints`` (cache-teacher,
    which has the manifest) add: each shard plans the manifest's ids, each entry has its entry's key."""
    shards, entries = index["shards"], index["entries"]
    problems: dict[int, list[str]] = {}
    owner: dict[str, int] = {}
    rejected_in: dict[str, int] = {}
    for n, s in enumerate(shards):
        if why := _shard_record_problems(n, s, owner, rejected_in, plan):
            problems[n] = why
    unsound = set(problems)  # their records cannot be read further
    for uid, e in entries.items():
        n = owner.get(uid)
        why = _entry_problem(uid, e, n, shards, rejected_in)
        if (
            why is None
            and fingerprints is not None
            and (
                e["entry"] != fingerprints.get(uid)
                or e["key"] != cache_key(index["teacher"]["hash"], e["entry"], index["settings"])
            )
        ):
            why = f"entry {uid!r} has another key or fingerprint than its manifest entry"
        if why is None:
            continue
        blamed = n if n is not None else (e.get("shard") if isinstance(e, dict) else None)
        if not (isinstance(blamed, int) and not isinstance(blamed, bool) and 0 <= blamed < len(shards)):
            return why, {}
        problems.setdefault(blamed, []).append(why)
    for n, s in enumerate(shards):
        if n in unsound or not s["done"]:
            continue
        lost = [u for u in s["ids"] if owner[u] == n and u not in entries and rejected_in.get(u) != n]
        problems.setdefault(n, []).extend(f"utterance {u!r} of its plan is neither cached nor rejected" for u in lost)
    return None, {
        n: "index.json: " + "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
        for n, why in sorted(problems.items())
        if why
    }


def _plan(ids: Sequence[str], shard_size: int) -> list[list[str]]:
    """The shard plan of a cache: manifest order, ``shard_size`` utterances each."""
    return [list(ids[a : a + shard_size]) for a in range(0, len(ids), shard_size)]


def _remove_own_files(out: Path) -> None:
    """Delete what this cache itself names in ``out`` (index.json, shard-NNNNN.pt), never a name
    read from an index; stale temporaries go with :func:`remove_stale_temporaries`."""
    for p in out.iterdir():
        m = _SHARD_NAME.fullmatch(p.name)
        if m and p.name == SHARD_PATTERN.format(int(m.group(1))) and (p.is_symlink() or not p.is_dir()):
            p.unlink(missing_ok=True)
    (out / INDEX).unlink(missing_ok=True)


def _write_index(directory: Path, index: Mapping[str, Any]) -> None:
    atomic_write(directory / INDEX, lambda f: json.dump(index, f, ensure_ascii=False), mode="w")


# --------------------------------------------------------------------------------------
# Shard integrity: the index records each finished shard's size and the SHA-256 of the
# bytes written; opening a cache (and every cache-teacher run) checks both.

_BLOCK = 1 << 20


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through, so the index
    records the bytes actually written, with no second read of the file."""

    def __init__(self, f):
        self._f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _shard_problem(path: Path, shard: Mapping[str, Any]) -> str | None:
    """Why a shard marked done cannot be trusted (None when its size and hash match)."""
    if not shard.get("sha256") or shard.get("size") is None:
        return "no content hash in the index: written by an older asrkd, so its contents cannot be verified"
    try:
        st = path.stat()
        if not path.is_file():
            return "not a regular file"
        if st.st_size != shard["size"]:
            return f"size {st.st_size} bytes, expected {shard['size']}: truncated or replaced"
        if _file_sha256(path) != shard["sha256"]:
            return "content hash differs from the index: altered, or another shard's content"
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable: {err.strerror or err}"
    return None


def _load_shard(path: Path, planned: Sequence[str], index: Mapping[str, Any]) -> tuple[Any, str | None]:
    """A shard memory-mapped (cheap: nothing is read until used), and why it is not the one the
    index describes (None when it is)."""
    try:
        shard = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        return None, f"cannot be read ({type(err).__name__}: {err})"
    try:
        return shard, _layout_problem(shard, planned, index)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError, RuntimeError):
        return shard, "is not a teacher cache shard of this kind"


def _layout_problem(shard: Any, planned: Sequence[str], index: Mapping[str, Any]) -> str | None:
    """Why a loaded shard is not the one the plan and the index describe (None when it is): a
    copy of another shard passes a stale hash check but not this."""
    kind, vocab_size = index["settings"]["kind"], len(index["teacher"]["vocab"])
    names = _SHARD_TENSORS[kind]
    if not isinstance(shard, dict) or any(k not in shard for k in ("ids", "frames", "offsets", *names)):
        return "is not a teacher cache shard of this kind"
    if list(shard["ids"]) != list(planned):
        return (
            f"holds utterances {', '.join(map(str, list(shard['ids'])[:3]))}..., not the ones the index plans "
            f"for it ({', '.join(planned[:3])}...)"
        )
    frames = [int(index["entries"][u]["frames"]) for u in planned]
    offsets = shard["offsets"]
    if list(shard["frames"]) != frames or offsets.numel() != len(frames) + 1 or offsets.diff().tolist() != frames:
        return "has frame counts or offsets that differ from the index"
    if any(shard[k].shape[0] != int(offsets[-1]) for k in names):
        return f"holds {[shard[k].shape[0] for k in names]} frames, the offsets say {int(offsets[-1])}"
    width = vocab_size if kind == "dense" else index["settings"]["topk"]
    dtypes = {"logits": torch.float16, "topk_logprob": torch.float16, "topk_idx": _index_dtype(vocab_size)}
    for k in names if int(offsets[-1]) else ():
        t = shard[k]
        if t.dtype != dtypes[k] or t.dim() != 2 or t.shape[1] != width:
            return f"holds {k} {t.dtype} {tuple(t.shape)}, not {dtypes[k]} (frames, {width})"
    return None


def _planned_ids(index: Mapping[str, Any], n: int) -> list[str]:
    """What shard ``n`` holds, in plan order: its planned ids less those rejected."""
    return [u for u in index["shards"][n]["ids"] if u in index["entries"]]


def _bad_shards(directory: Path, index: Mapping[str, Any]) -> dict[int, str]:
    """Shard number -> reason, for every shard marked done that fails verification: its size and
    hash, then its contents against the index (ids, frame counts, offsets, shapes), so that a
    trainer never meets a bad shard half way through."""
    bad = {}
    for n, s in enumerate(index["shards"]):
        if s["done"]:
            path = directory / SHARD_PATTERN.format(n)
            why = _shard_problem(path, s) or _load_shard(path, _planned_ids(index, n), index)[1]
            if why:
                bad[n] = why
    return bad


def _describe_bad(index: Mapping[str, Any], bad: Mapping[int, str], limit: int = 10) -> str:
    names = [f"{SHARD_PATTERN.format(n)} ({why})" for n, why in list(bad.items())[:limit]]
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} of {len(index['shards'])} shards fail verification: {'; '.join(names)}{more}"


def _open_index(directory: Path) -> dict[str, Any]:
    """The index of a finished cache, checked through: ``FileNotFoundError`` (none),
    :class:`CacheIntegrityError` naming the index and its first problems, ``ValueError`` (unfinished)."""
    path = directory / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"no teacher cache at {directory} (missing {INDEX}); create it with "
            "`asrkd cache-teacher --teacher SPEC --manifest M.jsonl --out DIR`"
        )
    rerun = "run the same `asrkd cache-teacher` command again to recompute"
    index, problem = _parse_index(path)
    problem = problem or _index_problem(path, index)
    if problem:
        raise CacheIntegrityError(f"{problem}; {rerun} the cache")
    problem, bad = _shard_index_problems(index)
    if problem:
        raise CacheIntegrityError(f"{path} is unusable: {problem}; {rerun} the cache")
    if bad:
        raise CacheIntegrityError(f"{path} is inconsistent: {_describe_bad(index, bad)}; {rerun} them")
    done = sum(s["done"] for s in index["shards"])
    if done < len(index["shards"]):
        raise ValueError(
            f"teacher cache {directory} is unfinished ({done} of {len(index['shards'])} shards): "
            "run the same `asrkd cache-teacher` command again to finish it"
        )
    return index


# --------------------------------------------------------------------------------------
# Writing


def cache_teacher(
    teacher_spec: str | Sequence[str],
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    ensemble_weights: Sequence[float] | None = None,
    ensemble_combine: str = "prob",
    topk: int | None = None,
    shard_size: int = 1000,
    batch_seconds: float = 200.0,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
):
    """What ``asrkd cache-teacher`` runs: load the manifest and the teacher
    (``asrkd.models.teachers.load_teacher(teacher_spec)``; several specs: their ensemble,
    :func:`asrkd.models.teachers.ensemble.build_ensemble`), write or finish the cache in
    ``out_dir`` (:func:`build_cache`) and return the :class:`~asrkd.data.Rejects` of every
    utterance left out, the manifest's bad entries and those the teacher never gave outputs for.
    Raises ``ValueError`` for a manifest without a usable utterance and :class:`CacheKeyError` as
    :func:`build_cache`."""
    from asrkd.data import Rejects, load_manifest
    from asrkd.models.teachers import load_teacher

    rejects = Rejects()
    utts = load_manifest(manifest, rejects)
    if not utts:
        raise ValueError(f"no usable utterances in {manifest}\n{rejects.summary()}")
    if isinstance(teacher_spec, (str, os.PathLike)):
        teacher = load_teacher(teacher_spec)
    elif len(teacher_spec) == 1:
        teacher = load_teacher(teacher_spec[0])
    else:
        from asrkd.models.teachers.ensemble import build_ensemble

        teacher = build_ensemble([load_teacher(t) for t in teacher_spec], ensemble_weights, ensemble_combine)
        log(f"teacher: {teacher.spec}")
    index = build_cache(
        teacher,
        utts,
        out_dir,
        topk=topk,
        shard_size=shard_size,
        batch_seconds=batch_seconds,
        num_workers=num_workers,
        device=device,
        manifest_path=os.path.abspath(manifest),
        force=force,
        progress=progress,
        log=log,
    )
    for s in index["shards"]:
        for r in s["rejected"]:
            rejects.add(r["id"], r["kind"], r["reason"])
    return rejects


def build_cache(
    teacher,
    utterances: Sequence,
    out_dir: str | os.PathLike,
    *,
    topk: int | None = None,
    shard_size: int = 1000,
    batch_seconds: float = 200.0,
    num_workers: int = 2,
    device: str | torch.device = "cpu",
    manifest_path: str = "",
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``teacher`` over ``utterances`` and write (or finish) the cache in ``out_dir``.

    Args:
        teacher: a frozen teacher (``asrkd.models.teachers.load_teacher``): waves -> (logits, lengths).
        utterances: manifest entries (:class:`~asrkd.data.manifest.Utterance`).
        topk: store the top-k log-probabilities (None or 0: dense).
        shard_size: utterances per shard (fixed when the cache is started).
        batch_seconds: padded audio seconds per teacher batch.
        force: replace a cache whose key does not match instead of refusing it.

    Returns the index (dict). Raises :class:`CacheKeyError` when ``out_dir`` holds a cache
    of another teacher, other settings or another manifest (unless ``force``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = "topk" if topk else "dense"
    if topk and topk > len(teacher.vocab):
        raise ValueError(f"--topk {topk} exceeds the teacher's vocabulary of {len(teacher.vocab)}")
    settings = cache_settings(kind, topk, int(getattr(teacher, "sample_rate", SAMPLE_RATE)))
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("the manifest repeats utterance ids; load it with asrkd.data.load_manifest")
    t0 = time.time()
    tfp = teacher_fingerprint(teacher)
    fps = [entry_fingerprint(u) for u in utterances]
    manifest = {"path": str(manifest_path), "count": len(fps), "hash": _manifest_hash(fps)}
    key = _overall_key(tfp["hash"], settings, manifest["hash"])
    index = _existing_index(out, key, tfp, settings, fps, manifest["hash"], force, log)
    if index is None:
        index = _new_index(out, key, tfp, settings, manifest, ids, max(1, int(shard_size)))
    remove_stale_temporaries(out)  # left by a kill during a shard or index write

    fp_by_id = {fp["id"]: fp for fp in fps}
    todo = _shards_to_compute(out, index, ids, fp_by_id, log)
    if not todo:
        log(f"teacher cache {out} is complete ({len(index['entries'])} utterances); nothing to do")
        return index
    if len(todo) < len(index["shards"]):
        log(
            f"resuming the teacher cache in {out}: {len(index['shards']) - len(todo)} of {len(index['shards'])} "
            "shards done"
        )
    by_id = {u.id: u for u in utterances}
    pending = [by_id[u] for n in todo for u in index["shards"][n]["ids"]]
    teacher_pass = _TeacherPass(teacher, out, index, todo, pending, fp_by_id, device)
    teacher_pass.run(_teacher_loader(pending, todo, index, batch_seconds, num_workers), progress)
    index["complete"] = all(s["done"] for s in index["shards"])
    _write_index(out, index)
    n_rej = sum(len(s["rejected"]) for s in index["shards"])
    log(
        f"cached {len(index['entries'])} utterances ({kind}{'' if kind == 'dense' else f', k={topk}'}) "
        f"from {len(pending)} pending in {time.time() - t0:.1f} s into {out}; {n_rej} rejected"
    )
    return index


def _new_index(
    out: Path,
    key: str,
    tfp: Mapping[str, Any],
    settings: Mapping[str, Any],
    manifest: Mapping[str, Any],
    ids: Sequence[str],
    shard_size: int,
) -> dict[str, Any]:
    """A fresh index (every shard to do), written."""
    shards = [
        {"file": SHARD_PATTERN.format(n), "ids": ids_n, "done": False, "rejected": []}
        for n, ids_n in enumerate(_plan(ids, shard_size))
    ]
    index = {
        "format": FORMAT,
        "key": key,
        "teacher": tfp,
        "settings": settings,
        "manifest": manifest,
        "shard_size": shard_size,
        "shards": shards,
        "entries": {},
        "complete": not shards,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write_index(out, index)
    return index


def _shards_to_compute(
    out: Path,
    index: dict[str, Any],
    ids: Sequence[str],
    fp_by_id: Mapping[str, Mapping[str, Any]],
    log: Callable[[str], None],
) -> list[int]:
    """The shards to (re)compute, in order: those not done, and those whose index records
    disagree with the manifest or the index itself, then those missing, truncated, altered,
    swapped, unhashed or unlike the index (said); the rest are kept."""
    plan = _plan(ids, index["shard_size"])
    _, bad = _shard_index_problems(index, plan, fp_by_id)
    for n in bad:
        _forget_shard(index, n, plan[n])
    bad.update(_bad_shards(out, index))
    if bad:
        bad = dict(sorted(bad.items()))
        log(f"recomputing {_describe_bad(index, bad).replace(' fail verification', ' that fail verification')}")
    for n in bad:
        _forget_shard(index, n, plan[n])
    return [n for n, s in enumerate(index["shards"]) if not s["done"]]


def _teacher_loader(
    pending: Sequence, todo: Sequence[int], index: Mapping[str, Any], batch_seconds: float, num_workers: int
):
    """Batches of the pending utterances' audio. Batches never straddle shards, and shards come
    in order: each one is written as soon as its last batch is done."""
    from asrkd.data import ASRDataset, Rejects, build_dataloader

    dataset = ASRDataset(pending, tokenizer=None, features=None, rejects=Rejects())
    batches: list[list[int]] = []
    start = 0
    for n in todo:
        count = len(index["shards"][n]["ids"])
        durations = [pending[start + i].duration for i in range(count)]
        batches += [[start + i for i in b] for b in duration_batches(durations, batch_seconds)]
        start += count
    return build_dataloader(dataset, batches, num_workers=num_workers)


class _ShardBuffer:
    """Outputs of one shard, gathered until all its utterances are in."""

    def __init__(self, number: int, ids: Sequence[str]):
        self.number = number
        self.ids = list(ids)
        self.outputs: dict[str, dict[str, torch.Tensor]] = {}
        self.rejected: list[dict[str, str]] = []

    @property
    def finished(self) -> bool:
        return len(self.outputs) + len(self.rejected) == len(self.ids)

    def tensors(self, kind: str) -> dict[str, Any]:
        ids = [u for u in self.ids if u in self.outputs]
        frames = [int(next(iter(self.outputs[u].values())).shape[0]) for u in ids]
        offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
        offsets[1:] = torch.tensor(frames, dtype=torch.long).cumsum(0)
        out: dict[str, Any] = {"format": FORMAT, "ids": ids, "frames": frames, "offsets": offsets}
        for name in _SHARD_TENSORS[kind]:
            out[name] = torch.cat([self.outputs[u][name] for u in ids]) if ids else torch.zeros(0)
        return out


class _TeacherPass:
    """One pass of the teacher over the shards to compute: outputs (or reject records) are
    gathered per shard, and each shard is written, with the index, once its last utterance is in."""

    def __init__(
        self,
        teacher,
        out: Path,
        index: dict[str, Any],
        todo: Sequence[int],
        pending: Sequence,
        fp_by_id: Mapping[str, Mapping[str, Any]],
        device: str | torch.device,
    ):
        self.out, self.index = out, index
        self.pending, self.by_id = pending, {u.id: u for u in pending}
        self.settings = index["settings"]
        self.kind, self.topk = self.settings["kind"], self.settings["topk"]
        self.teacher_spec, self.teacher_hash = index["teacher"]["spec"], index["teacher"]["hash"]
        self.fp_by_id = fp_by_id
        self.buffers = {n: _ShardBuffer(n, index["shards"][n]["ids"]) for n in todo}
        self.shard_of = {u: n for n in todo for u in index["shards"][n]["ids"]}
        self.index_dtype = _index_dtype(len(teacher.vocab))
        self.min_samples = teacher_min_samples(teacher)
        self.device = torch.device(device)
        self.teacher = teacher.to(self.device)
        self.audio_seconds = 0.0
        self.bar = None

    def run(self, loader: Iterable, progress: bool) -> None:
        from tqdm import tqdm

        t_run = time.time()
        self.bar = tqdm(total=len(self.pending), unit="utt", desc="teacher", disable=not progress, dynamic_ncols=True)
        try:
            for batch in loader:
                self._add_batch(batch)
                elapsed = time.time() - t_run
                self.bar.set_postfix_str(f"{self.audio_seconds / max(elapsed, 1e-9):.0f}x real time", refresh=False)
                for n in [n for n, buf in self.buffers.items() if buf.finished]:
                    self._finish_shard(self.buffers.pop(n))
        finally:
            self.bar.close()

    def _reject(self, record: dict[str, str], *, heard: bool = True) -> None:
        self.buffers[self.shard_of[record["id"]]].rejected.append(record)
        self._count(record["id"], heard)

    def _keep(self, uid: str, outputs: dict[str, torch.Tensor]) -> None:
        self.buffers[self.shard_of[uid]].outputs[uid] = outputs
        self._count(uid, heard=True)

    def _count(self, uid: str, heard: bool) -> None:
        if heard:  # the speed shown is of the audio the teacher was given, not of files that failed to load
            self.audio_seconds += self.by_id[uid].duration
        self.bar.update(1)

    def _add_batch(self, batch: Mapping[str, Any]) -> None:
        for r in batch["rejected"]:
            self._reject({"id": r.id, "kind": r.kind, "reason": r.reason}, heard=False)
        keep, short = _split_too_short(batch, self.min_samples, self.settings["sample_rate"])
        for r in short:
            self._reject(r)
        if not keep:
            return
        waves, lengths, ids = batch["waves"], batch["wave_lengths"], batch["ids"]
        if short:  # no copy in the usual case
            lengths, ids = lengths[keep], [ids[b] for b in keep]
            waves = waves[keep, : int(lengths.max())]
        waves = waves.to(self.device)
        try:
            logits, out_lengths = self.teacher(waves, lengths.to(self.device))
        except Exception as err:
            raise RuntimeError(f"teacher {self.teacher_spec!r} failed on utterances {ids}: {err}") from err
        logits, out_lengths = logits.float().cpu(), out_lengths.cpu()
        for b, uid in enumerate(ids):
            frames = int(out_lengths[b])
            item = logits[b, :frames]
            if frames <= 0:
                why = f"{uid}: the teacher gives no output frames for {self.by_id[uid].duration:.3f} s"
                self._reject({"id": uid, "kind": "too_short", "reason": why})
            elif not torch.isfinite(item).all():
                why = f"{uid}: the teacher's outputs are not finite"
                self._reject({"id": uid, "kind": "unsupported", "reason": why})
            else:
                self._keep(uid, _convert(item, self.kind, self.topk, self.index_dtype))

    def _finish_shard(self, buf: _ShardBuffer) -> None:
        """Write the shard, hashing the bytes as they go, then the index recording it done."""
        data = buf.tensors(self.kind)
        writers: list[_HashingWriter] = []

        def write(f) -> None:
            writers.append(_HashingWriter(f))
            torch.save(data, writers[-1])

        atomic_write(self.out / SHARD_PATTERN.format(buf.number), write)
        index = self.index
        for uid, frames in zip(data["ids"], data["frames"]):
            fp = self.fp_by_id[uid]
            index["entries"][uid] = {
                "shard": buf.number,
                "frames": frames,
                "key": cache_key(self.teacher_hash, fp, self.settings),
                "entry": fp,
            }
        written = writers[-1]
        index["shards"][buf.number].update(
            done=True, rejected=buf.rejected, size=written.size, sha256=written.sha256.hexdigest()
        )
        index["complete"] = all(s["done"] for s in index["shards"])
        _write_index(self.out, index)


def _index_dtype(vocab_size: int) -> torch.dtype:
    """Top-k token ids: int16 while the vocabulary fits, else int32."""
    return torch.int16 if vocab_size <= 32767 else torch.int32


def _convert(logits: torch.Tensor, kind: str, topk: int | None, index_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """(T, V) teacher logits -> what one utterance stores."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if kind == "dense":
        return {"logits": logprobs.half()}
    values, idx = logprobs.topk(min(topk, logprobs.shape[-1]), dim=-1)
    return {"topk_idx": idx.to(index_dtype), "topk_logprob": values.half()}


def teacher_min_samples(teacher) -> int:
    """Fewest samples one utterance must have for ``teacher``: its ``min_samples``
    (:attr:`asrkd.models.acoustic.AcousticModel.min_samples`: what the network declares, e.g.
    320 for Whisper's front-end, or what a log-mel front-end needs), else 1."""
    return int(getattr(teacher, "min_samples", None) or 1)


def _split_too_short(batch: Mapping[str, Any], min_samples: int, sample_rate: int) -> tuple[list[int], list[dict]]:
    """Rows of a batch the teacher can take, and reject records for the clips too short for it
    (one such clip would otherwise fail the whole batch, and the run)."""
    keep, short = [], []
    for b, (uid, n) in enumerate(zip(batch["ids"], batch["wave_lengths"].tolist() if batch["size"] else [])):
        if n >= min_samples:
            keep.append(b)
        else:
            short.append(
                {
                    "id": uid,
                    "kind": "too_short",
                    "reason": f"{uid}: {n} samples ({1000 * n / sample_rate:.1f} ms); the teacher needs at "
                    f"least {min_samples} ({1000 * min_samples / sample_rate:.0f} ms)",
                }
            )
    return keep, short


def _forget_shard(index: dict[str, Any], n: int, ids: Sequence[str]) -> None:
    """Mark shard ``n`` to be computed again: its record is rebuilt from what the cache derives (its
    file name, the manifest's plan ``ids``), and its entries go (those it plans and any naming it)."""
    planned = set(ids)
    index["entries"] = {
        u: e
        for u, e in index["entries"].items()
        if u not in planned and not (isinstance(e, dict) and e.get("shard") == n)
    }
    index["shards"][n] = {"file": SHARD_PATTERN.format(n), "ids": list(ids), "done": False, "rejected": []}


def _existing_index(
    out: Path,
    key: str,
    tfp: Mapping[str, Any],
    settings: Mapping[str, Any],
    fps: Sequence[Mapping[str, Any]],
    manifest_hash: str,
    force: bool,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """The index in ``out`` to resume, or None to start afresh: none there, replaced with ``force``,
    or unusable as a whole (not JSON, a part missing, its parts no longer giving its key, a plan
    that does not fit the manifest: said, and the whole cache recomputed). :class:`CacheKeyError`
    for a sound cache of another key without ``force``."""
    path = out / INDEX
    if not path.is_file():
        return None
    index, problem = _parse_index(path)
    problem = problem or _index_problem(path, index, tfp, settings, manifest_hash)
    if problem is None and index["key"] != key:
        if not force:
            raise CacheKeyError(
                f"{out} holds a teacher cache with another key: {_explain(index, tfp, settings, fps)}. "
                "Use another --out folder, or --force to replace it"
            )
        log(f"--force: replacing the cache in {out} ({_explain(index, tfp, settings, fps)})")
        _remove_own_files(out)
        return None
    if problem is None:
        size = index.get("shard_size")
        if not (_is_count(size) and size > 0 and len(_plan([fp["id"] for fp in fps], size)) == len(index["shards"])):
            problem = f"{path} is unusable: its shard_size {size!r} does not give its {len(index['shards'])} shards"
    if problem is None:
        problem, _ = _shard_index_problems(index)
        problem = problem and f"{path} is unusable: {problem}"
    if problem is None:
        return index
    log(f"{problem}; recomputing the whole cache")
    _remove_own_files(out)
    return None


def _explain(
    index: Mapping[str, Any], tfp: Mapping[str, Any], settings: Mapping[str, Any], fps: Sequence[Mapping[str, Any]]
) -> str:
    """Which part of an existing cache's key differs from the new one."""
    parts = []
    if index["teacher"]["hash"] != tfp["hash"]:
        parts.append(f"the teacher differs ({_describe_teacher_diff(index['teacher'], tfp)})")
    if index["settings"] != dict(settings):
        diff = [
            f"{k} {index['settings'].get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(set(index["settings"]) | set(settings))
            if index["settings"].get(k) != settings.get(k)
        ]
        parts.append(f"the settings differ ({', '.join(diff)})")
    if index["manifest"]["hash"] != _manifest_hash(fps):
        old_ids = [
            u for s in index["shards"] if isinstance(s, dict) and isinstance(s.get("ids"), list) for u in s["ids"]
        ]
        new_ids = [fp["id"] for fp in fps]
        old_set, new_set = set(old_ids), set(new_ids)
        added = [u for u in new_ids if u not in old_set]
        removed = [u for u in old_ids if u not in new_set]
        old_fp = {
            uid: e["entry"]
            for uid, e in index["entries"].items()
            if isinstance(e, dict) and isinstance(e.get("entry"), dict)
        }
        changed = [
            f"{fp['id']}: {_describe_entry_diff(old_fp[fp['id']], fp)}"
            for fp in fps
            if fp["id"] in old_fp and any(old_fp[fp["id"]].get(k) != fp.get(k) for k in fp)
        ]
        detail = []
        if added:
            detail.append(f"{len(added)} entries added (e.g. {', '.join(added[:3])})")
        if removed:
            detail.append(f"{len(removed)} removed (e.g. {', '.join(removed[:3])})")
        if changed:
            detail.append(f"{len(changed)} changed (e.g. {'; '.join(changed[:3])})")
        if not detail:
            detail.append("same entries in another order" if sorted(old_ids) == sorted(new_ids) else "entries differ")
        parts.append(f"the manifest differs (was {index['manifest'].get('path')}: {', '.join(detail)})")
    return "; ".join(parts) or "the key differs"


__all__ = [
    "CacheIntegrityError",
    "CacheKeyError",
    "TeacherCache",
    "TeacherTargets",
    "build_cache",
    "cache_key",
    "cache_settings",
    "cache_teacher",
    "collate_teacher",
    "entry_fingerprint",
    "teacher_fingerprint",
    "teacher_min_samples",
]
