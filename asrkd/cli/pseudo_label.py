"""``asrkd pseudo-label``: fill the text of untranscribed manifest entries with Whisper's transcript.

::

    asrkd pseudo-label --teacher whisper-tiny.en --manifest pool.jsonl --out pool_labelled.jsonl \\
        [--ctc-teacher exp/mini/teacher.pt --max-wer 60 [--max-cer 25]] [--min-avg-logprob -1.0] \\
        [--drop-filtered] [--beam 1] [--json stats.json]

An entry is left unlabelled (and counted) when Whisper's transcript and the CTC teacher's greedy
transcript disagree by more than ``--max-wer``/``--max-cer`` (%); ``--drop-filtered`` leaves it
out of the output instead. The work is :func:`asrkd.kd.pseudo_label.pseudo_label_manifest`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HELP = "label untranscribed audio with Whisper's decoder, filtered by agreement with a CTC teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="whisper-tiny.en", help="whisper-tiny.en, whisper-base or whisper:DIR")
    parser.add_argument("--manifest", required=True, help="manifest JSONL; entries without text get labelled")
    parser.add_argument("--out", required=True, help="output manifest JSONL")
    f = parser.add_argument_group("filter")
    f.add_argument("--ctc-teacher", help="CTC model (asrkd checkpoint or teacher spec): the second opinion")
    f.add_argument("--max-wer", type=float, help="largest WER (%%) between the two transcripts to accept")
    f.add_argument("--max-cer", type=float, help="largest CER (%%) between the two transcripts to accept")
    f.add_argument("--min-avg-logprob", type=float, help="smallest Whisper mean token log-probability to accept")
    f.add_argument("--drop-filtered", action="store_true", help="leave filtered entries out (default: kept, no text)")
    r = parser.add_argument_group("run")
    r.add_argument("--beam", type=int, default=1, help="Whisper beam size (1: greedy)")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    r.add_argument("--json", metavar="STATS.json", help="write counts and statistics as JSON")
    r.add_argument("--report", metavar="FILE", help="write every skipped entry as a JSON line")
    r.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from asrkd.atomic import refuse_overwrite, refuse_overwrite_files, write_text
    from asrkd.data import Rejects, load_manifest, save_manifest
    from asrkd.kd.pseudo_label import pseudo_label_manifest
    from asrkd.models.teachers import spec_file

    for name in ("max_wer", "max_cer", "min_avg_logprob"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            print(f"asrkd pseudo-label: error: --{name.replace('_', '-')} must be a number", file=sys.stderr)
            return 2
    if args.beam < 1 or args.batch_size < 1:
        print("asrkd pseudo-label: error: --beam and --batch-size must be >= 1", file=sys.stderr)
        return 2
    if not Path(args.manifest).is_file():
        raise FileNotFoundError(f"manifest not found: {args.manifest}")
    refuse_overwrite(
        {"--out": args.out, "--json": args.json, "--report": args.report},
        {
            "--manifest": args.manifest,
            "--teacher": spec_file(args.teacher),
            "--ctc-teacher": spec_file(args.ctc_teacher),
        },
    )
    outputs = {"--out": args.out, "--json": args.json, "--report": args.report}
    audio = [u.audio for u in load_manifest(args.manifest, Rejects(), audio_only=True)]
    refuse_overwrite_files(outputs, audio, f"an audio file of {args.manifest}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rejects = Rejects()
    result = pseudo_label_manifest(
        args.teacher,
        args.manifest,
        ctc_teacher=args.ctc_teacher,
        max_wer=args.max_wer,
        max_cer=args.max_cer,
        min_avg_logprob=args.min_avg_logprob,
        drop_filtered=args.drop_filtered,
        beam_size=args.beam,
        batch_size=args.batch_size,
        device=args.device,
        rejects=rejects,
        progress=not args.no_progress,
    )
    save_manifest(args.out, result.utterances, relative_to=Path(args.out).parent)
    print(result.summary())
    if len(rejects):
        print(rejects.summary())
    if args.report:
        rejects.write_report(args.report)
    if args.json:
        write_text(args.json, json.dumps({"counts": result.counts, **result.stats}, indent=2) + "\n")
    print(f"wrote {len(result.utterances)} entries to {args.out}")
    return 0
