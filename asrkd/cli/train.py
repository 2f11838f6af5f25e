"""``asrkd train``: train a streaming student with CTC + λ·KD (:func:`asrkd.train.loop.train`).

::

    asrkd train --config recipes/mini/conf/student_kd.yaml [key=value ...]     # dotted keys
    asrkd train --config conf.yaml --resume                    # continue EXP_DIR/last.pt
    torchrun --nproc_per_node 4 -m asrkd.cli train --config conf.yaml      # DDP
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from asrkd.train.config import ConfigError, dump, load_config, validate

HELP = "train a streaming student: CTC + λ·KD from a cached or in-the-loop teacher (DDP via torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see docs/training.md); optional with --resume CKPT")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CKPT",
        help="continue a run exactly: from CKPT, or (no value) from EXP_DIR/last.pt if it exists",
    )
    p.add_argument("--print-config", action="store_true", help="print the full config and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides with dotted keys, values in YAML: optim.lr=3e-4 train.epochs=5",
    )


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """The config (file <- overrides; with only ``--resume CKPT``, the checkpoint's) and the
    checkpoint to resume from."""
    from asrkd.train.checkpointing import training_checkpoint

    if args.resume not in (None, "auto") and "=" in args.resume and not Path(args.resume).exists():
        # `--resume train.epochs=3`: argparse took the first override as the checkpoint
        args.overrides, args.resume = [args.resume, *args.overrides], "auto"
    ckpt_path = Path(args.resume) if args.resume not in (None, "auto") else None
    base = None
    if args.config is None:
        if ckpt_path is None:
            raise ConfigError("--config is required (or --resume CKPT to continue with the checkpoint's config)")
        base = training_checkpoint(ckpt_path)["config"]
    cfg = load_config(args.config, args.overrides, base=base)
    if args.resume == "auto":
        last = Path(cfg["exp_dir"]) / "last.pt"
        ckpt_path = last if last.is_file() else None
        if ckpt_path is None:
            print(f"--resume: no {last} yet, starting a new run", flush=True)
    elif ckpt_path is not None and not ckpt_path.is_file():
        raise ConfigError(f"--resume: checkpoint not found: {ckpt_path}")
    return cfg, ckpt_path


def run(args: argparse.Namespace) -> int:
    try:
        cfg, ckpt_path = resolve(args)
        validate(cfg, partial=args.print_config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    from asrkd.train.loop import train

    train(cfg, ckpt_path)  # other errors: one line from asrkd.cli
    return 0
