"""``asrkd report``: a recipe's scores into results.json, a table and a PNG (:mod:`asrkd.eval.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from asrkd.eval.report import write_report

HELP = "collect a recipe's WER/CER, latency and timings into results.json, a table and a PNG"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, type=Path, help="experiment folder (e.g. exp/mini)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default EXP/results.json)")


def run(args: argparse.Namespace) -> int:
    _, md, written = write_report(args.exp, args.out)
    print(md, end="")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
