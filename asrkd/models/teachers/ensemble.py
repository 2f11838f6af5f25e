"""Teacher ensembles: several frozen CTC teachers seen as one.

``build_ensemble([t1, t2, ...], weights=None, combine="prob")`` returns a frozen
:class:`~asrkd.models.acoustic.AcousticModel` in the first teacher's vocabulary, blank and frame
rate (the *reference*). Every other member's posteriors are brought there the way the
distillation loss brings a teacher to the student (:mod:`asrkd.kd.align`): vocabulary mapped by
symbol name (:class:`~asrkd.kd.align.VocabMap`), frames resampled to the reference rate keeping
CTC spikes (:func:`~asrkd.kd.align.resample_frames`, ``method="ctc"``), then combined per frame:

- ``combine="prob"``: ``log Σ_i w_i p_i`` (a mixture: any member's confident spike survives);
- ``combine="logprob"``: ``log_softmax(Σ_i w_i log p_i)`` (a product of experts: frames where
  the members disagree get flatter).

Weights (default equal) are normalised to sum 1. ``asrkd cache-teacher --teacher A --teacher B``
caches the combination like any teacher; the cache key covers every member's weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from asrkd.models.acoustic import AcousticModel

COMBINE = ("prob", "logprob")


class _Ensemble(nn.Module):
    """``forward(waves, lengths) -> (log-probs (B, T_ref, V_ref), lengths_ref)``."""

    input_type = "wave"

    def __init__(self, members: Sequence[AcousticModel], weights: Sequence[float], combine: str):
        super().__init__()
        from asrkd.kd.align import VocabMap

        ref = members[0]
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.combine = combine
        self.maps = [
            VocabMap.from_vocabs(m.vocab, ref.vocab, teacher_blank_id=m.blank_id, student_blank_id=ref.blank_id)
            for m in members
        ]
        self.vocab_size = len(ref.vocab)
        self.min_samples = max(m.min_samples for m in members)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from asrkd.kd.align import resample_frames

        ref = self.members[0]
        parts, ref_lengths = [], None
        for m, vmap in zip(self.members, self.maps):
            lp, out_lengths = m.log_probs(waves, lengths)
            lp = vmap.map_logits(lp)
            if ref_lengths is None:
                ref_lengths, T = out_lengths, lp.size(1)
            elif m.frame_rate != ref.frame_rate or lp.size(1) != T:
                lp, _ = resample_frames(
                    lp,
                    out_lengths,
                    from_rate=m.frame_rate,
                    to_rate=ref.frame_rate,
                    num_frames=T,
                    method="ctc",
                    blank_id=ref.blank_id,
                )
            parts.append(lp)
        stack = torch.stack(parts)  # (M, B, T, V)
        w = self.weights.to(stack.device).view(-1, 1, 1, 1)
        if self.combine == "prob":
            out = torch.logsumexp(stack + w.log(), dim=0)
        else:
            out = torch.log_softmax((stack.clamp_min(-1e4) * w).sum(0), dim=-1)  # -inf (unreached) * 0 is no NaN
        return out, ref_lengths


def build_ensemble(
    members: Sequence[AcousticModel], weights: Sequence[float] | None = None, combine: str = "prob"
) -> AcousticModel:
    """One frozen teacher from several (see the module docstring)."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 teachers, got {len(members)}")
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    if len(weights) != len(members):
        raise ValueError(f"{len(weights)} weights for {len(members)} teachers")
    if any(not (w > 0 and w < float("inf")) for w in weights):
        raise ValueError(f"ensemble weights must be finite and > 0, got {weights}")
    weights = [w / sum(weights) for w in weights]
    ref = members[0]
    spec = f"ensemble[{combine}](" + ", ".join(f"{w:.4g}*{m.spec}" for w, m in zip(weights, members)) + ")"
    return AcousticModel(
        _Ensemble(members, weights, combine),
        vocab=ref.vocab,
        blank_id=ref.blank_id,
        frame_rate=ref.frame_rate,
        tokenizer=ref.tokenizer,
        spec=spec,
        frozen=True,
    )
