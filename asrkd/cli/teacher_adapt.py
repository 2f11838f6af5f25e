"""``asrkd teacher-adapt``: transfer a Whisper encoder to character CTC on a manifest
(:func:`asrkd.train.adapt.adapt_teacher`), the mini recipe's teacher.

::

    asrkd teacher-adapt --teacher whisper-tiny.en --train train.jsonl --dev dev.jsonl \\
        --tokenizer exp/tokenizer.json --out exp/teacher.pt [--epochs 40 | --minutes 10] \\
        [--augment-copies 2 [--augment augment.yaml]]
"""

from __future__ import annotations

import argparse
import time

from asrkd.train.adapt import AdaptConfig

HELP = "train a CTC head (optionally the top encoder blocks) on a Whisper teacher: the mini recipe's teacher"

_D = AdaptConfig  # the defaults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        default=_D.teacher,
        help="whisper-tiny.en (default, offline), whisper-base (offline), whisper:PATH (ct2 model.bin, "
        "openai .pt, HF dir), or an adapted teacher checkpoint (asrkd:CKPT) to continue training",
    )
    p.add_argument("--train", required=True, help="training manifest (JSONL, with text)")
    p.add_argument("--dev", help="dev manifest: CER/WER after each epoch; the best-CER epoch is kept")
    p.add_argument(
        "--tokenizer",
        required=True,
        help="saved asrkd tokenizer; if the file does not exist, a CharTokenizer is built from the "
        "training texts and saved there",
    )
    p.add_argument("--out", required=True, help="output checkpoint (written atomically)")
    p.add_argument(
        "--epochs",
        type=int,
        default=_D.epochs,
        help=f"maximum epochs over the cached training set (default {_D.epochs})",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget of the whole command, encoding included; the LR schedule follows it "
        "and training stops at it (after at least one epoch)",
    )
    p.add_argument(
        "--unfreeze-blocks",
        type=int,
        default=_D.unfreeze_blocks,
        help=f"also train the top K encoder blocks (default {_D.unfreeze_blocks})",
    )
    p.add_argument("--lr", type=float, default=_D.lr, help="head learning rate (AdamW, default 2e-3)")
    p.add_argument(
        "--encoder-lr", type=float, default=_D.encoder_lr, help="learning rate of unfrozen blocks (default 1e-4)"
    )
    p.add_argument("--weight-decay", type=float, default=_D.weight_decay)
    p.add_argument(
        "--head-layers",
        type=int,
        default=_D.head_layers,
        help=f"conv layers in the CTC head (0 = linear; default {_D.head_layers})",
    )
    p.add_argument("--head-hidden", type=int, default=_D.head_hidden)
    p.add_argument("--head-kernel", type=int, default=_D.head_kernel)
    p.add_argument("--dropout", type=float, default=_D.dropout, help=f"head dropout (default {_D.dropout})")
    p.add_argument(
        "--time-masks",
        type=int,
        default=_D.time_masks,
        help=f"time masks per utterance on cached activations (default {_D.time_masks})",
    )
    p.add_argument(
        "--time-mask-width",
        type=float,
        default=_D.time_mask_width,
        help="max width of each, as a fraction of the length",
    )
    p.add_argument(
        "--max-seconds-per-batch",
        type=float,
        default=_D.max_seconds_per_batch,
        help=f"padded audio seconds per batch (encoding and training; default {_D.max_seconds_per_batch:g})",
    )
    p.add_argument(
        "--augment-copies",
        type=int,
        default=_D.augment_copies,
        metavar="N",
        help="also encode each training utterance N times from augmented audio (noise, reverb, telephone, "
        "gain; seeded by --seed) and train on the copies too; the dev set stays clean. Costs N + 1 times "
        f"the encoding time and memory (default {_D.augment_copies})",
    )
    p.add_argument(
        "--augment",
        metavar="CONFIG",
        default=None,
        help="YAML or JSON file of the copies' augmentation, as the trainer's data.augment (docs/data.md); "
        "default with --augment-copies: all four at their default settings",
    )
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from asrkd.atomic import refuse_overwrite
    from asrkd.models.teachers import spec_file
    from asrkd.train.adapt import adapt_teacher, save_adapted

    refuse_overwrite(
        {"--out": args.out, "--tokenizer": args.tokenizer},
        {"--train": args.train, "--dev": args.dev, "--teacher": spec_file(args.teacher), "--augment": args.augment},
    )
    t0 = time.monotonic()
    deadline = None if args.minutes is None else t0 + 60.0 * args.minutes
    if args.threads:
        torch.set_num_threads(args.threads)
    names = AdaptConfig.__dataclass_fields__
    cfg = AdaptConfig(progress=not args.no_progress, **{k: v for k, v in vars(args).items() if k in names})
    whisper, tokenizer, summary = adapt_teacher(cfg, deadline=deadline)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_") and not callable(v)}
    save_adapted(args.out, whisper, tokenizer, summary, config)
    print(f"saved {args.out} ({time.monotonic() - t0:.0f} s in all)", flush=True)
    return 0
