"""Teacher -> student alignment for frame-level distillation.

A teacher's CTC posteriors (a :class:`TeacherOutput`) must be expressed in the student's
vocabulary and on the student's frames before the KD loss can compare them:

- :class:`VocabMap`: teacher vocabulary V_t -> student vocabulary V_s. Teacher tokens that
  map to one student token have their probabilities summed (exact log-sum-exp per group);
  teacher tokens with no student counterpart are dropped and the rest renormalised.
- :func:`resample_frames` (dense) and :func:`resample_topk`: teacher frame rate -> student
  frame rate, any rational ratio, by averaging teacher frame *probabilities* weighted by
  their time overlap with each student frame; they also apply the streaming shift (student
  frame t is trained towards teacher frame t - k; the first k frames are masked out).
  :func:`shift_topk` is the shift alone for a top-k teacher at the student's rate.
- :func:`blank_probability`, :func:`blank_probability_topk`, :func:`blank_weights`:
  per-frame KD weights from the teacher's blank posterior (blank-aware KD).

Everything here works on teacher targets, which are constants: nothing is differentiated.
Distributions are taken at temperature 1; the KD op tempers the aligned distribution.
The argument checks shared with :class:`asrkd.kd.loss.DistillationLoss` live here too
(:func:`check_blank_options`, :func:`check_shift`, :func:`check_choice`, :func:`check_lengths`,
:func:`check_topk_pair`), so a setting is refused with the same words wherever it is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from asrkd.data.text import BLANK_CLASS, canonical_symbol, is_special
from asrkd.ops.reference import topk_tail

__all__ = [
    "BLANK_MODES",
    "RESAMPLE_METHODS",
    "TeacherOutput",
    "VocabMap",
    "blank_probability",
    "blank_probability_topk",
    "blank_weights",
    "check_blank_options",
    "check_choice",
    "check_lengths",
    "check_shift",
    "check_topk_pair",
    "frame_ratio",
    "resample_frames",
    "resample_topk",
    "resampled_lengths",
    "shift_topk",
]

logger = logging.getLogger(__name__)

BLANK_MODES = ("none", "threshold", "select")
RESAMPLE_METHODS = ("ctc", "average")


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # torch.logaddexp is several times slower on CPU than this; -inf on both sides gives -inf.
    m = torch.maximum(a, b)
    m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    return ((a - m).exp() + (b - m).exp()).log() + m


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ---------------------------------------------------------------------------------------
# Argument checks (one wording for the loss and the functions it calls)


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_blank_options(mode: str, threshold: float, weight: float) -> None:
    """``blank_mode`` one of :data:`BLANK_MODES`; ``blank_threshold`` and ``blank_weight`` in [0, 1]."""
    check_choice("blank_mode", mode, BLANK_MODES)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"blank_threshold must lie in [0, 1], got {threshold}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blank_weight must lie in [0, 1], got {weight}")


def check_shift(shift: int) -> None:
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
        raise ValueError(f"shift must be an int >= 0 (student frames), got {shift!r}")


def check_lengths(
    name: str, lengths: torch.Tensor | None, batch: int, frames: int, device, *, none_means_all: bool = False
) -> torch.Tensor:
    """``lengths`` as int64 on ``device``, once checked: an integer tensor of shape (batch,) in
    [0, frames]. With ``none_means_all``, None stands for ``frames`` everywhere."""
    if lengths is None and none_means_all:
        return torch.full((batch,), frames, dtype=torch.long, device=device)
    if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.shape != (batch,):
        raise ValueError(f"{name} must be an integer tensor of shape ({batch},), got {lengths!r:.80}")
    lengths = lengths.to(device=device, dtype=torch.long)
    if batch and (int(lengths.min()) < 0 or int(lengths.max()) > frames):
        raise ValueError(f"{name} must lie in [0, {frames}], got [{int(lengths.min())}, {int(lengths.max())}]")
    return lengths


def check_topk_pair(
    topk_idx: torch.Tensor,
    topk_logprob: torch.Tensor,
    *,
    name: str = "topk_idx and topk_logprob",
    batch: int | None = None,
) -> None:
    """Both (B, T, K), with B = ``batch`` when given."""
    if topk_idx.dim() != 3 or topk_logprob.shape != topk_idx.shape or batch not in (None, topk_idx.shape[0]):
        raise ValueError(
            f"{name} must both have shape ({'B' if batch is None else f'B={batch}'}, T, K), got "
            f"{tuple(topk_idx.shape)} and {tuple(topk_logprob.shape)}"
        )


# ---------------------------------------------------------------------------------------
# Teacher outputs


@dataclass(frozen=True)
class TeacherOutput:
    """A batch of teacher outputs in the teacher's vocabulary and on its frames: what
    :class:`asrkd.kd.loss.DistillationLoss` aligns to the student (``forward(..., teacher=)``),
    what :meth:`asrkd.kd.cache.TeacherCache.targets` returns.

    Dense: ``logits`` (B, T_t, V_t), logits or log-probabilities in any float dtype (softmax
    reads both alike: log-probabilities are normalised logits). Top-k: ``topk_idx`` (B, T_t, K)
    teacher token ids and ``topk_logprob`` (B, T_t, K) their log-probabilities at temperature
    1, the rest of the mass spread evenly (:func:`asrkd.ops.reference.topk_tail`).
    ``lengths``: (B,) valid teacher frames; None: all T_t.
    """

    logits: torch.Tensor | None = None
    topk_idx: torch.Tensor | None = None
    topk_logprob: torch.Tensor | None = None
    lengths: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.topk_idx is None) != (self.topk_logprob is None):
            raise ValueError("TeacherOutput: give topk_idx and topk_logprob together")
        if (self.logits is None) == (self.topk_idx is None):
            raise ValueError("TeacherOutput: give logits (dense) or topk_idx + topk_logprob (top-k), one of them")

    @property
    def kind(self) -> str:
        """``"dense"`` or ``"topk"``."""
        return "dense" if self.logits is not None else "topk"

    def to(self, device: str | torch.device, *, non_blocking: bool = False) -> TeacherOutput:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return TeacherOutput(move(self.logits), move(self.topk_idx), move(self.topk_logprob), move(self.lengths))


# ---------------------------------------------------------------------------------------
# Vocabulary mapping


class VocabMap:
    """A many-to-one map from teacher token ids to student token ids.

    Probability mass of teacher tokens mapped to the same student token is summed.
    Teacher tokens with index -1 are *dropped*: their mass is removed and the remaining
    distribution renormalised, i.e. the aligned teacher is the teacher's distribution
    conditioned on emitting a token the student knows. Student tokens no teacher token maps
    to get probability 0.

    Build one with :meth:`from_vocabs` (by symbol name) or :meth:`identity`; apply it with
    :meth:`map_logits` (dense teacher) or :meth:`map_topk` (top-k teacher).

    Args:
        index: (V_t,) student id of each teacher id, or -1 to drop it.
        student_size: V_s.
        teacher_vocab, student_vocab: symbols, for reports and error messages.
        unmapped: the teacher symbols that had no student counterpart (dropped, or all sent
            to one student token, see :meth:`from_vocabs`).
    """

    def __init__(
        self,
        index: Sequence[int],
        student_size: int,
        *,
        teacher_vocab: Sequence[str] | None = None,
        student_vocab: Sequence[str] | None = None,
        unmapped: Sequence[str] = (),
    ):
        index = [int(i) for i in index]
        _check_index(index, student_size)
        self.teacher_size = len(index)
        self.student_size = int(student_size)
        self.teacher_vocab = list(teacher_vocab) if teacher_vocab is not None else [str(i) for i in range(len(index))]
        self.student_vocab = list(student_vocab) if student_vocab is not None else [str(i) for i in range(student_size)]
        self.unmapped = list(unmapped)
        self._index = torch.tensor(index, dtype=torch.long)
        self._kept = torch.nonzero(self._index >= 0).flatten()
        self._group_of_kept = self._index[self._kept]
        # Teacher tokens per student token (+ a sentinel slot V_s of size 0, see map_topk).
        self._group_size = torch.zeros(self.student_size + 1, dtype=torch.long).index_add_(
            0, self._group_of_kept, torch.ones_like(self._group_of_kept)
        )
        self.is_identity = self.teacher_size == self.student_size and index == list(range(self.student_size))
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def identity(cls, size: int, vocab: Sequence[str] | None = None) -> VocabMap:
        """Teacher and student share one vocabulary."""
        return cls(range(size), size, teacher_vocab=vocab, student_vocab=vocab)

    @classmethod
    def from_vocabs(
        cls,
        teacher_vocab: Sequence[str],
        student_vocab: Sequence[str],
        *,
        teacher_blank_id: int | None = None,
        student_blank_id: int = 0,
        unmapped: str = "drop",
        overrides: Mapping[str, str | None] | None = None,
        max_unmapped: float = 0.3,
    ) -> VocabMap:
        """Map two vocabularies by symbol name.

        Rules, in order, for each teacher symbol:

        1. the teacher's blank (``teacher_blank_id``) -> the student blank;
        2. ``overrides[symbol]`` (a student symbol, or ``None`` to drop it);
        3. the same symbol in the student vocabulary;
        4. the same *canonical* name (:func:`asrkd.data.text.canonical_symbol`): blank names
           (``<blank> <pad> <s> <b> <eps> <epsilon> <ctc_blank> _``) are the student blank;
           word delimiters ``| ▁ <space> <sp>`` and ``" "`` are one symbol (and ``▁`` in a
           piece a space); typographic apostrophes (’ ‘ ʼ ` ´ ′) are ``'``; case is folded;
        5. otherwise the symbol is *unmapped* (e.g. ``<unk>``, ``</s>``, digits for a
           student without digits).

        Unmapped symbols are dropped (``unmapped="drop"``: their mass is removed and the
        rest renormalised) or all assigned to one student symbol (``unmapped="<sym>"``).
        They are listed in :attr:`unmapped` and logged.

        Raises:
            ValueError: naming the unmapped symbols, when more than ``max_unmapped`` of the
                teacher's non-special symbols have no counterpart (a subword/BPE teacher for
                a character student, a different alphabet), when no teacher symbol reaches
                the student blank, or for a bad override.
        """
        teacher_vocab = [str(s) for s in teacher_vocab]
        student_vocab = [str(s) for s in student_vocab]
        _check_blank_ids(teacher_blank_id, student_blank_id, len(teacher_vocab), len(student_vocab))
        exact, canon = _student_names(student_vocab, student_blank_id)
        overrides = _checked_overrides(overrides, teacher_vocab, exact)
        index, missing = _match_by_name(teacher_vocab, teacher_blank_id, student_blank_id, overrides, exact, canon)
        _refuse_poor_match(teacher_vocab, missing, max_unmapped)
        if student_blank_id not in index:
            raise ValueError(
                "no teacher symbol maps to the student blank; give teacher_blank_id (the teacher's CTC blank) "
                "or an override"
            )
        if unmapped != "drop" and missing:
            if unmapped not in exact:
                raise ValueError(f"unmapped={unmapped!r} is neither 'drop' nor a student symbol")
            index = [exact[unmapped] if i < 0 and teacher_vocab[t] in missing else i for t, i in enumerate(index)]
        vm = cls(index, len(student_vocab), teacher_vocab=teacher_vocab, student_vocab=student_vocab, unmapped=missing)
        if not vm.is_identity:
            logger.info("teacher -> student vocabulary: %s", vm.describe())
        return vm

    # -- reporting ----------------------------------------------------------------------
    @property
    def dropped(self) -> list[str]:
        """Teacher symbols whose probability mass is removed (then renormalised)."""
        return [self.teacher_vocab[i] for i in range(self.teacher_size) if int(self._index[i]) < 0]

    @property
    def merged(self) -> dict[str, list[str]]:
        """Student symbol -> the teacher symbols summed into it, where there are several."""
        groups: dict[int, list[str]] = {}
        for t in range(self.teacher_size):
            s = int(self._index[t])
            if s >= 0:
                groups.setdefault(s, []).append(self.teacher_vocab[t])
        return {self.student_vocab[s]: g for s, g in groups.items() if len(g) > 1}

    @property
    def unreached(self) -> list[str]:
        """Student symbols no teacher symbol maps to (the aligned teacher gives them 0)."""
        return [self.student_vocab[s] for s in range(self.student_size) if int(self._group_size[s]) == 0]

    def describe(self) -> str:
        if self.is_identity:
            return f"identity over {self.student_size} symbols"
        parts = [f"{self.teacher_size} -> {self.student_size} symbols matched by name"]
        if self.merged:
            parts.append("merged " + ", ".join(f"{g} -> {s!r}" for s, g in self.merged.items()))
        if self.dropped:
            parts.append(f"dropped {self.dropped}")
        assigned = [s for s in self.unmapped if s not in self.dropped]
        if assigned:
            parts.append(f"unmapped {assigned} assigned to a fallback symbol")
        if self.unreached:
            parts.append(f"student symbols never reached {self.unreached}")
        return "; ".join(parts)

    def __repr__(self) -> str:
        return f"VocabMap({self.describe()})"

    def _on(self, device: torch.device) -> dict[str, torch.Tensor]:
        cache = self._device_cache.get(device)
        if cache is None:
            cache = {k: getattr(self, "_" + k).to(device) for k in ("index", "kept", "group_of_kept", "group_size")}
            self._device_cache[device] = cache
        return cache

    # -- application ----------------------------------------------------------------------
    @torch.no_grad()
    def map_logits(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits (or log-probs) (B, T, V_t) -> student log-probs (B, T, V_s), fp32.

        ``out[s] = logsumexp_{t -> s} z_t - logsumexp_{t kept} z_t``: exact per group (each
        group's own maximum is subtracted before exponentiating). Unreached student symbols
        get ``-inf``. Temporaries: one (B, T, V_t) buffer and the (B, T, V_s) output plus its
        per-group maxima.
        """
        if teacher_logits.dim() != 3 or teacher_logits.shape[-1] != self.teacher_size:
            raise ValueError(
                f"teacher logits must have shape (B, T, V_t={self.teacher_size}), got {tuple(teacher_logits.shape)}"
            )
        x = _float(teacher_logits)
        if self.is_identity:
            return torch.log_softmax(x, dim=-1)
        c = self._on(x.device)
        g = c["group_of_kept"]
        xk = x if len(c["kept"]) == self.teacher_size else x.index_select(-1, c["kept"])
        gmax = x.new_full((*x.shape[:-1], self.student_size), float("-inf"))
        gmax.scatter_reduce_(-1, g.expand_as(xk), xk, "amax")
        # Groups whose logits are all -inf (or empty) subtract 0 instead of -inf (no NaN).
        gmax = torch.where(torch.isfinite(gmax), gmax, torch.zeros((), dtype=x.dtype, device=x.device))
        e = (xk - gmax.index_select(-1, g)).exp_()
        out = torch.zeros_like(gmax).index_add_(-1, g, e)
        del e
        out.log_().add_(gmax)
        return out.sub_(torch.logsumexp(out, dim=-1, keepdim=True))

    @torch.no_grad()
    def map_topk(self, topk_idx: torch.Tensor, topk_logprob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A top-k teacher (teacher ids, log-probs at T=1) -> a top-k' teacher in student ids.

        Follows the semantics of :func:`asrkd.ops.kd_kl_div_topk`: the teacher's missing
        tail mass is spread evenly over its V_t - k unstored tokens. Stored ids are mapped,
        duplicates merged (log-sum-exp), the tail share of each merged token's unstored
        group mates added, dropped mass (stored and the tail's share) removed and the rest
        renormalised. Exact for k = V_t. The tail that remains (unstored teacher tokens of
        student symbols not in the top-k) is exact in total but, in the top-k format,
        spread evenly over the student's remaining symbols.

        Returns:
            ``(idx, logprob)`` of shape (B, T, k') with k' = min(k, V_s); ids are distinct
            per frame (int64), slots past a frame's merged entries hold other student ids
            with the even tail share, so the top-k op sees exactly the distribution above.
        """
        check_topk_pair(topk_idx, topk_logprob)
        idx = topk_idx.long()
        lp = _float(topk_logprob)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.teacher_size):
            raise ValueError(f"topk_idx must lie in [0, V_t={self.teacher_size})")
        if self.is_identity:
            return idx, lp
        V_s = self.student_size
        c = self._on(idx.device)
        sid = c["index"][idx]
        dropped = sid < 0
        sid = sid.masked_fill(dropped, V_s)  # dropped entries sort last, into the sentinel group
        p = lp.exp()
        per_tail = topk_tail(p, self.teacher_size)
        gsid, glog, gmass, stored_in_group = _merge_by_student_id(sid, lp, V_s)
        real = gsid < V_s
        # The tail's share of each merged symbol: its unstored teacher group mates.
        mates = (c["group_size"][gsid].to(lp.dtype) - stored_in_group).clamp_min(0.0) * real
        extra = per_tail[..., None] * mates
        glog = _logaddexp(glog, extra.log())
        gmass = gmass + extra
        # Kept mass: stored kept entries + the tail's share of kept teacher tokens.
        n_kept = float(len(c["kept"]))
        stored_kept = (~dropped).sum(-1).to(lp.dtype)
        z = (p * ~dropped).sum(-1) + per_tail * (n_kept - stored_kept)
        z = z.clamp_min(torch.finfo(lp.dtype).tiny)
        merged_mass = (gmass * real).sum(-1)
        rest = (z - merged_mass).clamp_min(0.0) / z
        glog = glog - z.log()[..., None]
        return _fill_topk_slots(gsid, glog, real, rest, min(idx.shape[-1], V_s), V_s)


def _check_index(index: Sequence[int], student_size: int) -> None:
    if not index:
        raise ValueError("VocabMap: the teacher vocabulary is empty")
    if student_size < 1:
        raise ValueError(f"VocabMap: student_size must be >= 1, got {student_size}")
    bad = [i for i in index if not -1 <= i < student_size]
    if bad:
        raise ValueError(f"VocabMap: student ids must lie in [-1, {student_size}), got {bad[:5]}")
    if all(i < 0 for i in index):
        raise ValueError("VocabMap: every teacher token is dropped")


def _check_blank_ids(teacher_blank_id: int | None, student_blank_id: int, V_t: int, V_s: int) -> None:
    if not 0 <= student_blank_id < V_s:
        raise ValueError(f"student_blank_id {student_blank_id} outside the student vocabulary of {V_s}")
    if teacher_blank_id is not None and not 0 <= teacher_blank_id < V_t:
        raise ValueError(f"teacher_blank_id {teacher_blank_id} outside the teacher vocabulary of {V_t}")


def _student_names(student_vocab: Sequence[str], blank_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """Student id of each symbol (the first of repeats), and of each canonical name; every blank
    name is the student blank."""
    exact: dict[str, int] = {}
    canon: dict[str, int] = {BLANK_CLASS: blank_id}
    for i, sym in enumerate(student_vocab):
        exact.setdefault(sym, i)
        if i != blank_id and canonical_symbol(sym) != BLANK_CLASS:
            canon.setdefault(canonical_symbol(sym), i)
    return exact, canon


def _checked_overrides(
    overrides: Mapping[str, str | None] | None, teacher_vocab: Sequence[str], exact: Mapping[str, int]
) -> dict[str, str | None]:
    overrides = dict(overrides or {})
    for sym, target in overrides.items():
        if sym not in teacher_vocab:
            raise ValueError(f"VocabMap override: {sym!r} is not a teacher symbol")
        if target is not None and target not in exact:
            raise ValueError(f"VocabMap override: {sym!r} -> {target!r}, which is not a student symbol")
    return overrides


def _match_by_name(
    teacher_vocab: Sequence[str],
    teacher_blank_id: int | None,
    student_blank_id: int,
    overrides: Mapping[str, str | None],
    exact: Mapping[str, int],
    canon: Mapping[str, int],
) -> tuple[list[int], list[str]]:
    """The rules of :meth:`VocabMap.from_vocabs`: each teacher symbol's student id (-1: none),
    and the unmapped symbols."""
    index: list[int] = []
    missing: list[str] = []
    for i, sym in enumerate(teacher_vocab):
        if i == teacher_blank_id:
            index.append(student_blank_id)
        elif sym in overrides:
            target = overrides[sym]
            index.append(-1 if target is None else exact[target])
        elif sym in exact:
            index.append(exact[sym])
        elif canonical_symbol(sym) in canon:
            index.append(canon[canonical_symbol(sym)])
        else:
            index.append(-1)
            missing.append(sym)
    return index, missing


def _refuse_poor_match(teacher_vocab: Sequence[str], missing: Sequence[str], max_unmapped: float) -> None:
    """ValueError naming the unmapped symbols when more than ``max_unmapped`` of the teacher's
    ordinary (non-``<...>``) symbols have no counterpart, saying so when they look like subwords."""
    ordinary = [s for s in teacher_vocab if not is_special(s)]
    bad = [s for s in missing if not is_special(s)]
    if not ordinary or len(bad) <= max_unmapped * len(ordinary):
        return
    pieces = [s for s in bad if len(s.lstrip("\u2581#")) > 1]
    hint = (
        f" {len(pieces)} of them are multi-character pieces: the teacher looks like a subword (BPE) "
        "model, which a character student cannot be distilled from frame by frame"
        if len(pieces) > len(bad) // 2
        else ""
    )
    shown = ", ".join(repr(s) for s in bad[:20]) + (f", ... ({len(bad) - 20} more)" if len(bad) > 20 else "")
    raise ValueError(
        f"no sensible vocabulary mapping: {len(bad)} of {len(ordinary)} teacher symbols have no student "
        f"counterpart (limit {max_unmapped:.0%}): {shown}.{hint} Use a teacher with the student's "
        "vocabulary, or pass overrides"
    )


def _merge_by_student_id(sid: torch.Tensor, lp: torch.Tensor, V_s: int):
    """Stored top-k entries grouped by student id: sorted, so each frame's groups fill slots
    0, 1, ... (the dropped sentinel V_s last). Returns per slot the student id (V_s past the
    groups), the group's log-probability (a log-sum-exp less its own maximum, exact far below
    the frame maximum), its probability, and how many stored entries it holds."""
    sid_sorted, order = sid.sort(dim=-1)
    lp_sorted = lp.gather(-1, order)
    new = torch.ones_like(sid_sorted, dtype=torch.bool)
    new[..., 1:] = sid_sorted[..., 1:] != sid_sorted[..., :-1]
    gid = new.long().cumsum(-1) - 1  # group slot of each sorted entry
    gmax = lp.new_full(lp.shape, float("-inf")).scatter_reduce_(-1, gid, lp_sorted, "amax")
    gmax = torch.where(torch.isfinite(gmax), gmax, torch.zeros((), dtype=lp.dtype, device=lp.device))
    gsum = torch.zeros_like(lp).scatter_add_(-1, gid, (lp_sorted - gmax.gather(-1, gid)).exp())
    gmass = gsum * gmax.exp()
    glog = gsum.log() + gmax
    gsid = torch.full_like(sid, V_s).scatter_(-1, gid, sid_sorted)
    stored_in_group = torch.zeros_like(lp).scatter_add_(-1, gid, torch.ones_like(lp))
    return gsid, glog, gmass, stored_in_group


def _fill_topk_slots(
    gsid: torch.Tensor, glog: torch.Tensor, real: torch.Tensor, rest: torch.Tensor, k_out: int, V_s: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k_out output slots of each frame: its merged symbols (``real`` slots of ``gsid``,
    ``glog``) first, then student ids not among them, each with an even share of ``rest``
    (the probability left), so the top-k op's tail sees the same distribution."""
    B, T, _ = gsid.shape
    device = gsid.device
    n_real = real.sum(-1, keepdim=True)  # (B, T, 1) merged symbols per frame
    slot = torch.arange(k_out, device=device)
    # Filler slot m (m = 0, 1, ...) gets the m-th student id not among the merged ones.
    free = torch.ones(B, T, V_s + 1, dtype=torch.bool, device=device).scatter_(-1, gsid, False)[..., :V_s]
    rank = free.long().cumsum(-1) - 1
    dest = torch.where(free & (rank < k_out), rank, k_out)  # slot k_out: a bin for the rest
    ids = torch.arange(V_s, device=device).expand(B, T, V_s)
    free_ids = torch.zeros(B, T, k_out + 1, dtype=torch.long, device=device).scatter_(-1, dest, ids)
    fill_ids = free_ids.gather(-1, (slot - n_real).clamp_min(0))
    n_free = (V_s - n_real).clamp_min(1).to(glog.dtype)
    fill_lp = (rest[..., None] / n_free).log().expand(B, T, k_out)
    is_real = slot < n_real
    out_idx = torch.where(is_real, gsid[..., :k_out], fill_ids)
    out_lp = torch.where(is_real, glog[..., :k_out], fill_lp)
    return out_idx, out_lp


# ---------------------------------------------------------------------------------------
# Frame-rate resampling and the streaming shift


def _as_fraction(rate: float | Fraction, name: str) -> Fraction:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, Fraction)):
        raise TypeError(f"{name} must be a number, got {type(rate).__name__}")
    if not math.isfinite(float(rate)) or float(rate) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {rate}")
    # 16.666666666666668 -> 50/3: frame rates are ratios of small integers.
    return Fraction(rate).limit_denominator(10_000) if isinstance(rate, float) else Fraction(rate)


def frame_ratio(from_rate: float, to_rate: float) -> Fraction:
    """Source frames per target frame, as an exact fraction (50 Hz -> 25 Hz: 2)."""
    return _as_fraction(from_rate, "from_rate") / _as_fraction(to_rate, "to_rate")


def resampled_lengths(lengths: torch.Tensor, from_rate: float, to_rate: float) -> torch.Tensor:
    """Frames at ``to_rate`` that overlap the first ``lengths`` frames at ``from_rate``:
    ``ceil(lengths · to_rate / from_rate)`` (a partly covered last frame counts)."""
    r = frame_ratio(from_rate, to_rate)
    lengths = lengths.long()
    return -torch.div(-lengths * r.denominator, r.numerator, rounding_mode="floor")


def _frame_plan(num_out: int, ratio: Fraction, shift: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source frames overlapping each target frame and their overlaps, exactly.

    Target frame j covers source time [(j - shift)·ρ, (j - shift + 1)·ρ) in source-frame
    units (ρ = p/q); source frame i covers [i, i + 1). Working in units of 1/q makes every
    boundary an integer, so 50 -> 25 Hz gives weights of exactly 1/2, not 0.4999.

    Returns ``idx`` (num_out, W) source frame ids (may be < 0) and ``overlap`` (num_out, W)
    float64 fractions of the target frame covered by each (0 for slots past the band).
    """
    p, q = ratio.numerator, ratio.denominator
    j = torch.arange(num_out, dtype=torch.long, device=device) - shift
    a, b = j * p, (j + 1) * p  # target frame boundaries, in 1/q source-frame units
    lo = torch.div(a, q, rounding_mode="floor")
    hi = -torch.div(-b, q, rounding_mode="floor")
    width = int((hi - lo).max()) if num_out else 1
    idx = lo[:, None] + torch.arange(width, dtype=torch.long, device=device)
    start = torch.maximum(a[:, None], idx * q)
    end = torch.minimum(b[:, None], (idx + 1) * q)
    overlap = (end - start).clamp_min(0).to(torch.float64) / p
    return idx, overlap


def _clamp_to_valid(idx: torch.Tensor, lengths: torch.Tensor, T_in: int) -> torch.Tensor:
    """Source frame ids (..., 1 or B, num_out) clamped to a valid frame of each utterance
    (-> (..., B, num_out)): padded source frames may hold anything (even NaN), and a weight of
    0 times NaN is still NaN, so they are never read."""
    return torch.minimum(idx.clamp_min(0), (lengths - 1).clamp_min(0)[:, None]).clamp_max(max(T_in - 1, 0))


def _per_utterance_plan(lengths, T_in, num_out, ratio, shift, device):
    """(W, B, num_out) clamped source ids and normalised weights, and the (B, num_out) mask
    of target frames that overlap at least one valid source frame."""
    idx, overlap = _frame_plan(num_out, ratio, shift, device)
    idx, overlap = idx.t(), overlap.t()  # (W, num_out)
    inside = (idx[:, None, :] >= 0) & (idx[:, None, :] < lengths[None, :, None])  # (W, B, num_out)
    weight = overlap[:, None, :] * inside
    norm = weight.sum(0)  # (B, num_out): covered fraction of each target frame
    valid = norm > 0
    weight = weight / torch.where(valid, norm, torch.ones_like(norm))
    return _clamp_to_valid(idx[:, None, :], lengths, T_in), weight, valid, norm


def _check_frames(num_frames, shift, T_in, ratio):
    check_shift(shift)
    if num_frames is None:
        return -(-T_in * ratio.denominator // ratio.numerator)
    if not isinstance(num_frames, int) or num_frames < 0:
        raise ValueError(f"num_frames must be an int >= 0, got {num_frames!r}")
    return num_frames


def _check_method(method: str, blank_id: int | None) -> None:
    check_choice("method", method, RESAMPLE_METHODS)
    if method == "ctc" and blank_id is None:
        raise ValueError('method="ctc" needs the blank_id of the distributions')


def _keep_spikes_(probs: torch.Tensor, frames_covered: torch.Tensor, blank_id: int) -> torch.Tensor:
    """Turn averaged CTC posteriors of merged frames into spike-preserving ones, in place.

    A CTC model fires a token in one frame and emits blank around it, so the plain average
    of two 50 Hz frames gives a 25 Hz frame with the token at ≤ 0.5 and blank at ≥ 0.5: a
    student matching it learns to delete (on Whisper-tiny CTC posteriors of the mini corpus,
    27 % of the frame pairs holding a non-blank argmax get a blank argmax that way). Here the
    non-blank mass is *summed* over the merged source frames (the average times the number of
    frames covered), capped at 1, and blank gets the rest: a spike keeps its probability.
    """
    p_blank = probs[..., blank_id].clone()
    # Σ of the non-blank columns directly (not 1 - p_blank, which cancels when p_blank ≈ 1),
    # then both normalised (a mapped or top-k teacher need not sum to 1 exactly).
    non_blank = probs[..., :blank_id].sum(-1) + probs[..., blank_id + 1 :].sum(-1)
    total = (p_blank + non_blank).clamp_min(1e-30)
    probs.div_(total[..., None])
    p_blank.div_(total)
    non_blank.div_(total)
    factor = torch.minimum(frames_covered.to(probs.dtype), 1.0 / non_blank.clamp_min(1e-30))
    probs.mul_(factor[..., None])
    probs[..., blank_id] = (p_blank - non_blank * (factor - 1.0)).clamp_min(0.0)
    return probs


@torch.no_grad()
def resample_frames(
    logprobs: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    from_rate: float,
    to_rate: float,
    num_frames: int | None = None,
    shift: int = 0,
    method: str = "average",
    blank_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample per-frame distributions to another frame rate, in the probability domain.

    Output frame j is the average of the source frame probabilities that overlap its time
    span, each weighted by the overlap (an explicit, exact overlap matrix, applied band by
    band): 50 -> 25 Hz averages pairs, 50 -> 16.67 Hz triples, 50 -> 12.5 Hz four frames,
    50 -> 20 Hz mixes 2.5 frames (weights 2/5, 2/5, 1/5 or 1/5, 2/5, 2/5), 25 -> 50 Hz
    copies each frame twice. A frame only partly covered by valid source frames (the last
    one) averages the part that is covered.

    ``method="ctc"`` (with ``blank_id``) keeps CTC spikes when frames are merged (rate
    lowered): non-blank probabilities are summed over the merged frames instead of averaged,
    capped at 1, and blank takes the rest (see :func:`_keep_spikes_`). Raising the rate is
    the same for both methods.

    With ``shift = k`` output frame j takes the source time of frame j - k: the teacher is
    delayed by k output frames. Why this direction: a streaming student sees little or no
    future audio, so it emits a token later than a full-context teacher, which fires as soon
    as (or before) the sound ends. Training student frame t towards teacher frame t - k lets
    the student wait k frames instead of being asked to predict the future. The first k
    frames have no target (``valid`` False: give them weight 0); the last k source frames
    fall off the end.

    Args:
        logprobs: (B, T_in, V) log-probabilities, or logits (normalised here; any float dtype).
        lengths: (B,) valid source frames (integers); None: all T_in.
        from_rate, to_rate: frames per second of the source and the output (any positive
            numbers; floats are read as fractions with denominators up to 10 000).
        num_frames: output length; default ``ceil(T_in · to_rate / from_rate)``. Longer
            outputs are padded, shorter ones cut.
        shift: delay in output frames (>= 0).

    Returns:
        ``(out, valid)``: ``out`` (B, num_frames, V) float32 log-probabilities; ``valid``
        (B, num_frames) bool, True where the frame overlaps a valid source frame, i.e.
        ``shift <= j < shift + resampled_lengths(lengths)``. Frames that are not valid hold the
        uniform distribution (finite, to be masked by the caller).
    """
    if logprobs.dim() != 3:
        raise ValueError(f"logprobs must have shape (B, T, V), got {tuple(logprobs.shape)}")
    B, T_in, V = logprobs.shape
    ratio = frame_ratio(from_rate, to_rate)
    _check_method(method, blank_id)
    num_out = _check_frames(num_frames, shift, T_in, ratio)
    lengths = check_lengths("lengths", lengths, B, T_in, logprobs.device, none_means_all=True)
    x = _float(logprobs)
    out = x.new_zeros(B, num_out, V)
    if T_in == 0 or num_out == 0:
        return out, torch.zeros(B, num_out, dtype=torch.bool, device=x.device)
    lse = torch.logsumexp(x, dim=-1)  # (B, T_in): normalises logits without a (B, T, V) copy
    src, weight, valid, covered = _per_utterance_plan(lengths, T_in, num_out, ratio, shift, x.device)
    weight = weight.to(x.dtype)
    for w in range(src.shape[0]):  # the band (a few overlapping source frames), not the frames
        g = x.gather(1, src[w][..., None].expand(B, num_out, V))
        g.sub_(lse.gather(1, src[w])[..., None]).exp_()
        out.addcmul_(g, weight[w][..., None])
    if method == "ctc" and ratio > 1:
        _keep_spikes_(out, covered * float(ratio), blank_id)
    return out.log_().masked_fill_(~valid[..., None], -math.log(V)), valid


@torch.no_grad()
def resample_topk(
    topk_idx: torch.Tensor,
    topk_logprob: torch.Tensor,
    vocab_size: int,
    lengths: torch.Tensor | None = None,
    *,
    from_rate: float,
    to_rate: float,
    num_frames: int | None = None,
    shift: int = 0,
    method: str = "average",
    blank_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`resample_frames` (``method`` and ``blank_id`` included) for a top-k teacher: each
    source frame is the top-k distribution (tail spread evenly, as in
    :func:`asrkd.ops.kd_kl_div_topk`), and the average is built directly as dense
    (B, num_frames, vocab_size) log-probabilities (the union of several frames' top-k sets is
    not a top-k set). No dense source frame is materialised: each band step adds the even
    tail and scatters the k stored values.

    Returns ``(out, valid)`` as :func:`resample_frames`.
    """
    check_topk_pair(topk_idx, topk_logprob)
    B, T_in, K = topk_idx.shape
    if K > vocab_size:
        raise ValueError(f"top-k of K={K} entries exceeds vocab_size={vocab_size}")
    ratio = frame_ratio(from_rate, to_rate)
    _check_method(method, blank_id)
    num_out = _check_frames(num_frames, shift, T_in, ratio)
    lengths = check_lengths("lengths", lengths, B, T_in, topk_idx.device, none_means_all=True)
    lp = _float(topk_logprob)
    out = lp.new_zeros(B, num_out, vocab_size)
    if T_in == 0 or num_out == 0:
        return out, torch.zeros(B, num_out, dtype=torch.bool, device=lp.device)
    p = lp.exp()
    tail = topk_tail(p, vocab_size)
    idx = topk_idx.long()
    src, weight, valid, covered = _per_utterance_plan(lengths, T_in, num_out, ratio, shift, lp.device)
    weight = weight.to(lp.dtype)
    for w in range(src.shape[0]):
        s = src[w]
        t = tail.gather(1, s)  # (B, num_out)
        out.add_((t * weight[w])[..., None])
        sel = s[..., None].expand(B, num_out, K)
        vals = (p.gather(1, sel) - t[..., None]) * weight[w][..., None]
        out.scatter_add_(-1, idx.gather(1, sel), vals)
    out.clamp_min_(0.0)
    if method == "ctc" and ratio > 1:
        _keep_spikes_(out, covered * float(ratio), blank_id)
    return out.log_().masked_fill_(~valid[..., None], -math.log(vocab_size)), valid


@torch.no_grad()
def shift_topk(
    topk_idx: torch.Tensor, topk_logprob: torch.Tensor, lengths: torch.Tensor, *, num_frames: int, shift: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A top-k teacher on the frames of a student with its frame rate: output frame j holds
    source frame j - ``shift`` (the streaming delay of :func:`resample_frames`), cut or padded
    to ``num_frames``. A gather of the k entries, no dense frame; output frames outside
    ``[shift, shift + lengths)`` repeat a valid frame, for the caller to mask.

    Args:
        topk_idx, topk_logprob: (B, T_in, K).
        lengths: (B,) valid source frames.

    Returns:
        ``(idx, logprob)`` of shape (B, num_frames, K).
    """
    B, T_in, K = topk_idx.shape
    if shift == 0 and T_in >= num_frames:
        return topk_idx[:, :num_frames], topk_logprob[:, :num_frames]
    src = (torch.arange(num_frames, device=topk_idx.device) - shift)[None, :]
    src = _clamp_to_valid(src, lengths.to(topk_idx.device), T_in)[..., None].expand(B, num_frames, K)
    return topk_idx.gather(1, src), topk_logprob.gather(1, src)


# ---------------------------------------------------------------------------------------
# Blank-aware KD


@torch.no_grad()
def blank_probability(teacher: torch.Tensor, blank_id: int) -> torch.Tensor:
    """(B, T, V) teacher logits or log-probs -> (B, T) blank probability (fp32)."""
    x = _float(teacher)
    return (x[..., blank_id] - torch.logsumexp(x, dim=-1)).exp()


@torch.no_grad()
def blank_probability_topk(
    topk_idx: torch.Tensor, topk_logprob: torch.Tensor, blank_id: int, vocab_size: int
) -> torch.Tensor:
    """Blank probability of a top-k teacher: its stored value, or the even tail share."""
    p = _float(topk_logprob).exp()
    hit = topk_idx.long() == blank_id
    return torch.where(hit.any(-1), (p * hit).sum(-1), topk_tail(p, vocab_size))


@torch.no_grad()
def blank_weights(
    blank_prob: torch.Tensor,
    mode: str,
    *,
    threshold: float = 0.5,
    weight: float = 0.1,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-frame KD weights from the teacher's blank posterior.

    A frame is a *blank frame* when the teacher's blank probability exceeds ``threshold``.

    - ``"none"``: every frame 1.
    - ``"threshold"``: blank frames get ``weight`` (e.g. 0.1), the others 1. CTC teachers are
      blank most of the time; this keeps those frames from dominating the average.
    - ``"select"``: per utterance, all non-blank frames plus as many blank frames as there
      are non-blank ones (all blank frames if there are fewer), drawn uniformly without
      replacement with ``generator`` (deterministic for a seeded generator); the chosen
      frames 1, the rest 0. An all-blank utterance gets no KD frames.

    Args:
        blank_prob: (B, T) teacher blank probabilities.
        mode: one of :data:`BLANK_MODES`.
        threshold: in [0, 1].
        weight: in [0, 1], the weight of blank frames in ``"threshold"`` mode.
        mask: (B, T) bool frames that exist (others get 0 and are never selected); None: all.
        generator: a CPU (or same-device) ``torch.Generator`` for ``"select"``.

    Returns:
        (B, T) float32 weights, 0 outside ``mask``.
    """
    check_blank_options(mode, threshold, weight)
    if blank_prob.dim() != 2:
        raise ValueError(f"blank_prob must have shape (B, T), got {tuple(blank_prob.shape)}")
    B, T = blank_prob.shape
    valid = torch.ones(B, T, dtype=torch.bool, device=blank_prob.device) if mask is None else mask.bool()
    if valid.shape != (B, T):
        raise ValueError(f"mask must have shape (B, T) = ({B}, {T}), got {tuple(valid.shape)}")
    is_blank = (blank_prob > threshold) & valid
    if mode == "none":
        return valid.float()
    if mode == "threshold":
        return torch.where(is_blank, weight, 1.0).float() * valid
    nonblank = valid & ~is_blank
    gen_device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.rand(B, T, generator=generator, device=gen_device).to(blank_prob.device)
    keys = torch.where(is_blank, keys, 2.0)  # blank frames first, in random order
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(T, device=order.device).expand(B, T))
    chosen = is_blank & (rank < nonblank.sum(1, keepdim=True))
    return (nonblank | chosen).float()
