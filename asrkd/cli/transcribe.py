"""``asrkd transcribe``: Whisper's own transcripts (encoder + decoder) of a manifest.

::

    asrkd transcribe --teacher whisper-tiny.en --manifest data/test.jsonl --out hyp.txt \\
        [--beam 5] [--batch-size 8] [--raw-text] [--json stats.json]
    asrkd transcribe --teacher whisper-base a.wav recordings/          # plain files: prints lines

writes Kaldi-style lines ``utt-id word word ...`` like ``asrkd decode``, the text normalised to
the student's characters (``--raw-text`` keeps Whisper's case, punctuation and digits). The work
is :func:`asrkd.eval.transcribe.transcribe_manifest`.
"""

from __future__ import annotations

import argparse
import json
import sys

from asrkd.cli._inputs import add_input_arguments, emit, resolve_inputs

HELP = "transcribe a manifest with Whisper's own decoder (greedy or beam) into Kaldi-style hypotheses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", default="whisper-tiny.en", help="whisper-tiny.en, whisper-base or whisper:DIR")
    add_input_arguments(parser)
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy search)")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per batch")
    parser.add_argument("--raw-text", action="store_true", help="Whisper's text as it writes it (no normalisation)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="STATS.json", help="write the statistics as JSON")
    parser.add_argument("--report", metavar="FILE", help="write every skipped entry as a JSON line")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from asrkd.atomic import refuse_overwrite, refuse_overwrite_files, write_text
    from asrkd.data import Rejects
    from asrkd.eval.transcribe import transcribe_manifest
    from asrkd.models.teachers import spec_file

    if args.beam < 1 or args.batch_size < 1:
        print("asrkd transcribe: error: --beam and --batch-size must be >= 1", file=sys.stderr)
        return 2
    rejects = Rejects()
    entries, audio = resolve_inputs(args, rejects)
    refuse_overwrite(
        {"--out": args.out, "--json": args.json, "--report": args.report},
        {"--manifest": args.manifest, "--teacher": spec_file(args.teacher)},
    )
    outputs = {"--out": args.out, "--json": args.json, "--report": args.report}
    refuse_overwrite_files(outputs, audio, f"an audio file of {args.manifest or 'the input'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = transcribe_manifest(
        args.teacher,
        entries,
        beam_size=args.beam,
        batch_size=args.batch_size,
        normalize=not args.raw_text,
        device=args.device,
        rejects=rejects,
        progress=not args.no_progress,
    )
    if not result.texts:
        raise ValueError(f"{args.manifest}: no entries to transcribe\n{rejects.summary()}")
    emit(args, result.texts)
    info = sys.stdout if args.out else sys.stderr  # stdout holds the hypotheses when there is no --out
    s = result.stats
    rtf = "n/a" if s["rtf"] is None else f"{s['rtf']:.4f}"
    print(
        f"transcribed {s['decoded']} of {s['utterances']} utterances ({s['audio_s']:.1f} s of audio) in "
        f"{s['wall_s']:.1f} s wall; RTF {rtf} ({'greedy' if args.beam == 1 else f'beam {args.beam}'}, "
        f"{s['device']}, {s['threads']} threads)",
        file=info,
    )
    if len(rejects):
        print(rejects.summary(), file=info)
    if args.report:
        rejects.write_report(args.report)
    if args.json:
        write_text(args.json, json.dumps(s, indent=2) + "\n")
    if args.out:
        print(f"wrote {len(result.texts)} hypotheses to {args.out}")
    return 0
