"""``asrkd cache-teacher``: run a teacher once over a manifest and store its outputs for training.

::

    asrkd cache-teacher --teacher SPEC --manifest M.jsonl --out DIR [--topk K] [--shard-size N]

writes ``DIR/index.json`` and ``DIR/shard-NNNNN.pt`` (dense fp16 log-probabilities, or the top-K
with their token ids), resumes an interrupted run, recomputes shards that fail verification,
and prints the summary of the utterances left out. The work and the format are
:mod:`asrkd.kd.cache` (:func:`~asrkd.kd.cache.cache_teacher`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from asrkd.atomic import refuse_overwrite
from asrkd.kd.cache import INDEX, cache_teacher

HELP = "run a teacher once over a manifest and store its outputs (dense fp16 or top-k) for training"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        action="append",
        help="teacher spec (see `asrkd.models.teachers.load_teacher`), e.g. asrkd:exp/mini/teacher.pt; "
        "repeat it for an ensemble (cached in the first teacher's vocabulary and frame rate)",
    )
    p.add_argument(
        "--ensemble-weights",
        type=lambda s: [float(x) for x in s.split(",")],
        help="comma-separated weight per --teacher (default: equal)",
    )
    p.add_argument(
        "--ensemble-combine",
        choices=("prob", "logprob"),
        default="prob",
        help="mean of probabilities (default) or of log-probabilities",
    )
    p.add_argument("--manifest", required=True, help="manifest JSONL whose utterances are run through the teacher")
    p.add_argument("--out", required=True, help="cache folder (index.json + shard-*.pt)")
    p.add_argument(
        "--topk",
        type=int,
        default=0,
        help="store the top-K log-probabilities per frame (default 0: dense log-probabilities)",
    )
    p.add_argument("--shard-size", type=int, default=1000, help="utterances per shard (default 1000)")
    p.add_argument(
        "--batch-seconds", type=float, default=200.0, help="padded audio seconds per teacher batch (default 200)"
    )
    p.add_argument("--num-workers", type=int, default=2, help="audio-loading worker processes (default 2)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="replace a cache whose key does not match")
    p.add_argument("--report", help="write rejected utterances as JSON lines to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from asrkd.models.teachers import spec_file

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    # Refused before the teacher runs (minutes to hours), not after.
    refuse_overwrite(
        {"--report": args.report, "--out index": out / INDEX},
        {"--manifest": args.manifest, **{f"--teacher {t}": spec_file(t) for t in args.teacher}},
    )
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a cache folder: writing there would replace it")
    rejects = cache_teacher(
        args.teacher,
        args.manifest,
        args.out,
        ensemble_weights=args.ensemble_weights,
        ensemble_combine=args.ensemble_combine,
        topk=args.topk or None,
        shard_size=args.shard_size,
        batch_seconds=args.batch_seconds,
        num_workers=args.num_workers,
        device=device,
        force=args.force,
        progress=not args.quiet,
    )  # a key mismatch (CacheKeyError): one line from asrkd.cli
    print(rejects.summary())
    if args.report:
        rejects.write_report(args.report)
        print(f"report: {args.report}")
    return 0
