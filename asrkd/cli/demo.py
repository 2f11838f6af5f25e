"""``asrkd demo``: the fused KD loss on random logits, checked against the reference, and timed."""

from __future__ import annotations

import argparse
import sys
import time

import torch

HELP = "show the fused KD loss: value and gradient vs the PyTorch reference, and one timing line"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="16,400,500", help="B,T,V of the random logits (default 16,400,500)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)


def _eager(student, teacher, lengths, temperature):
    import torch.nn.functional as F

    log_q = F.log_softmax(student / temperature, -1)
    log_p = F.log_softmax(teacher / temperature, -1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1) * temperature**2
    mask = torch.arange(student.shape[1])[None] < lengths[:, None]
    return (kl * mask).sum() / mask.sum()


def _time(fn, reps: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def run(args: argparse.Namespace) -> int:
    import asrkd.ops as ops
    from asrkd.ops import reference

    try:
        B, T, V = (int(x) for x in args.shape.split(","))
    except ValueError:
        print(f"error: --shape must be three integers B,T,V, got {args.shape!r}", file=sys.stderr)
        return 2
    if min(B, T, V) < 1 or B * T * V > 2**28:
        print(f"error: --shape {args.shape}: each of B, T, V must be >= 1 and B*T*V <= 2^28", file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)
    student = (torch.randn(B, T, V, generator=g) * 3).requires_grad_()
    teacher = torch.randn(B, T, V, generator=g) * 3
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    info = ops.extension_info()
    print(f"asrkd.ops: compiled extension {'loaded' if info['available'] else 'MISSING'} {info}")

    loss = ops.kd_kl_div(student, teacher, lengths, temperature=args.temperature)
    loss.backward()
    s64 = student.detach().double().requires_grad_()
    ref = reference.kd_kl_div(s64, teacher.double(), lengths, temperature=args.temperature)
    ref.backward()
    grad_err = (student.grad.double() - s64.grad).abs().max().item()
    print(
        f"loss (B,T,V)=({B},{T},{V}), T={args.temperature}: fused {loss.item():.6f}  fp64 reference {ref.item():.6f}"
        f"  |Δloss| {abs(loss.item() - ref.item()):.2e}  max|Δgrad| {grad_err:.2e}"
    )

    def step(fn):
        def go():
            student.grad = None
            fn().backward()

        return go

    t_fused = _time(step(lambda: ops.kd_kl_div(student, teacher, lengths, temperature=args.temperature)))
    t_eager = _time(step(lambda: _eager(student, teacher, lengths, args.temperature)))
    print(
        f"forward+backward on {torch.get_num_threads()} CPU threads: fused {t_fused * 1e3:.2f} ms, "
        f"PyTorch eager {t_eager * 1e3:.2f} ms -> {t_eager / t_fused:.1f}x "
        "(full comparison: benchmarks/bench_kd_kl.py)"
    )
    return 0
