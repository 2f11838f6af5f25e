"""Model-only streaming real-time factor of every student architecture and size.

Feeds random log-mel features (100 frames/s) through ``stream_step`` in steps of
``chunk_frames`` and ``stream_flush``, batch 1, and reports wall time / audio duration for
each architecture and size (``--torchscript``: of the exported module), with the parameter
count and algorithmic latency. Feature extraction and search are not included
(``bench_streaming.py`` times the whole ``asrkd decode --streaming`` path).

    .venv/bin/python benchmarks/bench_students.py --threads 1 [--torchscript] [--arch conformer] [--size xs]

Writes ``benchmarks/results/students_cpu-<N>core[_torchscript].json``. Timings are
measurements, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from asrkd.atomic import write_text  # noqa: E402
from asrkd.models.export import script_student  # noqa: E402
from asrkd.models.students import SIZES, build_student, count_parameters  # noqa: E402


def _stream(model, feats: torch.Tensor, step: int) -> torch.Tensor:
    state = model.init_state(1)
    outs = []
    for t0 in range(0, feats.size(1), step):
        out, state = model.stream_step(feats[:, t0 : t0 + step], state, None)
        outs.append(out)
    outs.append(model.stream_flush(state))
    return torch.cat(outs, dim=1)


@torch.inference_mode()
def streaming_rtf(model, seconds: float, repeats: int, seed: int = 0) -> list[float]:
    """RTF of each of ``repeats`` runs streaming ``seconds`` of input, after a warm-up (which
    also lets TorchScript profile)."""
    gen = torch.Generator().manual_seed(seed)
    feature_rate = model.frame_rate * model.subsampling
    frames = int(seconds * feature_rate)
    feats = torch.randn(1, frames, model.input_dim, generator=gen)
    _stream(model, feats[:, : 8 * model.chunk_frames], model.chunk_frames)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        _stream(model, feats, model.chunk_frames)
        runs.append((time.perf_counter() - start) / (frames / feature_rate))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=sorted(SIZES), choices=sorted(SIZES))
    parser.add_argument("--size", nargs="+", default=["xs", "s", "m"])
    parser.add_argument("--vocab-size", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torchscript", action="store_true", help="time the TorchScript export instead of eager")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'arch':10s} {'size':4s} {'parameters':>11s} {'latency':>8s} {'RTF (best)':>10s}")
    for arch in args.arch:
        for size in args.size:
            model = build_student(arch, size, args.vocab_size).eval()
            runs = streaming_rtf(script_student(model) if args.torchscript else model, args.seconds, args.repeats)
            rows.append(
                dict(
                    arch=arch,
                    size=size,
                    params=count_parameters(model),
                    latency_ms=model.algorithmic_latency_ms,
                    rtf=min(runs),
                    rtf_runs=runs,
                )
            )
            print(
                f"{arch:10s} {size:4s} {rows[-1]['params']:>11,d} {model.algorithmic_latency_ms:>6.0f}ms "
                f"{min(runs):>10.4f}"
            )
    env = dict(
        torch=torch.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        threads=args.threads,
        torchscript=args.torchscript,
        seconds=args.seconds,
    )
    suffix = "_torchscript" if args.torchscript else ""
    out = Path(args.out_dir) / f"students_cpu-{os.cpu_count()}core{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps({"env": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
