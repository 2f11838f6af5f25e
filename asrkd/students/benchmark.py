"""Streaming real-time factor of the students: ``python -m asrkd.students.benchmark``.

Feeds random log-mel features (100 frames/s) through ``stream_step`` in steps of
``chunk_frames`` and ``stream_flush``, batch 1, and reports wall time / audio duration
for each architecture and size (``--torchscript``: of the exported module). Feature
extraction is not included.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from asrkd.students import SIZES, build_student, count_parameters
from asrkd.students.export import script_student


def _stream(model, feats: torch.Tensor, step: int) -> torch.Tensor:
    state = model.init_state(1)
    outs = []
    for t0 in range(0, feats.size(1), step):
        out, state = model.stream_step(feats[:, t0 : t0 + step], state, None)
        outs.append(out)
    outs.append(model.stream_flush(state))
    return torch.cat(outs, dim=1)


@torch.inference_mode()
def streaming_rtf(model, seconds: float = 20.0, repeats: int = 3, seed: int = 0) -> float:
    """Best-of-``repeats`` real-time factor of streaming ``seconds`` of input, batch 1, in
    steps of ``chunk_frames`` (``model``: an eval-mode student or its TorchScript export)."""
    gen = torch.Generator().manual_seed(seed)
    feature_rate = model.frame_rate * model.subsampling
    frames = int(seconds * feature_rate)
    feats = torch.randn(1, frames, model.input_dim, generator=gen)
    _stream(model, feats[:, : 8 * model.chunk_frames], model.chunk_frames)  # warm-up (and TorchScript profiling)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _stream(model, feats, model.chunk_frames)
        best = min(best, time.perf_counter() - start)
    return best / (frames / feature_rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    parser.add_argument("--size", nargs="+", default=["xs", "s", "m"])
    parser.add_argument("--vocab-size", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torchscript", action="store_true", help="time the TorchScript export instead of eager")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for arch in args.arch:
        for size in args.size:
            model = build_student(arch, size, args.vocab_size).eval()
            rtf = streaming_rtf(script_student(model) if args.torchscript else model, args.seconds)
            rows.append(
                dict(
                    arch=arch,
                    size=size,
                    params=count_parameters(model),
                    latency_ms=model.algorithmic_latency_ms,
                    rtf=round(rtf, 5),
                    threads=args.threads,
                    torchscript=args.torchscript,
                )
            )
            print(
                f"{arch:10s} {size:3s} params {rows[-1]['params']:>10,d}  latency {model.algorithmic_latency_ms:.0f} ms"
                f"  streaming RTF {rtf:.4f} ({args.threads} thread{'s' if args.threads > 1 else ''}"
                f"{', TorchScript' if args.torchscript else ''})"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
