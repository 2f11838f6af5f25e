"""Training losses: CTC on transcripts + frame-level KD from an aligned teacher.

:class:`DistillationLoss` composes ``λ_ctc · CTC(student, text) + λ_kd · KD(student, teacher)``
where KD is the fused :func:`asrkd.ops.kd_kl_div` (dense teacher) or
:func:`asrkd.ops.kd_kl_div_topk` (cached top-k teacher), after aligning the teacher (a
:class:`~asrkd.kd.align.TeacherOutput`) to the student with :mod:`asrkd.kd.align`
(vocabulary map, frame-rate resampling, streaming shift, blank-aware frame weights).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from asrkd.data.features import ctc_min_frames_batch
from asrkd.kd.align import (
    RESAMPLE_METHODS,
    TeacherOutput,
    VocabMap,
    blank_probability,
    blank_probability_topk,
    blank_weights,
    check_blank_options,
    check_choice,
    check_lengths,
    check_shift,
    check_topk_pair,
    frame_ratio,
    resample_frames,
    resample_topk,
    resampled_lengths,
    shift_topk,
)
from asrkd.ops import kd_kl_div, kd_kl_div_topk
from asrkd.ops._validate import TEMPERATURE_RANGE

__all__ = ["DistillationLoss", "DistillationOutput", "ctc_loss"]


@dataclass
class DistillationOutput:
    """What :class:`DistillationLoss` returns. ``loss`` carries the gradient; the rest are
    detached tensors for logging (no host synchronisation needed to read them later)."""

    loss: torch.Tensor  #: scalar, ``ctc_weight · ctc + kd_weight · kd``
    ctc: torch.Tensor  #: scalar CTC term (0 when no utterance has usable text)
    kd: torch.Tensor  #: scalar KD term (0 without a teacher)
    ctc_utterances: torch.Tensor  #: utterances the CTC term averaged over
    ctc_skipped: torch.Tensor  #: utterances with text too short in frames for CTC (left out)
    kd_frames: torch.Tensor  #: student frames with a KD weight > 0

    def to_dict(self) -> dict[str, float]:
        names = ("loss", "ctc", "kd", "ctc_utterances", "ctc_skipped", "kd_frames")
        return {k: float(getattr(self, k).detach()) for k in names}


def ctc_loss(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    blank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-utterance CTC normalised by target length, averaged over feasible utterances.

    This is ``torch.nn.functional.ctc_loss(reduction="mean")`` except that utterances too
    short for their transcript (fewer frames than :func:`asrkd.data.features.ctc_min_frames_batch`:
    labels + repeated labels, for which CTC is infinite) are left out of the average and
    counted instead of being counted as 0.

    Args:
        log_probs: (B, T, V) log-probabilities.
        lengths: (B,) valid frames.
        targets: (B, S) label ids padded with anything; (B, 0) when all are empty.
        target_lengths: (B,) labels per utterance, >= 1.

    Returns:
        ``(loss, used, skipped)``: scalar loss (0 when nothing is feasible, still attached to
        the graph) and the number of utterances used and left out.
    """
    B = targets.shape[0]
    device = log_probs.device
    # The data pipeline's rule, which rejects such utterances where it can tell before training.
    lengths, targets, target_lengths = lengths.to(device), targets.to(device), target_lengths.to(device)
    feasible = lengths >= ctc_min_frames_batch(targets, target_lengths)
    per_utt = F.ctc_loss(
        log_probs.transpose(0, 1),
        targets,
        lengths,
        target_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=True,
    )
    per_utt = per_utt / target_lengths.clamp_min(1).to(per_utt.dtype)
    used = feasible.sum()
    loss = torch.where(feasible, per_utt, 0.0).sum() / used.clamp_min(1).to(per_utt.dtype)
    return loss, used, B - used


class DistillationLoss(nn.Module):
    """CTC on transcripts plus frame-level KD from a teacher aligned to the student.

    ``loss = ctc_weight · CTC + kd_weight · KD`` where

    - CTC is :func:`ctc_loss` (blank ``blank_id``) on ``log_softmax(student_logits)`` over
      the utterances that have text (``has_text`` and a non-empty target); an utterance
      without text contributes only to KD (label-free distillation).
    - KD is ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` averaged over the student
      frames that have a teacher target, weighted by the blank-aware weights (the op's
      ``"mean"``: Σ w·kl / Σ w). Without a teacher the KD term is 0 and the loss is the CTC
      baseline — same code path.

    Alignment of the teacher (skipped where it is the identity), one helper per step:

    1. ``vocab_map`` (a :class:`~asrkd.kd.align.VocabMap`): teacher vocabulary -> student
       vocabulary. None means the teacher already uses the student's vocabulary.
    2. ``teacher_frame_rate`` -> ``student_frame_rate`` resampling in the probability domain
       (:func:`~asrkd.kd.align.resample_frames`); None for either means equal rates (frames
       matched by index).
    3. ``shift``: the teacher delayed by ``shift`` student frames; the first ``shift`` frames
       get no KD.
    4. cut / pad to the student's T_s; frames past the student's length or the teacher's
       (resampled) length get no KD. Steps 2-4 are one pass over the teacher.
    5. ``blank_mode`` weights (:func:`~asrkd.kd.align.blank_weights`) from the aligned
       teacher's blank probability (``blank_threshold``, ``blank_weight``; ``"select"`` draws
       from this module's generator, seeded with ``seed``).

    A top-k teacher keeps the top-k op when the frame rates are equal: ids go through
    :meth:`VocabMap.map_topk` and frames are matched by index (a gather of the k entries,
    :func:`~asrkd.kd.align.shift_topk`). With different frame rates it is expanded into
    dense student-vocabulary probabilities while being resampled
    (:func:`~asrkd.kd.align.resample_topk`) and the dense op is used.

    Memory: the aligned teacher is at most one (B, T_s, V_s) float32 tensor (plus, for a
    non-identity vocabulary map with resampling, the mapped (B, T_t, V_s) teacher and a
    band buffer); with nothing to align the teacher logits go to the op untouched.

    Args:
        ctc_weight, kd_weight: λ_ctc, λ_kd >= 0.
        temperature: KD temperature T, in ``asrkd.ops._validate.TEMPERATURE_RANGE`` ([0.001, 100]).
        shift: streaming delay of the teacher, in student frames.
        blank_mode: ``"none"``, ``"threshold"`` or ``"select"``.
        blank_threshold: a frame is blank when the teacher's blank probability exceeds it.
        blank_weight: weight of blank frames in ``"threshold"`` mode.
        vocab_map: teacher -> student vocabulary, or None for a shared vocabulary.
        student_frame_rate, teacher_frame_rate: frames per second (None: equal).
        resample: ``"ctc"`` (default: merged teacher frames keep their CTC spikes) or
            ``"average"`` (plain probability average); see :func:`~asrkd.kd.align.resample_frames`.
        blank_id: the student's blank id (CTC and blank-aware KD).
        seed: seed of the generator used by ``blank_mode="select"``.
        check_durations: raise when teacher and student lengths describe clearly different
            durations (a wrong frame rate): more than 10 % + 4 frames apart.
    """

    def __init__(
        self,
        ctc_weight: float = 1.0,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        shift: int = 0,
        blank_mode: str = "none",
        blank_threshold: float = 0.5,
        blank_weight: float = 0.1,
        vocab_map: VocabMap | None = None,
        student_frame_rate: float | None = None,
        teacher_frame_rate: float | None = None,
        *,
        resample: str = "ctc",
        blank_id: int = 0,
        seed: int = 0,
        check_durations: bool = True,
    ):
        super().__init__()
        for name, value in (("ctc_weight", ctc_weight), ("kd_weight", kd_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        lo_t, hi_t = TEMPERATURE_RANGE
        if not lo_t <= temperature <= hi_t:  # what the op accepts: refused here, not at the first step
            raise ValueError(f"temperature must be in [{lo_t:g}, {hi_t:g}], got {temperature}")
        check_shift(shift)
        check_blank_options(blank_mode, blank_threshold, blank_weight)
        if vocab_map is not None and not isinstance(vocab_map, VocabMap):
            raise TypeError(f"vocab_map must be a VocabMap or None, got {type(vocab_map).__name__}")
        self.ctc_weight = float(ctc_weight)
        self.kd_weight = float(kd_weight)
        self.temperature = float(temperature)
        self.shift = shift
        self.blank_mode = blank_mode
        self.blank_threshold = float(blank_threshold)
        self.blank_weight = float(blank_weight)
        self.vocab_map = vocab_map
        if (student_frame_rate is None) != (teacher_frame_rate is None):
            raise ValueError("give both student_frame_rate and teacher_frame_rate, or neither (equal rates)")
        if student_frame_rate is None:
            self.student_frame_rate = self.teacher_frame_rate = 1.0
        else:
            self.student_frame_rate, self.teacher_frame_rate = float(student_frame_rate), float(teacher_frame_rate)
        self._ratio = frame_ratio(self.teacher_frame_rate, self.student_frame_rate)
        check_choice("resample", resample, RESAMPLE_METHODS)
        self.resample = resample
        self.blank_id = int(blank_id)
        self.check_durations = check_durations
        self.generator = torch.Generator().manual_seed(seed)

    def extra_repr(self) -> str:
        vm = "shared vocabulary" if self.vocab_map is None else self.vocab_map.describe()
        return (
            f"ctc_weight={self.ctc_weight}, kd_weight={self.kd_weight}, temperature={self.temperature}, "
            f"shift={self.shift}, blank_mode={self.blank_mode!r}, resample={self.resample!r}, "
            f"rates {self.teacher_frame_rate:g} -> {self.student_frame_rate:g}, {vm}"
        )

    # -- forward --------------------------------------------------------------------------
    def forward(
        self,
        student_logits: torch.Tensor,
        student_lengths: torch.Tensor,
        targets: torch.Tensor | None = None,
        target_lengths: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
        teacher_lengths: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
        *,
        teacher: TeacherOutput | None = None,
    ) -> DistillationOutput:
        """Compute the loss for one batch.

        Args:
            student_logits: (B, T_s, V_s) student logits.
            student_lengths: (B,) the student's ``out_lengths``.
            targets: (B, S) label ids padded with anything, or None (no text in the batch).
            target_lengths: (B,) labels per utterance (0: no text).
            teacher: the teacher's outputs (dense or top-k, with their lengths), e.g. from
                :meth:`asrkd.kd.cache.TeacherCache.targets`; None: no teacher.
            teacher_logits, teacher_topk, teacher_lengths: the same, as separate arguments
                (instead of ``teacher``): (B, T_t, V_t) teacher logits (or log-probs), or
                ``(idx, logprob)`` (B, T_t, K) teacher top-k at T=1; (B,) valid teacher frames
                (None: all T_t).
            has_text: (B,) bool; None: every utterance with a non-empty target has text.
        """
        if student_logits.dim() != 3:
            raise ValueError(f"student_logits must have shape (B, T, V), got {tuple(student_logits.shape)}")
        B, T_s, _ = student_logits.shape
        student_lengths = check_lengths("student_lengths", student_lengths, B, T_s, student_logits.device)
        teacher = _teacher_argument(teacher, teacher_logits, teacher_topk, teacher_lengths)
        labelled = _labelled(targets, target_lengths, has_text, B, student_logits.device)
        if teacher is None and not bool(labelled.any()):
            raise ValueError(
                "nothing to learn from: no utterance in the batch has text and no teacher targets were given"
            )
        ctc, used, skipped = self._ctc(student_logits, student_lengths, targets, target_lengths, labelled)
        kd, kd_frames = student_logits.new_zeros((), dtype=torch.float32), torch.zeros((), dtype=torch.long)
        if teacher is not None:
            kd, kd_frames = self._kd(student_logits, student_lengths, teacher)
        loss = self.ctc_weight * ctc + self.kd_weight * kd
        if not loss.requires_grad and student_logits.requires_grad:
            # Nothing usable in this batch (all transcripts infeasible, no teacher frames):
            # a zero still attached to the graph keeps the training step uniform.
            loss = loss + 0.0 * student_logits.sum()
        return DistillationOutput(
            loss=loss,
            ctc=ctc.detach(),
            kd=kd.detach(),
            ctc_utterances=used.detach(),
            ctc_skipped=skipped.detach(),
            kd_frames=kd_frames.detach(),
        )

    def _ctc(self, student_logits, student_lengths, targets, target_lengths, labelled):
        """The CTC term over the utterances with text (the whole batch without a copy)."""
        no_count = torch.zeros((), dtype=torch.long)
        if not bool(labelled.any()):
            return student_logits.new_zeros((), dtype=torch.float32), no_count, no_count
        rows = labelled.nonzero().flatten() if not bool(labelled.all()) else None
        pick = (lambda x: x) if rows is None else (lambda x: x.index_select(0, rows.to(x.device)))
        log_probs = torch.log_softmax(pick(student_logits).float(), dim=-1)
        return ctc_loss(
            log_probs,
            pick(student_lengths),
            pick(targets),
            pick(target_lengths.to(labelled.device)),
            blank=self.blank_id,
        )

    def _kd(
        self, student_logits: torch.Tensor, student_lengths: torch.Tensor, teacher: TeacherOutput
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The KD term and the number of frames it weighs: the teacher aligned (steps 1-5 of
        the class docstring), then the fused op."""
        B, T_s, V_s = student_logits.shape
        teacher, t_len = self._checked_teacher(teacher, B, V_s, student_logits.device)
        if self.check_durations:
            _check_durations(t_len, student_lengths, self.teacher_frame_rate, self.student_frame_rate)
        # KD frames: shift <= j < min(student length, shift + resampled teacher length).
        end = torch.minimum(
            student_lengths, self.shift + resampled_lengths(t_len, self.teacher_frame_rate, self.student_frame_rate)
        ).clamp_max(T_s)
        frames = torch.arange(T_s, device=student_logits.device)[None, :]
        mask = (frames >= self.shift) & (frames < end[:, None])
        with torch.no_grad():
            teacher = self._map_vocabulary(teacher, V_s)  # 1
            teacher = self._on_student_frames(teacher, t_len, T_s, V_s)  # 2, 3, 4
            weights = self._frame_weights(teacher, mask, V_s)  # 5
        kd_lengths = end.clamp_min(0)
        if teacher.kind == "topk":
            kd = kd_kl_div_topk(
                student_logits,
                teacher.topk_idx,
                teacher.topk_logprob,
                kd_lengths,
                temperature=self.temperature,
                weights=weights,
            )
        else:
            kd = kd_kl_div(student_logits, teacher.logits, kd_lengths, temperature=self.temperature, weights=weights)
        kd_frames = mask.sum() if weights is None else ((weights > 0) & mask).sum()
        return kd, kd_frames

    # -- the steps ----------------------------------------------------------------------------
    def _checked_teacher(
        self, teacher: TeacherOutput, B: int, V_s: int, device: torch.device
    ) -> tuple[TeacherOutput, torch.Tensor]:
        """The teacher's shapes checked against the student's, its tensors detached on the
        student's device, and its (B,) frame counts."""
        if teacher.kind == "dense":
            if teacher.logits.dim() != 3 or teacher.logits.shape[0] != B:
                raise ValueError(f"teacher_logits must have shape (B={B}, T_t, V_t), got {tuple(teacher.logits.shape)}")
            T_t = teacher.logits.shape[1]
        else:
            check_topk_pair(teacher.topk_idx, teacher.topk_logprob, name="teacher_topk tensors", batch=B)
            T_t = teacher.topk_idx.shape[1]
        vm = self.vocab_map
        if vm is not None and vm.student_size != V_s:
            raise ValueError(f"vocab_map maps onto {vm.student_size} symbols but the student has V_s={V_s}")
        t_len = check_lengths("teacher_lengths", teacher.lengths, B, T_t, device, none_means_all=True)
        moved = (
            None if t is None else t.detach().to(device)
            for t in (teacher.logits, teacher.topk_idx, teacher.topk_logprob)
        )
        return TeacherOutput(*moved, lengths=t_len), t_len

    def _map_vocabulary(self, teacher: TeacherOutput, V_s: int) -> TeacherOutput:
        """Step 1: the teacher in the student's vocabulary."""
        vm = self.vocab_map
        if vm is not None and not vm.is_identity:
            if teacher.kind == "dense":
                return replace(teacher, logits=vm.map_logits(teacher.logits))
            idx, lp = vm.map_topk(teacher.topk_idx, teacher.topk_logprob)
            return replace(teacher, topk_idx=idx, topk_logprob=lp)
        if teacher.kind == "dense" and teacher.logits.shape[-1] != V_s:
            raise ValueError(
                f"teacher vocabulary V_t={teacher.logits.shape[-1]} differs from the student's V_s={V_s}: "
                "pass vocab_map=VocabMap.from_vocabs(teacher.vocab, tokenizer.tokens, ...)"
            )
        return teacher

    def _on_student_frames(self, teacher: TeacherOutput, t_len: torch.Tensor, T_s: int, V_s: int) -> TeacherOutput:
        """Steps 2-4: the teacher resampled to the student's frame rate, delayed by ``shift``
        and cut or padded to T_s, in one pass. A top-k teacher stays top-k at equal rates."""
        equal_rates = self._ratio == 1
        if teacher.kind == "dense":
            if equal_rates and self.shift == 0 and teacher.logits.shape[1] >= T_s:
                return TeacherOutput(logits=teacher.logits[:, :T_s])  # a view: the op reads logits or log-probs
            aligned, _ = resample_frames(teacher.logits, t_len, **self._resampling(T_s))
            return TeacherOutput(logits=aligned)
        if equal_rates:
            idx, lp = shift_topk(teacher.topk_idx, teacher.topk_logprob, t_len, num_frames=T_s, shift=self.shift)
            return TeacherOutput(topk_idx=idx, topk_logprob=lp)
        aligned, _ = resample_topk(teacher.topk_idx, teacher.topk_logprob, V_s, t_len, **self._resampling(T_s))
        return TeacherOutput(logits=aligned)

    def _resampling(self, T_s: int) -> dict:
        return {
            "from_rate": self.teacher_frame_rate,
            "to_rate": self.student_frame_rate,
            "num_frames": T_s,
            "shift": self.shift,
            "method": self.resample,
            "blank_id": self.blank_id,
        }

    def _frame_weights(self, teacher: TeacherOutput, mask: torch.Tensor, V_s: int) -> torch.Tensor | None:
        """Step 5: per-frame KD weights (0 outside ``mask``) from the aligned teacher's blank
        probability; None where the lengths alone describe the mask."""
        if self.blank_mode == "none":
            return mask.float() if self.shift else None
        if teacher.kind == "dense":
            p_blank = blank_probability(teacher.logits, self.blank_id)
        else:
            p_blank = blank_probability_topk(teacher.topk_idx, teacher.topk_logprob, self.blank_id, V_s)
        return blank_weights(
            p_blank.to(mask.device),
            self.blank_mode,
            threshold=self.blank_threshold,
            weight=self.blank_weight,
            mask=mask,
            generator=self.generator,
        )


def _teacher_argument(
    teacher: TeacherOutput | None,
    logits: torch.Tensor | None,
    topk: tuple[torch.Tensor, torch.Tensor] | None,
    lengths: torch.Tensor | None,
) -> TeacherOutput | None:
    """The teacher of :meth:`DistillationLoss.forward`: ``teacher=``, or one built from the
    separate ``teacher_logits`` / ``teacher_topk`` / ``teacher_lengths`` (None: no teacher)."""
    if teacher is not None:
        if logits is not None or topk is not None or lengths is not None:
            raise ValueError("give teacher= or teacher_logits / teacher_topk / teacher_lengths, not both")
        if not isinstance(teacher, TeacherOutput):
            raise TypeError(f"teacher must be a TeacherOutput, got {type(teacher).__name__}")
        return teacher
    if logits is not None and topk is not None:
        raise ValueError("give teacher_logits or teacher_topk, not both")
    if logits is not None:
        return TeacherOutput(logits=logits, lengths=lengths)
    if topk is None:
        return None
    if not isinstance(topk, (tuple, list)) or len(topk) != 2:
        raise TypeError("teacher_topk must be a pair (topk_idx, topk_logprob)")
    return TeacherOutput(topk_idx=topk[0], topk_logprob=topk[1], lengths=lengths)


def _labelled(targets, target_lengths, has_text, B, device) -> torch.Tensor:
    """(B,) bool: the utterances with text, once the text arguments are checked."""
    if targets is None:
        if target_lengths is not None or (has_text is not None and bool(has_text.any())):
            raise ValueError("target_lengths / has_text given without targets")
        return torch.zeros(B, dtype=torch.bool, device=device)
    if targets.dim() != 2 or targets.shape[0] != B:
        raise ValueError(f"targets must be padded label ids of shape (B={B}, S), got {tuple(targets.shape)}")
    if target_lengths is None or target_lengths.shape != (B,):
        raise ValueError(f"target_lengths of shape ({B},) is required with targets")
    if B and (int(target_lengths.min()) < 0 or int(target_lengths.max()) > targets.shape[1]):
        raise ValueError(f"target_lengths must lie in [0, {targets.shape[1]}]")
    labelled = target_lengths.to(device) > 0
    if has_text is not None:
        if has_text.shape != (B,):
            raise ValueError(f"has_text must have shape ({B},), got {tuple(has_text.shape)}")
        labelled = labelled & has_text.to(device=device, dtype=torch.bool)
    return labelled


def _check_durations(
    teacher_lengths: torch.Tensor, student_lengths: torch.Tensor, teacher_rate: float, student_rate: float
) -> None:
    """ValueError when teacher and student lengths describe clearly different durations (more
    than 10 % + 4 frames of the coarser rate apart): a missing or wrong frame rate."""
    d_t = teacher_lengths.double() / teacher_rate
    d_s = student_lengths.double().to(d_t.device) / student_rate
    tol = 0.1 * torch.maximum(d_t, d_s) + 4.0 / min(teacher_rate, student_rate)
    bad = (d_t - d_s).abs() > tol
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        unit = "s" if teacher_rate != 1.0 or student_rate != 1.0 else "frames"
        raise ValueError(
            f"teacher and student lengths disagree (utterance {i}: teacher {int(teacher_lengths[i])} frames "
            f"= {float(d_t[i]):.3g} {unit}, student {int(student_lengths[i])} frames = {float(d_s[i]):.3g} "
            f"{unit}); are teacher_frame_rate={teacher_rate:g} and "
            f"student_frame_rate={student_rate:g} right?"
        )
