"""``asrkd synth``: the offline mini corpus (espeak-ng + festival), written by :func:`asrkd.data.synth.synthesize`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from asrkd.data.synth import TEXT_SOURCES, SynthConfig, SynthError, synthesize

HELP = "synthesize the offline mini corpus with espeak-ng and festival (manifests; held-out voices; a pool)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    p.add_argument("out_dir", type=Path, help="corpus folder (manifests, wavs/, corpus.json)")
    p.add_argument(
        "--hours", type=float, default=d.train_hours, help=f"training audio in hours (default {d.train_hours})"
    )
    p.add_argument("--dev-minutes", type=float, default=d.dev_minutes, help=f"default {d.dev_minutes}")
    p.add_argument("--test-minutes", type=float, default=d.test_minutes, help=f"default {d.test_minutes}")
    p.add_argument(
        "--pool-hours",
        type=float,
        default=d.pool_hours,
        help="untranscribed pool (pool.jsonl without text; train_pool.jsonl = train + pool), other voices "
        f"and sentences, for KD without labels (default {d.pool_hours})",
    )
    p.add_argument(
        "--festival-share",
        type=float,
        default=d.festival_share,
        help=f"fraction of the utterances spoken by festival voices (default {d.festival_share}; 0: espeak-ng only)",
    )
    p.add_argument(
        "--text",
        choices=TEXT_SOURCES,
        default=d.text,
        help="wordnet: natural sentences (WordNet usage examples, apt wordnet-base); words: random word strings",
    )
    p.add_argument(
        "--quick", action="store_true", help="a few minutes of audio in all (CI): 4 min train, 1 dev, 1 test, 1 pool"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel synthesis processes")
    p.add_argument("--force", action="store_true", help="synthesize again even if OUT_DIR holds this corpus")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        if args.quick:
            config = SynthConfig.quick(seed=args.seed)
        else:
            config = SynthConfig(
                train_hours=args.hours,
                dev_minutes=args.dev_minutes,
                test_minutes=args.test_minutes,
                pool_hours=args.pool_hours,
                seed=args.seed,
            )
        config = dataclasses.replace(config, festival_share=args.festival_share, text=args.text)
        stats = synthesize(args.out_dir, config, jobs=args.jobs, progress=not args.quiet, force=args.force)
    except SynthError as err:
        print(f"asrkd synth: error: {err}", file=sys.stderr)
        return 2
    sec, n, spk = stats["seconds"], stats["utterances"], stats["speakers"]
    if stats.get("reused"):
        print(f"{args.out_dir}: corpus already synthesized with these settings (use --force to redo)")
    print(
        f"corpus: train {n['train']} utt / {sec['train'] / 3600:.2f} h / {spk['train']} speakers, "
        f"dev {n['dev']} / {sec['dev'] / 60:.1f} min / {spk['dev']}, "
        f"test {n['test']} / {sec['test'] / 60:.1f} min / {spk['test']}; "
        + (f"pool {n['pool']} / {sec['pool'] / 3600:.2f} h / {spk['pool']} (no text); " if "pool" in n else "")
        + f"{stats['distinct_words']['train']} distinct training words; {stats['bytes'] / 1e6:.0f} MB"
    )
    fest = stats.get("festival_utterances", {})
    unseen = stats.get("unseen_in_train", {}).get("test")
    if fest and unseen:
        print(
            f"festival voices: {', '.join(f'{s} {k}' for s, k in fest.items())} utterances; test words unseen "
            f"in training: {100 * unseen['types']:.1f} % of types, {100 * unseen['tokens']:.1f} % of running words"
        )
    if not stats.get("reused"):
        print(f"time: {stats['wall_s']:.1f} s with {stats['jobs']} processes")
    if stats["failed"]:
        for uid, err in list(stats["failed"].items())[:10]:
            print(f"failed: {uid}: {err}", file=sys.stderr)
        print(f"asrkd synth: {len(stats['failed'])} utterance(s) failed; manifests leave them out", file=sys.stderr)
        return 1
    return 0
