"""What a decoding command reads: ``--manifest M.jsonl`` or audio files and folders named on the
command line (shared by ``asrkd decode`` and ``asrkd transcribe``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "audio",
        nargs="*",
        help="audio files or folders to decode instead of --manifest (any sample rate, mono or "
        "multi-channel: mixed down and resampled to 16 kHz); ids are file stems",
    )
    parser.add_argument("--manifest", help="manifest JSONL to decode")
    parser.add_argument(
        "--out", help="hypotheses, Kaldi style: utt-id word word ... (default with audio files: print them)"
    )


def resolve_inputs(args: argparse.Namespace, rejects: Any) -> tuple[Any, list[str]]:
    """``(manifest path or list of utterances, audio files)``; ``ValueError`` for a bad combination."""
    from asrkd.data import Rejects, load_manifest
    from asrkd.data.plain import utterances_from_paths

    if args.audio and args.manifest:
        raise ValueError("give --manifest or audio files, not both")
    if not args.audio and not args.manifest:
        raise ValueError("nothing to decode: give --manifest M.jsonl or audio files / folders")
    if args.manifest:
        if not args.out:
            raise ValueError("--manifest needs --out")
        if not Path(args.manifest).is_file():
            raise FileNotFoundError(f"manifest not found: {args.manifest}")
        return args.manifest, [u.audio for u in load_manifest(args.manifest, Rejects(), audio_only=True)]
    utts = utterances_from_paths(args.audio, rejects)
    if not utts:
        raise ValueError(f"no readable audio in {' '.join(args.audio)}\n{rejects.summary()}")
    return utts, [u.audio for u in utts]


def emit(args: argparse.Namespace, hyps: dict[str, str]) -> None:
    """Write the hypotheses to ``--out``, or print ``id text`` lines when there is none."""
    from asrkd.eval.decode import write_hypotheses

    if args.out:
        write_hypotheses(args.out, hyps)
        return
    for uid, text in hyps.items():
        words = " ".join(text.split())
        print(f"{uid} {words}" if words else uid, flush=True)
