"""Pure-PyTorch reference of the fused KD ops.

Same signatures and semantics as :func:`asrkd.ops.kd_kl_div` and
:func:`asrkd.ops.kd_kl_div_topk`; used when the compiled extension is missing, for
devices it has no kernel for, and as the ground truth in tests (called on fp64 inputs).
It materialises several (B, T, V) intermediates, which is what the fused op avoids.

It follows the kernels in every edge case, since the package silently falls back to it:
only the student is differentiated (teacher, weights and top-k log-probs are constants);
a frame whose student or teacher holds NaN or +inf (or only -inf) has no distribution and
gives a NaN loss and a NaN gradient row; padded and zero-weight frames are never read; the
weights are used in float32, as the op takes them.
"""

from __future__ import annotations

import torch

from asrkd.ops._validate import check_dense, check_topk, reduce_frames, valid_mask

__all__ = ["kd_kl_div", "kd_kl_div_topk", "topk_tail", "topk_to_dense_logprobs"]


def _compute_dtype(student: torch.Tensor) -> torch.dtype:
    return torch.float64 if student.dtype == torch.float64 else torch.float32


def kd_kl_div(
    student: torch.Tensor,
    teacher: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)) per frame, reduced.

    Args:
        student: (B, T, V) float logits; the loss is differentiable w.r.t. them.
        teacher: (B, T, V) float logits (any float dtype); treated as a constant.
        lengths: (B,) int, valid frames per utterance; None means all frames are valid.
        temperature: T in [1e-3, 100] (see :func:`asrkd.ops.kd_kl_div`).
        reduction: "mean" (Σ w·loss over valid frames / Σ w over valid frames; 0 when
            that is 0), "sum", "batchmean" (sum / B) or "none" ((B, T), 0 at padding).
        weights: optional (B, T) per-frame weights multiplying each frame's loss.

    Returns:
        A scalar, or (B, T) for ``reduction="none"``; float32 (float64 for fp64 students).
    """
    check_dense(student, teacher, lengths, weights, temperature, reduction)
    weights = _constant_weights(weights, student)
    per_frame, mask = _dense_per_frame(student, teacher.detach(), lengths, weights, temperature)
    return reduce_frames(per_frame, mask, lengths, weights, reduction)


def _constant_weights(weights, student):
    # A constant, in float32 as the op reads it (fp64 weights would differ in the 8th digit).
    if weights is None:
        return None
    return weights.detach().to(torch.float32).to(_compute_dtype(student))


def _dense_per_frame(student, teacher, lengths, weights, temperature):
    B, T, _ = student.shape
    dtype = _compute_dtype(student)
    zero = torch.zeros((), dtype=dtype, device=student.device)
    mask = valid_mask(lengths, B, T, student.device)
    # Frames the kernels skip unread (padding, zero weight) may hold anything, even NaN.
    active = mask if weights is None else mask & (torch.where(mask, weights, zero) != 0)
    s = student.to(dtype) / temperature
    t = teacher.to(dtype) / temperature
    # As in the kernels: a row max that is not finite (NaN, +inf, or all -inf) means no distribution.
    undefined = active & ~(torch.isfinite(s.detach().amax(-1)) & torch.isfinite(t.amax(-1)))
    ok = (active & ~undefined)[..., None]
    s, t = torch.where(ok, s, zero), torch.where(ok, t, zero)  # nothing non-finite reaches autograd
    log_q = torch.log_softmax(s, dim=-1)
    log_p = torch.log_softmax(t, dim=-1)
    p = log_p.exp()
    # 0 · log 0 = 0: teacher tokens with probability 0 (e.g. -inf logits) contribute nothing.
    kl = torch.where(p > 0, p * (log_p - log_q), zero)
    per_frame = kl.sum(-1) * (temperature**2)
    if weights is not None:
        per_frame = per_frame * torch.where(active, weights, zero)
    # The kernels' NaN loss and NaN gradient row for an undefined frame (d(c·Σs)/ds = c = NaN);
    # c is 0 elsewhere, so no NaN reaches any other frame's gradient.
    nan_or_0 = torch.where(undefined, torch.full((), float("nan"), dtype=dtype, device=zero.device), zero)
    per_frame = torch.where(undefined, student.to(dtype).sum(-1) * nan_or_0, per_frame)
    per_frame = torch.where(active, per_frame, zero)
    return per_frame, mask


def topk_tail(topk_prob: torch.Tensor, vocab_size: int, *, log: bool = False) -> torch.Tensor:
    """The probability of each token a top-k teacher does not store: the missing mass
    ``1 - Σ p`` (clamped at 0: rounding can overshoot) spread evenly over the ``V - k`` other
    tokens, the maximum-entropy completion the top-k op assumes. 0 when k = V (no tail).

    ``log=True`` gives its logarithm, computed as the kernels do (``log(mass) - log(V - k)``,
    ``-inf`` for no mass or k = V).

    Args:
        topk_prob: (..., k) the stored probabilities (``exp`` of the top-k log-probabilities).
        vocab_size: V.

    Returns:
        (...) the share of one unstored token, in ``topk_prob``'s dtype.
    """
    n_tail = vocab_size - topk_prob.shape[-1]
    mass = (1.0 - topk_prob.sum(-1)).clamp_min(0.0)
    if not log:
        return mass / n_tail if n_tail > 0 else torch.zeros_like(mass)
    if n_tail <= 0:
        return torch.full_like(mass, float("-inf"))
    return torch.log(mass) - torch.log(torch.tensor(float(n_tail), dtype=mass.dtype))


def topk_to_dense_logprobs(topk_idx: torch.Tensor, topk_logprob: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Expand a top-k teacher to full log-probabilities (the semantics of the top-k op).

    The teacher distribution at temperature 1 is taken to be the k stored log-probabilities
    plus the missing tail mass spread evenly over the other ``V - k`` tokens
    (:func:`topk_tail`). With k = V there is no tail and the result equals the dense
    teacher. A tail mass ≤ 0 (rounding) gives the tail -inf.
    """
    lp = topk_logprob.to(torch.float64 if topk_logprob.dtype == torch.float64 else torch.float32)
    tail = topk_tail(lp.exp(), vocab_size, log=True)
    dense = tail[..., None].expand((*topk_idx.shape[:-1], vocab_size)).clone()
    dense.scatter_(-1, topk_idx.long(), lp)
    return dense


def kd_kl_div_topk(
    student: torch.Tensor,
    topk_idx: torch.Tensor,
    topk_logprob: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """KD loss against a teacher stored as its top-k log-probabilities (see
    :func:`topk_to_dense_logprobs` for how the tail mass is treated).

    Args:
        student: (B, T, V) float logits.
        topk_idx: (B, T, K) int token ids, distinct within a frame, in [0, V).
        topk_logprob: (B, T, K) float teacher log-probabilities at temperature 1.
        lengths, temperature, reduction, weights: as in :func:`kd_kl_div`.
    """
    check_topk(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction)
    weights = _constant_weights(weights, student)
    dense = topk_to_dense_logprobs(topk_idx, topk_logprob.detach(), student.shape[-1])
    per_frame, mask = _dense_per_frame(student, dense, lengths, weights, temperature)
    return reduce_frames(per_frame, mask, lengths, weights, reduction)
