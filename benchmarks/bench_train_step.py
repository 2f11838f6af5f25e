"""A training step with the cached teacher vs a CTC-only step, on the same batch.

Both steps are what ``asrkd train`` does per batch: student forward, loss, backward, gradient
clipping, AdamW step. The KD step also reads the teacher's targets from a real cache
(``asrkd.kd.cache``: memory-mapped shard slices, :meth:`~asrkd.kd.cache.TeacherCache.targets`) and
aligns them (50 -> 25 frames/s, the mini recipe's Whisper teacher and student) inside
:class:`~asrkd.kd.loss.DistillationLoss`. The cache is written once, before timing, by a
stand-in teacher with fixed random logits at 50 frames/s (what is timed is reading and
using the cache, not the teacher). Data loading and features are outside the step and equal
for both (features are precomputed).

    .venv/bin/python benchmarks/bench_train_step.py                 # CPU; CUDA too when present
    .venv/bin/python benchmarks/bench_train_step.py --quick         # smaller batch, fewer steps

Prints the median step times and ``kd / ctc`` ratios (target <= 1.15) and writes
``benchmarks/results/train_step_<device>.json``. Timings are measurements, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asrkd.atomic import write_text  # noqa: E402
from asrkd.data import CharTokenizer, Utterance  # noqa: E402
from asrkd.kd.cache import TeacherCache, build_cache  # noqa: E402
from asrkd.kd.loss import DistillationLoss  # noqa: E402
from asrkd.models.acoustic import AcousticModel  # noqa: E402
from asrkd.models.students import build_student, count_parameters  # noqa: E402

TEACHER_RATE = 50.0


class _FixedLogits(torch.nn.Module):
    """Stand-in teacher: deterministic random logits at 50 frames/s (Whisper's rate)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.proj = torch.nn.Linear(1, vocab_size)

    def forward(self, waves, lengths):
        frames = lengths // 320
        g = torch.Generator().manual_seed(int(lengths.sum()))
        logits = torch.randn(waves.shape[0], int(frames.max()), self.proj.out_features, generator=g) * 4
        logits[..., 0] += 3.0  # blank-heavy, like a CTC teacher
        return logits, frames


def _batch(n: int, seconds: float, folder: Path, tok) -> tuple[list[Utterance], dict]:
    """``n`` utterances of about ``seconds`` (wav files for the cache, features for the step)."""
    rng = np.random.default_rng(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    utts, feats, texts = [], [], []
    for i in range(n):
        dur = seconds * (0.85 + 0.15 * i / max(n - 1, 1))
        samples = int(dur * 16000)
        path = folder / f"u{i}.wav"
        sf.write(str(path), (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000)
        text = " ".join(rng.choice(words, size=max(2, int(dur * 2.2))))
        utts.append(Utterance(f"u{i}", str(path), samples / 16000, text=text))
        feats.append(torch.from_numpy(rng.standard_normal(((samples - 400) // 160 + 1, 80)).astype(np.float32)))
        texts.append(torch.tensor(tok.encode(text)))
    pad = torch.nn.utils.rnn.pad_sequence
    batch = {
        "ids": [u.id for u in utts],
        "feats": pad(feats, batch_first=True),
        "feat_lengths": torch.tensor([f.shape[0] for f in feats]),
        "targets": pad(texts, batch_first=True),
        "target_lengths": torch.tensor([t.numel() for t in texts]),
        "has_text": torch.ones(n, dtype=torch.bool),
    }
    return utts, batch


def _time_steps(step, steps: int, warmup: int, device: torch.device) -> list[float]:
    out = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def bench(device: torch.device, args, workdir: Path) -> dict:
    tok = CharTokenizer.english()
    utts, batch = _batch(args.batch, args.seconds, workdir, tok)
    teacher = AcousticModel(
        _FixedLogits(len(tok)),
        vocab=tok.tokens,
        blank_id=0,
        frame_rate=TEACHER_RATE,
        frozen=True,
        spec="bench:fixed-logits",
    )
    caches = {}
    for kind, topk in (("dense", None), ("topk", args.topk)):
        out = workdir / f"cache-{kind}"
        build_cache(teacher, utts, out, topk=topk, num_workers=0, progress=False, log=lambda m: None)
        caches[kind] = TeacherCache.open(out)

    torch.manual_seed(0)
    model = build_student(args.arch, args.size, len(tok)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    on_dev = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    losses = {
        "ctc": DistillationLoss(ctc_weight=1.0, kd_weight=0.0, blank_id=0),
        "kd": DistillationLoss(
            ctc_weight=1.0,
            kd_weight=1.0,
            temperature=args.temperature,
            blank_id=0,
            student_frame_rate=model.frame_rate,
            teacher_frame_rate=TEACHER_RATE,
        ),
    }

    def make_step(variant: str):
        loss_fn = losses["ctc" if variant == "ctc" else "kd"]
        cache = caches.get(variant.split("_")[-1]) if variant != "ctc" else None

        def step():
            # what the trainer does per batch with a cache
            teacher = cache.targets(on_dev["ids"], device) if cache is not None else None
            with amp if amp is not None else torch.autocast("cpu", enabled=False):
                logits, lengths = model(on_dev["feats"], on_dev["feat_lengths"])
            out = loss_fn(
                logits,
                lengths,
                on_dev["targets"],
                on_dev["target_lengths"],
                has_text=on_dev["has_text"],
                teacher=teacher,
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    variants = ["ctc", "kd_dense", "kd_topk"]
    times: dict[str, list[float]] = {v: [] for v in variants}
    # Interleaved rounds: slow drifts of a shared machine hit every variant alike.
    for _ in range(args.rounds):
        for v in variants:
            times[v] += _time_steps(make_step(v), args.steps, args.warmup, device)
    med = {v: statistics.median(t) for v, t in times.items()}
    audio = float(batch["feat_lengths"].sum()) / 100.0
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "student": f"{args.arch} {args.size}",
        "params": count_parameters(model),
        "batch": args.batch,
        "audio_seconds": round(audio, 1),
        "teacher_rate": TEACHER_RATE,
        "student_rate": model.frame_rate,
        "topk": args.topk,
        "temperature": args.temperature,
        "amp": "bf16" if device.type == "cuda" else "off",
        "median_ms": {v: round(s * 1e3, 2) for v, s in med.items()},
        "ratio_vs_ctc": {v: round(med[v] / med["ctc"], 3) for v in variants if v != "ctc"},
        "samples": {v: len(t) for v, t in times.items()},
    }


def device_tag(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    return f"cpu-{os.cpu_count()}core"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--arch", default="conformer")
    ap.add_argument("--size", default="xs")
    ap.add_argument("--batch", type=int, default=16, help="utterances per batch (default 16)")
    ap.add_argument("--seconds", type=float, default=7.0, help="longest utterance, seconds (default 7)")
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round (default 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all variants (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (default: torch's choice)")
    ap.add_argument("--quick", action="store_true", help="batch 4 x 3 s, 2 steps, 2 rounds")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.steps, args.warmup, args.rounds = 4, 3.0, 2, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [torch.device(d) for d in devices if d == "cpu" or torch.cuda.is_available()]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        with tempfile.TemporaryDirectory() as tmp:
            res = bench(device, args, Path(tmp))
        res.update(
            torch=torch.__version__, date=_dt.datetime.now().isoformat(timespec="seconds"), command=" ".join(sys.argv)
        )
        print(
            f"{device_tag(device)}: {res['student']} ({res['params'] / 1e6:.2f} M), batch {res['batch']} "
            f"({res['audio_seconds']} s audio), {res['threads']} threads"
        )
        for v, ms in res["median_ms"].items():
            ratio = res["ratio_vs_ctc"].get(v)
            print(f"  {v:9s} {ms:9.1f} ms" + (f"   {ratio:.3f} x ctc (target <= 1.15)" if ratio else ""))
        path = out_dir / f"train_step_{device_tag(device)}.json"
        write_text(path, json.dumps(res, indent=1) + "\n")
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
