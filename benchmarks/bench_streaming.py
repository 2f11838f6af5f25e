"""Streaming real-time factor of a student through ``asrkd decode``, feature extraction included.

Runs :func:`asrkd.eval.decode.decode_manifest` (the code behind ``asrkd decode --streaming``) on a
manifest, one utterance at a time, audio pushed in chunks of ``--chunk-ms`` (default: the
model's native chunk), on ``--threads`` CPU threads (default 1), and reports

    RTF = compute time / audio duration

where compute = log-mel + CMVN (computed incrementally, push by push) + the student's
``stream_step``/``stream_flush`` + greedy CTC search; reading the audio files is not
included. The full-utterance RTF of the same model on the same audio is reported beside it.
Target (issue 5): streaming RTF <= 0.05 on one CPU thread.

    .venv/bin/python benchmarks/bench_streaming.py                         # conformer + emformer xs, random weights
    .venv/bin/python benchmarks/bench_streaming.py --checkpoint exp/mini/student_kd.pt --manifest data/test.jsonl

Without ``--checkpoint`` the students are built with random weights (the compute does not
depend on the weights' values); without ``--manifest`` 60 s of synthetic audio (10
utterances of 6 s) are written to a temporary folder. Writes
``benchmarks/results/streaming_<device>.json``. Timings are measurements, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from asrkd.atomic import write_text  # noqa: E402
from asrkd.eval.decode import decode_manifest  # noqa: E402

TARGET_RTF = 0.05
SR = 16000


def device_tag(device: str) -> str:
    if device == "cuda":
        return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    return f"cpu-{os.cpu_count()}core"


def random_student_checkpoint(arch: str, size: str, path: Path) -> Path:
    from asrkd.data.features import FeatureConfig, GlobalCMVN
    from asrkd.data.tokenizer import CharTokenizer
    from asrkd.models.checkpoint import save_checkpoint
    from asrkd.models.students import ARCHS, build_student

    tok = CharTokenizer.english()
    torch.manual_seed(0)
    model = build_student(arch, size, len(tok)).eval()
    save_checkpoint(
        path,
        {
            "arch": ARCHS[arch][0],
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": FeatureConfig().to_dict(),
            "cmvn": GlobalCMVN.identity(80).to_dict(),
        },
    )
    return path


def synthetic_manifest(folder: Path, utterances: int, seconds: float) -> Path:
    """Speech-like test signals: a gliding harmonic tone with syllable-rate amplitude
    modulation plus noise, ``seconds`` each."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    lines = []
    for i in range(utterances):
        n = int(seconds * SR)
        t = np.arange(n) / SR
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        tone = sum(np.sin(k * phase) / k for k in range(1, 6))
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6.28))
        wave = 0.2 * tone * env + 0.01 * rng.standard_normal(n)
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, wave.astype(np.float32), SR)
        lines.append({"id": f"utt{i:03d}", "audio": str(path), "duration": seconds})
    manifest = folder / "bench.jsonl"
    manifest.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return manifest


def measure(checkpoint, manifest, *, streaming: bool, chunk_ms, device: str, threads: int, repeats: int) -> dict:
    """Best of ``repeats`` runs (after one warm-up run) of decode_manifest."""
    runs = []
    stats = None
    for i in range(repeats + 1):
        _, stats = decode_manifest(
            checkpoint,
            manifest,
            streaming=streaming,
            chunk_ms=chunk_ms if streaming else None,
            device=device,
            threads=threads,
        )
        if i > 0:
            runs.append(stats["rtf"])
    keep = (
        "params",
        "audio_s",
        "decoded",
        "frame_rate",
        "native_chunk_ms",
        "model_latency_ms",
        "chunk_ms",
        "algorithmic_latency_ms",
        "threads",
        "device",
    )
    return {"rtf": min(runs), "rtf_runs": runs, **{k: stats[k] for k in keep if k in stats}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", help="student checkpoint(s) (default: random conformer/emformer)")
    ap.add_argument("--arch", nargs="+", default=["conformer", "emformer"], help="random students to build")
    ap.add_argument("--size", default="xs")
    ap.add_argument("--manifest", help="audio to decode (default: synthetic)")
    ap.add_argument("--utterances", type=int, default=10, help="synthetic utterances (ignored with --manifest)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per synthetic utterance")
    ap.add_argument("--chunk-ms", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="asrkd-bench-") as tmp:
        tmp = Path(tmp)
        manifest = args.manifest or synthetic_manifest(tmp, args.utterances, args.seconds)
        if args.checkpoint:
            models = {c: c for c in args.checkpoint}
        else:
            models = {
                f"{a}-{args.size} (random weights)": random_student_checkpoint(a, args.size, tmp / f"{a}.pt")
                for a in args.arch
            }
        rows = []
        for name, ckpt in models.items():
            common = dict(chunk_ms=args.chunk_ms, device=args.device, threads=args.threads, repeats=args.repeats)
            s = measure(ckpt, manifest, streaming=True, **common)
            f = measure(ckpt, manifest, streaming=False, **common)
            row = {
                "model": name,
                "streaming": s,
                "full_utterance": f,
                "target_rtf": TARGET_RTF,
                "meets_target": s["rtf"] <= TARGET_RTF,
            }
            rows.append(row)
            plural = "s" if args.threads != 1 else ""
            print(
                f"{name}: {s['params']:,} params, chunk {s['chunk_ms']:g} ms, "
                f"latency {s['algorithmic_latency_ms']:g} ms; streaming RTF {s['rtf']:.4f} (target <= {TARGET_RTF}), "
                f"full-utterance RTF {f['rtf']:.4f} [{args.device}, {args.threads} thread{plural}, "
                f"{s['audio_s']:.0f} s audio, features included]"
            )
    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads,
        "manifest": args.manifest or f"synthetic: {args.utterances} x {args.seconds:g} s",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "rtf": "compute / audio: log-mel + CMVN + student + greedy search, best of repeats after a warm-up",
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"streaming_{device_tag(args.device)}.json"
    write_text(out, json.dumps({"env": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
