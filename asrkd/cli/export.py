"""``asrkd export``: a streaming student checkpoint -> TorchScript (:mod:`asrkd.models.export`)."""

from __future__ import annotations

import argparse

from asrkd.models.export import FORMATS, export_checkpoint
from asrkd.models.students.streaming import count_parameters

HELP = "export a streaming student checkpoint to TorchScript (streaming API included)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="asrkd checkpoint of a streaming student")
    parser.add_argument("--out", required=True, help="output file (e.g. student.ts)")
    parser.add_argument("--format", default="torchscript", choices=FORMATS, help="export format")


def run(args: argparse.Namespace) -> int:
    model, ckpt, diff = export_checkpoint(args.checkpoint, args.out)
    print(
        f"wrote {args.out}: {ckpt['arch']}, {count_parameters(model):,} parameters, "
        f"chunk {model.chunk_frames} frames, latency {model.algorithmic_latency_ms:.0f} ms; "
        f"max |exported - eager| logit difference {diff:.2e}"
    )
    return 0
