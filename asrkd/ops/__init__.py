"""Fused temperature-softmax KL divergence for frame-level knowledge distillation.

``kd_kl_div`` computes T² · KL(softmax(teacher/T) ‖ softmax(student/T)) per frame and
its gradient w.r.t. the student in one pass over the logits (C++/CUDA kernels in
``csrc/``, registered as ``torch.ops.asrkd.*``). The backward only scales the gradient
the forward produced. Without the compiled extension (or on a device it has no kernel
for) the same functions run :mod:`asrkd.ops.reference` and warn once.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from asrkd.ops import reference
from asrkd.ops._validate import check_dense, check_topk

__all__ = ["kd_kl_div", "kd_kl_div_topk", "extension_available", "extension_info", "reference"]

_CAP_ORDER = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
_CUDA_TOPK_MAX_V = 8192  # csrc/cuda/kd_kl.cu: with_row_config
_C = None
_LOAD_ERROR: str | None = None
_WARNED: set[str] = set()


def _load_extension() -> None:
    global _C, _LOAD_ERROR
    info_path = Path(__file__).resolve().parent.parent / "_build_info.json"
    try:
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        built_cap = info.get("cpu_capability", "DEFAULT")
        have_cap = torch.backends.cpu.get_cpu_capability().upper()
        # Loading code compiled for SIMD instructions this CPU lacks would crash the process.
        if _CAP_ORDER.get(built_cap, 0) > _CAP_ORDER.get(have_cap, 0):
            _LOAD_ERROR = (
                f"extension was compiled for {built_cap} but this CPU supports {have_cap}; "
                "rebuild it here (scripts/setup.sh)"
            )
            return
        built_torch = info.get("torch")
        if built_torch and built_torch != torch.__version__:
            _LOAD_ERROR = (
                f"extension was built against torch {built_torch} but torch {torch.__version__} is "
                "installed; rebuild it (scripts/setup.sh)"
            )
            return
        from asrkd import _C as ext  # noqa: PLC0415  (torch must be imported first)

        _C = ext
    except (ImportError, OSError) as err:  # missing or unloadable shared library
        _LOAD_ERROR = f"{type(err).__name__}: {err}"


_load_extension()


def extension_available() -> bool:
    """True when the compiled ``asrkd._C`` extension (CPU kernel at least) is loaded."""
    return _C is not None


def extension_info() -> dict:
    """What the loaded extension was built with, or why it is not loaded."""
    if _C is None:
        return {"available": False, "error": _LOAD_ERROR}
    return {"available": True, "cuda": bool(_C.has_cuda()), "cpu_capability": _C.cpu_capability()}


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _use_extension(device: torch.device) -> bool:
    if _C is None:
        _warn_once("missing", f"asrkd: compiled KD op not available ({_LOAD_ERROR}); using the PyTorch reference")
        return False
    if device.type == "cpu" or (device.type == "cuda" and _C.has_cuda()):
        return True
    _warn_once(device.type, f"asrkd: no compiled KD kernel for {device.type} tensors; using the PyTorch reference")
    return False


def _prepare(student, lengths, weights):
    """Move lengths/weights next to the student in the layout the kernels read."""
    if lengths is not None:
        lengths = lengths.to(device=student.device, dtype=torch.int64, non_blocking=True)
    if weights is not None:
        weights = weights.to(torch.float32).contiguous()
    if student.stride(-1) != 1:
        # The kernels need each frame's V logits contiguous; B and T strides are free.
        student = student.contiguous()
    return student, lengths, weights


def _needs_grad(student: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and student.requires_grad


def kd_kl_div(
    student: torch.Tensor,
    teacher: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frame-level distillation loss T² · KL(softmax(teacher/T) ‖ softmax(student/T)).

    Args:
        student: (B, T, V) logits, float32/float64/bfloat16/float16. Any strides on B and
            T (a time-major (T, B, V) tensor viewed with ``.transpose(0, 1)`` is not copied);
            V must be contiguous or the tensor is copied once.
        teacher: (B, T, V) logits of any float dtype; a constant (gets no gradient). ``-inf`` is
            probability 0; a valid frame with NaN or +inf in the student or the teacher (or only
            ``-inf``) has no distribution: its loss and gradient row are NaN, and so is the reduced loss.
        lengths: (B,) integer count of valid frames per utterance (CPU or the student's
            device); None means every frame is valid. Padded frames contribute nothing.
        temperature: T in [1e-3, 100]. The T² factor keeps gradient magnitudes comparable across
            T. The fp32 loss of a frame is off by up to ~4·T²·eps absolute (5e-3 at T = 100: ~0.05 %
            of a unit-scale frame's loss), the gradient by 2e-5 of its largest entry; beyond 100 the
            loss error keeps growing as T², so larger T is refused.
        reduction: ``"mean"`` (Σ w·loss / Σ w over valid frames, 0 for an all-masked batch),
            ``"sum"``, ``"batchmean"`` (sum / B) or ``"none"`` (per-frame (B, T), 0 at padding).
        weights: optional (B, T) per-frame weights (e.g. blank-aware KD); a constant, read as
            float32; finite and >= 0 on valid frames (ValueError naming the frame; a device assert
            on CUDA). Zero-weight frames, like padded ones, are never read.

    Returns:
        Scalar (or (B, T) for ``"none"``) in float32, float64 for float64 students.
    """
    check_dense(student, teacher, lengths, weights, temperature, reduction)
    if not _use_extension(student.device):
        return reference.kd_kl_div(
            student, teacher, lengths, temperature=temperature, reduction=reduction, weights=weights
        )
    student, lengths, weights = _prepare(student, lengths, weights)
    if teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    loss, _ = torch.ops.asrkd.kd_kl_div_fwd(
        student, teacher, lengths, weights, float(temperature), reduction, _needs_grad(student)
    )
    return loss


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
    """Distillation loss against a teacher stored as top-k log-probabilities.

    The teacher distribution (at temperature 1) is the K stored log-probabilities plus
    the missing mass ``1 - Σ exp(topk_logprob)`` spread evenly over the other V - K
    tokens; it is then tempered like a dense teacher. With K = V this equals
    :func:`kd_kl_div` on the teacher's log-probabilities. See
    :func:`asrkd.ops.reference.topk_to_dense_logprobs`.

    The kernels sum the student's log-probabilities over the tail as "all tokens minus the
    top-k ones", so the student logits must be finite: a ``-inf`` student logit at a top-k
    token gives a NaN loss here, where the reference gives ``+inf`` (or a finite loss when the
    teacher gives that token no mass). The gradient is unaffected.

    Args:
        student: (B, T, V) logits.
        topk_idx: (B, T, K) int64/int32/int16 token ids in [0, V), distinct within each frame
            that is read (the kernel checks that in O(K): ValueError naming the frame; a device
            assert on CUDA).
        topk_logprob: (B, T, K) teacher log-probabilities (any float dtype, fp16 in caches); a
            constant. Each must be <= 0 and their probabilities sum to <= 1 per frame, up to 1e-3
            and 1e-2 for rounding (ValueError naming the frame; an asynchronous device assert on
            CUDA, and a check in the kernels for direct op calls). NaN gives a NaN frame.
        lengths, temperature, reduction, weights: as in :func:`kd_kl_div`.
    """
    # Distinct ids are checked in the kernel (O(K) a frame), or by the reference when it runs.
    check_topk(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, distinct=False)
    too_wide_for_cuda = student.device.type == "cuda" and student.shape[-1] > _CUDA_TOPK_MAX_V
    if too_wide_for_cuda:
        _warn_once(
            "topk-large-v",
            f"asrkd: kd_kl_div_topk on CUDA holds a frame in registers (V <= "
            f"{_CUDA_TOPK_MAX_V}); V={student.shape[-1]} runs the PyTorch reference",
        )
    if too_wide_for_cuda or not _use_extension(student.device):
        return reference.kd_kl_div_topk(
            student, topk_idx, topk_logprob, lengths, temperature=temperature, reduction=reduction, weights=weights
        )
    student, lengths, weights = _prepare(student, lengths, weights)
    loss, _ = torch.ops.asrkd.kd_kl_div_topk_fwd(
        student,
        topk_idx.contiguous(),
        topk_logprob.contiguous(),
        lengths,
        weights,
        float(temperature),
        reduction,
        _needs_grad(student),
    )
    return loss


# ---------------------------------------------------------------------------------------
# Fake-tensor registration (torch.compile, opcheck). Autograd is registered in C++
# (csrc/autograd/kd_kl.cpp): the backward multiplies the forward's gradient buffer by the
# incoming gradient, in place when eager (free when that gradient is exactly 1), out of
# place while tracing, and recomputes for a second backward through the same graph.


def _fake_outputs(student, reduction, compute_grad):
    B, T, V = student.shape
    acc = torch.float64 if student.dtype == torch.float64 else torch.float32
    loss = student.new_empty((B, T) if reduction == "none" else (), dtype=acc)
    grad = student.new_empty((B, T, V) if compute_grad else (0,), dtype=student.dtype)
    return loss, grad


if _C is not None:

    @torch.library.register_fake("asrkd::kd_kl_div_fwd")
    def _(student, teacher, lengths, weights, temperature, reduction, compute_grad):
        return _fake_outputs(student, reduction, compute_grad)

    @torch.library.register_fake("asrkd::kd_kl_div_topk_fwd")
    def _(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, compute_grad):
        return _fake_outputs(student, reduction, compute_grad)

    @torch.library.register_fake("asrkd::kd_kl_scale_grad_")
    def _(grad, scale):
        return None
