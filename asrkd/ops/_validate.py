"""Argument checks and reductions shared by the fused op and the reference.

Errors name the argument and the reason. Value checks that would need a host
synchronisation on an accelerator (lengths range, weights, top-k ids and log-probs) run on the
CPU eagerly and as ``torch._assert_async`` on other devices; they are skipped while
torch.compile traces. The kernels repeat every value check (temperature, lengths, weights,
top-k ids in range and distinct, top-k log-probs) for direct op calls and torch.compile, so the
one check that costs a sort, distinct top-k ids, runs here only for the reference (no kernel).
The bounds below are repeated in csrc/kd_kl.h.
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "batchmean", "none")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# T² · KL in fp32: the log-sum-exp terms are O(1) and cancel down to KL ~ 1/T², so each frame's loss
# carries an absolute error of c·T²·eps whatever its size (measured, V <= 5000: c <= 4 for the kernels,
# 10 for the fp32 reference, 50 for its top-k). At T = 100 that is <= 5e-3 for the kernels: ~0.05 %
# (up to 0.4 %) of a frame's loss for unit-scale logits, 5e-5 (4e-4) at scale 3, <= 1e-4 on the mean. The
# gradient, what trains, stays within 2e-5 of its largest entry (fp32 reference: 2.5e-4), so 100 stays
# the bound; beyond it the loss error keeps growing as T² (NaN at 1e30). 1/T <= 1000 keeps logits / T
# finite for any logit below 3e35.
TEMPERATURE_RANGE = (1e-3, 100.0)
# Stored log-probs are rounded (fp16 in caches): a value near 0 may come out a hair above it, and
# the K probabilities may sum a little above 1 (fp16: up to ~0.4 %); more than that is not rounding.
TOPK_LOGPROB_TOL = 1e-3
TOPK_MASS_TOL = 1e-2


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def _check_float(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float tensor (float32/float64/float16/bfloat16), got {x.dtype}")


def _check_common(student, lengths, weights, temperature, reduction) -> None:
    _check_float("student", student)
    if student.dim() != 3:
        raise ValueError(f"student must have shape (B, T, V), got {tuple(student.shape)}")
    B, T, V = student.shape
    if V < 1:
        raise ValueError(f"student must have a vocabulary dimension V >= 1, got shape {tuple(student.shape)}")
    if isinstance(temperature, torch.Tensor) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a Python number, got {type(temperature).__name__}")
    lo, hi = TEMPERATURE_RANGE
    if not lo <= temperature <= hi:  # NaN fails too
        raise ValueError(f"temperature must be a finite number in [{lo:g}, {hi:g}], got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor or None, got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor, got {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
        if lengths.device != student.device and lengths.device.type != "cpu":
            raise ValueError(
                f"lengths is on {lengths.device} but student is on {student.device}; "
                "lengths may be on the CPU or on the student's device"
            )
        if not _is_compiling():
            if lengths.device.type == "cpu":
                if B:
                    lo, hi = (int(v) for v in torch.aminmax(lengths))
                    if lo < 0 or hi > T:
                        raise ValueError(f"lengths must lie in [0, T={T}], got values in [{lo}, {hi}]")
            elif B:
                torch._assert_async(((lengths >= 0) & (lengths <= T)).all(), f"lengths must lie in [0, T={T}]")
    if weights is not None:
        _check_float("weights", weights)
        if weights.shape != (B, T):
            raise ValueError(f"weights must have shape (B, T) = ({B}, {T}), got {tuple(weights.shape)}")
        if weights.device != student.device:
            raise ValueError(f"weights is on {weights.device} but student is on {student.device}")
        if not _is_compiling() and weights.numel():
            _check_weight_values(weights, lengths)


def _check_weight_values(weights, lengths) -> None:
    """Finite and >= 0 on valid frames, as float32 (what the op reads): a negative weight makes the
    mean's denominator meaningless ([1, -1] sums to 0). Padded frames' weights are never read."""
    w = weights.detach().to(torch.float32)
    bad = ~(torch.isfinite(w) & (w >= 0))
    if lengths is not None:
        bad &= valid_mask(lengths, *w.shape, w.device)
    if w.device.type != "cpu":
        torch._assert_async(~bad.any(), "weights must be finite and >= 0 on valid frames")
        return
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"weights must be finite and >= 0 on valid frames, got {float(w[b, t]):g} at frame ({b}, {t})")


def check_dense(student, teacher, lengths, weights, temperature, reduction) -> None:
    _check_common(student, lengths, weights, temperature, reduction)
    _check_float("teacher", teacher)
    if teacher.dim() != 3 or teacher.shape[:2] != student.shape[:2]:
        raise ValueError(
            f"teacher must have shape (B, T, V) matching student {tuple(student.shape)}, got {tuple(teacher.shape)}"
        )
    if teacher.shape[2] != student.shape[2]:
        raise ValueError(
            f"teacher vocabulary size V={teacher.shape[2]} differs from student V={student.shape[2]}; "
            "map the teacher vocabulary onto the student's first (asrkd.kd.align.VocabMap)"
        )
    if teacher.device != student.device:
        raise ValueError(f"teacher is on {teacher.device} but student is on {student.device}")


def check_topk(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, *, distinct=True) -> None:
    """``distinct=False`` leaves the distinct-ids check (a sort) to the kernel, which does it in O(K)."""
    _check_common(student, lengths, weights, temperature, reduction)
    B, T, V = student.shape
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dtype not in (torch.int64, torch.int32, torch.int16):
        got = topk_idx.dtype if isinstance(topk_idx, torch.Tensor) else type(topk_idx).__name__
        raise TypeError(f"topk_idx must be an int64/int32/int16 tensor, got {got}")
    _check_float("topk_logprob", topk_logprob)
    if topk_idx.dim() != 3 or topk_idx.shape[:2] != (B, T):
        raise ValueError(f"topk_idx must have shape (B, T, K) with (B, T) = ({B}, {T}), got {tuple(topk_idx.shape)}")
    if topk_logprob.shape != topk_idx.shape:
        raise ValueError(
            f"topk_logprob must have the shape of topk_idx {tuple(topk_idx.shape)}, got {tuple(topk_logprob.shape)}"
        )
    K = topk_idx.shape[2]
    if not 1 <= K <= V:
        raise ValueError(f"topk_idx must hold 1 <= K <= V={V} entries per frame, got K={K}")
    for name, x in (("topk_idx", topk_idx), ("topk_logprob", topk_logprob)):
        if x.device != student.device:
            raise ValueError(f"{name} is on {x.device} but student is on {student.device}")
    if _is_compiling() or topk_idx.numel() == 0:
        return
    in_range = ((topk_idx >= 0) & (topk_idx < V)).all()
    if topk_idx.device.type == "cpu":
        if not bool(in_range):
            raise ValueError(
                f"topk_idx must lie in [0, V={V}), got values in [{int(topk_idx.min())}, {int(topk_idx.max())}]"
            )
    else:
        torch._assert_async(in_range, f"topk_idx must lie in [0, V={V})")
    if distinct:
        _check_distinct_ids(topk_idx, lengths, weights)
    _check_topk_logprob(topk_logprob)


def _check_distinct_ids(topk_idx, lengths, weights) -> None:
    """Distinct ids within each frame that is read (valid, non-zero weight), as the kernels check."""
    B, T, _ = topk_idx.shape
    srt = topk_idx.sort(dim=-1).values
    dup = (srt[..., 1:] == srt[..., :-1]).any(-1)
    mask = valid_mask(lengths, B, T, dup.device)
    if weights is not None:
        w = weights.detach().to(torch.float32)
        mask &= torch.where(mask, w, torch.zeros((), device=w.device)) != 0
    dup &= mask
    msg = "topk_idx must hold distinct token ids within each frame"
    if topk_idx.device.type != "cpu":
        torch._assert_async(~dup.any(), msg)
        return
    if bool(dup.any()):
        b, t = (int(i) for i in dup.nonzero()[0])
        ids = srt[b, t]
        repeated = int(ids[1:][ids[1:] == ids[:-1]][0])
        raise ValueError(f"{msg}, got {repeated} twice at frame ({b}, {t})")


def _check_topk_logprob(topk_logprob) -> None:
    """Log-probs <= 0 and a mass <= 1 per frame, up to rounding. NaN passes: like a NaN dense
    teacher it makes its frame's loss NaN (the kernels never read padded frames)."""
    lp = topk_logprob.detach()
    lp = lp.to(torch.float64 if lp.dtype == torch.float64 else torch.float32)
    above = lp > TOPK_LOGPROB_TOL
    mass = lp.exp().sum(-1)
    over = mass > 1.0 + TOPK_MASS_TOL
    if lp.device.type != "cpu":
        torch._assert_async(~above.any(), f"topk_logprob must be log-probabilities <= 0 (+{TOPK_LOGPROB_TOL:g})")
        torch._assert_async(~over.any(), f"topk_logprob's probabilities must sum to at most 1 (+{TOPK_MASS_TOL:g})")
        return
    if bool(above.any()):
        b, t, k = (int(i) for i in above.nonzero()[0])
        raise ValueError(
            f"topk_logprob must be log-probabilities <= 0 (up to {TOPK_LOGPROB_TOL:g} for rounding), got "
            f"{float(lp[b, t, k]):g} at frame ({b}, {t})"
        )
    if bool(over.any()):
        b, t = (int(i) for i in over.nonzero()[0])
        raise ValueError(
            f"topk_logprob's probabilities must sum to at most 1 (up to {TOPK_MASS_TOL:g} over for rounding) "
            f"per frame, got {float(mass[b, t]):.4g} at frame ({b}, {t})"
        )


def valid_mask(lengths, B: int, T: int, device) -> torch.Tensor:
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    # non_blocking: CPU lengths for a CUDA student must not synchronise the host
    return torch.arange(T, device=device)[None, :] < lengths.to(device, non_blocking=True)[:, None]


def reduce_frames(per_frame, mask, lengths, weights, reduction):
    """Reduce (B, T) per-frame losses (already 0 at padding and weighted)."""
    if reduction == "none":
        return per_frame
    total = per_frame.sum()
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / max(per_frame.shape[0], 1)
    # mean: weighted average over valid frames; an all-masked batch gives 0, never NaN.
    if weights is None:
        denom = mask.sum().to(per_frame.dtype)
    else:
        denom = torch.where(mask, weights.to(per_frame.dtype), 0.0).sum()
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    return total / safe
