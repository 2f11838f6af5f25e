"""Training losses: CTC on transcripts + frame-level KD from an aligned teacher.

:class:`DistillationLoss` composes ``λ_ctc · CTC(student, text) + λ_kd · KD(student, teacher)``
where KD is the fused :func:`asrkd.ops.kd_kl_div` (dense teacher) or
:func:`asrkd.ops.kd_kl_div_topk` (cached top-k teacher), after aligning the teacher to the
student (:mod:`asrkd.kd.align`: vocabulary map, frame-rate resampling, streaming shift,
blank-aware frame weights). The alignment helpers are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from asrkd.kd.align import (
    BLANK_MODES,
    RESAMPLE_METHODS,
    VocabMap,
    align_to_student,
    blank_probability,
    blank_probability_topk,
    blank_weights,
    frame_ratio,
    resample_frames,
    resample_topk,
    resampled_lengths,
    shift_frames,
)
from asrkd.ops import kd_kl_div, kd_kl_div_topk
from asrkd.ops._validate import TEMPERATURE_RANGE

__all__ = [
    "DistillationLoss",
    "DistillationOutput",
    "ctc_loss",
    "VocabMap",
    "BLANK_MODES",
    "RESAMPLE_METHODS",
    "align_to_student",
    "blank_probability",
    "blank_probability_topk",
    "blank_weights",
    "frame_ratio",
    "resample_frames",
    "resample_topk",
    "resampled_lengths",
    "shift_frames",
]


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
        return {k: float(getattr(self, k).detach()) for k in ("loss", "ctc", "kd", "ctc_utterances", "ctc_skipped", "kd_frames")}


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
    short for their transcript (fewer frames than labels + repeated labels, for which CTC
    is infinite) are left out of the average and counted instead of being counted as 0.

    Args:
        log_probs: (B, T, V) log-probabilities.
        lengths: (B,) valid frames.
        targets: (B, S) label ids padded with anything; (B, 0) when all are empty.
        target_lengths: (B,) labels per utterance, >= 1.

    Returns:
        ``(loss, used, skipped)``: scalar loss (0 when nothing is feasible, still attached to
        the graph) and the number of utterances used and left out.
    """
    B, S = targets.shape
    lengths = lengths.to(log_probs.device)
    target_lengths = target_lengths.to(log_probs.device)
    targets = targets.to(log_probs.device)
    pos = torch.arange(1, max(S, 1), device=log_probs.device)
    repeats = ((targets[:, 1:] == targets[:, :-1]) & (pos[None, : max(S - 1, 0)] < target_lengths[:, None])).sum(1)
    feasible = lengths >= target_lengths + repeats
    per_utt = F.ctc_loss(
        log_probs.transpose(0, 1), targets, lengths, target_lengths,
        blank=blank, reduction="none", zero_infinity=True,
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
      ``"mean"``: Σ w·kl / Σ w). Without a teacher (``teacher_logits`` and ``teacher_topk``
      both None) the KD term is 0 and the loss is the CTC baseline — same code path.

    Alignment of the teacher (skipped where it is the identity):

    1. ``vocab_map`` (a :class:`VocabMap`): teacher vocabulary -> student vocabulary. None
       means the teacher already uses the student's vocabulary.
    2. ``teacher_frame_rate`` -> ``student_frame_rate`` resampling in the probability domain
       (:func:`resample_frames`); None for either means equal rates (frames matched by index).
    3. ``shift``: the teacher delayed by ``shift`` student frames (:func:`shift_frames`); the
       first ``shift`` frames get no KD.
    4. cut / pad to the student's T_s; frames past the student's length or the teacher's
       (resampled) length get no KD.
    5. ``blank_mode`` weights (:func:`blank_weights`) from the aligned teacher's blank
       probability (``blank_threshold``, ``blank_weight``; ``"select"`` draws from this
       module's generator, seeded with ``seed``).

    A top-k teacher (``teacher_topk=(idx, logprob)``, log-probs at T=1) keeps the top-k op
    when the frame rates are equal: ids go through :meth:`VocabMap.map_topk` and frames are
    matched by index (a gather of the k entries; shift included). With different frame
    rates it is expanded into dense student-vocabulary probabilities while being resampled
    (:func:`resample_topk`) and the dense op is used.

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
            ``"average"`` (plain probability average); see :func:`resample_frames`.
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
        if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
            raise ValueError(f"shift must be an int >= 0 (student frames), got {shift!r}")
        if blank_mode not in BLANK_MODES:
            raise ValueError(f"blank_mode must be one of {BLANK_MODES}, got {blank_mode!r}")
        if not 0.0 <= blank_threshold <= 1.0:
            raise ValueError(f"blank_threshold must lie in [0, 1], got {blank_threshold}")
        if not 0.0 <= blank_weight <= 1.0:
            raise ValueError(f"blank_weight must lie in [0, 1], got {blank_weight}")
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
        if resample not in RESAMPLE_METHODS:
            raise ValueError(f"resample must be one of {RESAMPLE_METHODS}, got {resample!r}")
        self.resample = resample
        self.blank_id = int(blank_id)
        self.check_durations = check_durations
        self.generator = torch.Generator().manual_seed(seed)

    def extra_repr(self) -> str:
        vm = "shared vocabulary" if self.vocab_map is None else self.vocab_map.describe()
        return (
            f"ctc_weight={self.ctc_weight}, kd_weight={self.kd_weight}, temperature={self.temperature}, "
            f"shift={self.shift}, blank_mode={self.blank_mode!r}, resample={self.resample!r}, rates {self.teacher_frame_rate:g} -> "
            f"{self.student_frame_rate:g}, {vm}"
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
    ) -> DistillationOutput:
        """Compute the loss for one batch.

        Args:
            student_logits: (B, T_s, V_s) student logits.
            student_lengths: (B,) the student's ``out_lengths``.
            targets: (B, S) label ids padded with anything, or None (no text in the batch).
            target_lengths: (B,) labels per utterance (0: no text).
            teacher_logits: (B, T_t, V_t) teacher logits (or log-probs).
            teacher_topk: ``(idx, logprob)`` (B, T_t, K) teacher top-k at T=1 (from the cache).
            teacher_lengths: (B,) valid teacher frames (None: all T_t).
            has_text: (B,) bool; None: every utterance with a non-empty target has text.
        """
        if student_logits.dim() != 3:
            raise ValueError(f"student_logits must have shape (B, T, V), got {tuple(student_logits.shape)}")
        B, T_s, V_s = student_logits.shape
        device = student_logits.device
        student_lengths = self._lengths("student_lengths", student_lengths, B, T_s, device)
        if teacher_logits is not None and teacher_topk is not None:
            raise ValueError("give teacher_logits or teacher_topk, not both")
        labelled = self._labelled(targets, target_lengths, has_text, B, device)
        has_teacher = teacher_logits is not None or teacher_topk is not None
        if not has_teacher and not bool(labelled.any()):
            raise ValueError(
                "nothing to learn from: no utterance in the batch has text and no teacher targets were given"
            )

        zero = student_logits.new_zeros((), dtype=torch.float32)
        ctc, used, skipped = zero, torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
        if bool(labelled.any()):
            rows = labelled.nonzero().flatten() if not bool(labelled.all()) else None
            pick = (lambda x: x) if rows is None else (lambda x: x.index_select(0, rows.to(x.device)))
            log_probs = torch.log_softmax(pick(student_logits).float(), dim=-1)
            ctc, used, skipped = ctc_loss(
                log_probs, pick(student_lengths), pick(targets), pick(target_lengths.to(device)), blank=self.blank_id
            )

        kd, kd_frames = zero, torch.zeros((), dtype=torch.long)
        if has_teacher:
            kd, kd_frames = self._kd(student_logits, student_lengths, teacher_logits, teacher_topk, teacher_lengths)

        loss = self.ctc_weight * ctc + self.kd_weight * kd
        if not loss.requires_grad and student_logits.requires_grad:
            # Nothing usable in this batch (all transcripts infeasible, no teacher frames):
            # a zero still attached to the graph keeps the training step uniform.
            loss = loss + 0.0 * student_logits.sum()
        return DistillationOutput(
            loss=loss, ctc=ctc.detach(), kd=kd.detach(), ctc_utterances=used.detach(),
            ctc_skipped=skipped.detach(), kd_frames=kd_frames.detach(),
        )

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _lengths(name, lengths, B, T, device) -> torch.Tensor:
        if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or lengths.shape != (B,):
            raise ValueError(f"{name} must be an integer tensor of shape ({B},), got {lengths!r:.80}")
        lengths = lengths.to(device=device, dtype=torch.long)
        if B and (int(lengths.min()) < 0 or int(lengths.max()) > T):
            raise ValueError(f"{name} must lie in [0, {T}], got [{int(lengths.min())}, {int(lengths.max())}]")
        return lengths

    @staticmethod
    def _labelled(targets, target_lengths, has_text, B, device) -> torch.Tensor:
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

    def _check_durations(self, teacher_lengths: torch.Tensor, student_lengths: torch.Tensor) -> None:
        d_t = teacher_lengths.double() / self.teacher_frame_rate
        d_s = student_lengths.double().to(d_t.device) / self.student_frame_rate
        tol = 0.1 * torch.maximum(d_t, d_s) + 4.0 / min(self.teacher_frame_rate, self.student_frame_rate)
        bad = (d_t - d_s).abs() > tol
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            unit = "s" if self.teacher_frame_rate != 1.0 or self.student_frame_rate != 1.0 else "frames"
            raise ValueError(
                f"teacher and student lengths disagree (utterance {i}: teacher {int(teacher_lengths[i])} frames "
                f"= {float(d_t[i]):.3g} {unit}, student {int(student_lengths[i])} frames = {float(d_s[i]):.3g} "
                f"{unit}); are teacher_frame_rate={self.teacher_frame_rate:g} and "
                f"student_frame_rate={self.student_frame_rate:g} right?"
            )

    def _kd(self, student_logits, student_lengths, teacher_logits, teacher_topk, teacher_lengths):
        B, T_s, V_s = student_logits.shape
        device = student_logits.device
        if teacher_logits is not None:
            if teacher_logits.dim() != 3 or teacher_logits.shape[0] != B:
                raise ValueError(f"teacher_logits must have shape (B={B}, T_t, V_t), got {tuple(teacher_logits.shape)}")
            T_t = teacher_logits.shape[1]
            teacher_logits = teacher_logits.to(device)
        else:
            if not isinstance(teacher_topk, (tuple, list)) or len(teacher_topk) != 2:
                raise TypeError("teacher_topk must be a pair (topk_idx, topk_logprob)")
            t_idx, t_lp = teacher_topk
            if t_idx.dim() != 3 or t_idx.shape[0] != B or t_lp.shape != t_idx.shape:
                raise ValueError(
                    f"teacher_topk tensors must both have shape (B={B}, T_t, K), got {tuple(t_idx.shape)} and "
                    f"{tuple(t_lp.shape)}"
                )
            T_t = t_idx.shape[1]
            teacher_topk = (t_idx.to(device), t_lp.to(device))
        vm = self.vocab_map
        if vm is not None and vm.student_size != V_s:
            raise ValueError(f"vocab_map maps onto {vm.student_size} symbols but the student has V_s={V_s}")
        t_len = self._lengths("teacher_lengths", teacher_lengths, B, T_t, device) if teacher_lengths is not None \
            else torch.full((B,), T_t, dtype=torch.long, device=device)
        if self.check_durations:
            self._check_durations(t_len, student_lengths)

        # KD frames: shift <= j < min(student length, shift + resampled teacher length).
        end = torch.minimum(student_lengths, self.shift + resampled_lengths(
            t_len, self.teacher_frame_rate, self.student_frame_rate)).clamp_max(T_s)
        frames = torch.arange(T_s, device=device)[None, :]
        mask = (frames >= self.shift) & (frames < end[:, None])
        equal_rates = self._ratio == 1

        with torch.no_grad():
            if teacher_logits is not None:
                teacher = teacher_logits.detach()
                if vm is not None and not vm.is_identity:
                    teacher = vm.map_logits(teacher)
                elif teacher.shape[-1] != V_s:
                    raise ValueError(
                        f"teacher vocabulary V_t={teacher.shape[-1]} differs from the student's V_s={V_s}: "
                        "pass vocab_map=VocabMap.from_vocabs(teacher.vocab, tokenizer.tokens, ...)"
                    )
                if equal_rates and self.shift == 0 and T_t >= T_s:
                    teacher = teacher[:, :T_s]  # a view: the op reads logits or log-probs alike
                else:
                    teacher, _ = resample_frames(
                        teacher, t_len, from_rate=self.teacher_frame_rate, to_rate=self.student_frame_rate,
                        num_frames=T_s, shift=self.shift, method=self.resample, blank_id=self.blank_id,
                    )
                p_blank = blank_probability(teacher, self.blank_id) if self.blank_mode != "none" else None
                topk = None
            else:
                t_idx, t_lp = teacher_topk[0].detach(), teacher_topk[1].detach()
                if vm is not None and not vm.is_identity:
                    t_idx, t_lp = vm.map_topk(t_idx, t_lp)
                if equal_rates:
                    if self.shift or T_t < T_s:
                        src = (torch.arange(T_s, device=t_idx.device) - self.shift)[None, :]
                        src = torch.minimum(src.clamp_min(0), (t_len.to(t_idx.device) - 1).clamp_min(0)[:, None])
                        src = src.clamp_max(max(T_t - 1, 0))[..., None].expand(B, T_s, t_idx.shape[-1])
                        t_idx, t_lp = t_idx.gather(1, src), t_lp.gather(1, src)
                    else:
                        t_idx, t_lp = t_idx[:, :T_s], t_lp[:, :T_s]
                    topk = (t_idx, t_lp)
                    p_blank = (blank_probability_topk(t_idx, t_lp, self.blank_id, V_s)
                               if self.blank_mode != "none" else None)
                else:
                    teacher, _ = resample_topk(
                        t_idx, t_lp, V_s, t_len, from_rate=self.teacher_frame_rate,
                        to_rate=self.student_frame_rate, num_frames=T_s, shift=self.shift,
                        method=self.resample, blank_id=self.blank_id,
                    )
                    p_blank = blank_probability(teacher, self.blank_id) if self.blank_mode != "none" else None
                    topk = None
            if self.blank_mode != "none":
                weights = blank_weights(
                    p_blank.to(device), self.blank_mode, threshold=self.blank_threshold, weight=self.blank_weight,
                    mask=mask, generator=self.generator,
                )
            elif self.shift:
                weights = mask.float()
            else:
                weights = None  # the lengths alone describe the mask

        kd_lengths = end.clamp_min(0)
        if topk is not None:
            kd = kd_kl_div_topk(student_logits, topk[0], topk[1], kd_lengths, temperature=self.temperature,
                                weights=weights)
        else:
            kd = kd_kl_div(student_logits, teacher, kd_lengths, temperature=self.temperature, weights=weights)
        kd_frames = mask.sum() if weights is None else ((weights > 0) & mask).sum()
        return kd, kd_frames
