"""``asrkd decode``: any asrkd checkpoint (or teacher spec) over a manifest, full-utterance or streaming.

::

    asrkd decode --checkpoint exp/mini/student_kd.pt --manifest data/test.jsonl --out hyp.txt \\
        [--streaming [--chunk-ms 240]] [--decoder greedy|beam --beam 8 --lexicon L --lm LM] \\
        [--emission-delay-ref exp/mini/teacher.pt | forced-align] [--json stats.json]

    asrkd decode --checkpoint exp/mini/student_kd.pt a.wav b.flac recordings/      # plain files: prints lines

writes Kaldi-style lines ``utt-id word word ...``, one per manifest entry, and prints the
real-time factor (and, streaming, the latency and the per-token emission delay). The work is
:func:`asrkd.eval.decode.decode_manifest`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from asrkd.atomic import refuse_overwrite, refuse_overwrite_files, write_text
from asrkd.cli._inputs import add_input_arguments, emit, resolve_inputs
from asrkd.eval.decode import decode_manifest, format_summary

HELP = "decode a manifest with an asrkd checkpoint (full-utterance or streaming) into Kaldi-style hypotheses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="asrkd checkpoint (any arch: student, adapted teacher, ...) or a teacher spec",
    )
    add_input_arguments(parser)
    s = parser.add_argument_group("streaming")
    s.add_argument("--streaming", action="store_true", help="decode chunk by chunk through the student's streaming API")
    s.add_argument(
        "--chunk-ms",
        type=float,
        default=None,
        help="audio per push in ms: a multiple of the feature hop (default: the model's native chunk)",
    )
    s.add_argument(
        "--emission-delay-ref",
        metavar="TEACHER_CKPT|forced-align[:CKPT]",
        help="per-token emission delay against a teacher's full-context CTC spikes, or a forced "
        "alignment of the reference text (on this model's full-context log-probs, or CKPT's)",
    )
    d = parser.add_argument_group("search")
    d.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    d.add_argument("--beam", type=int, default=8, help="beam size (--decoder beam)")
    d.add_argument(
        "--beam-backend",
        choices=("auto", "torchaudio", "asrkd"),
        default="auto",
        help="auto: torchaudio's flashlight decoder when flashlight-text is installed, else asrkd's",
    )
    d.add_argument("--lexicon", help="flashlight lexicon (word spelling |), torchaudio backend")
    d.add_argument("--lm", help="KenLM model (ARPA or binary), torchaudio backend")
    d.add_argument("--lm-weight", type=float, default=None, help="LM weight (torchaudio backend; default 2.0)")
    d.add_argument(
        "--word-score", type=float, default=None, help="word insertion score (torchaudio backend; default 0)"
    )
    r = parser.add_argument_group("run")
    r.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio seconds per batch (full-utterance)")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    r.add_argument("--json", metavar="STATS.json", help="write the statistics as JSON")
    r.add_argument("--report", metavar="FILE", help="write every skipped entry as a JSON line")
    r.add_argument("--strict", action="store_true", help="exit 1 when any entry could not be decoded")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from asrkd.data import Rejects
    from asrkd.models.teachers import spec_file

    def fail(msg: str) -> int:
        print(f"asrkd decode: error: {msg}", file=sys.stderr)
        return 2

    if args.chunk_ms is not None and not args.streaming:
        return fail("--chunk-ms needs --streaming")
    if args.chunk_ms is not None and not (math.isfinite(args.chunk_ms) and args.chunk_ms > 0):
        return fail(f"--chunk-ms must be a positive number of milliseconds, got {args.chunk_ms}")
    beam_only = (args.lexicon, args.lm, args.lm_weight, args.word_score)
    if args.decoder == "greedy" and any(x is not None for x in beam_only):
        return fail("--lexicon/--lm/--lm-weight/--word-score need --decoder beam")
    if args.beam < 1:
        return fail(f"--beam must be >= 1, got {args.beam}")
    if not (math.isfinite(args.batch_seconds) and args.batch_seconds > 0):
        return fail(f"--batch-seconds must be > 0, got {args.batch_seconds}")
    rejects = Rejects()
    entries, audio = resolve_inputs(args, rejects)
    outputs = {"--out": args.out, "--json": args.json, "--report": args.report}
    refuse_overwrite(
        outputs,
        {
            "--manifest": args.manifest,
            "--checkpoint": spec_file(args.checkpoint),
            "--lexicon": args.lexicon,
            "--lm": args.lm,
            "--emission-delay-ref": spec_file(args.emission_delay_ref),
        },
    )
    refuse_overwrite_files(outputs, audio, f"an audio file of {args.manifest or 'the input'}")
    options = {k: v for k, v in (("lm_weight", args.lm_weight), ("word_score", args.word_score)) if v is not None}
    if options and args.beam_backend == "asrkd":
        return fail("--lm-weight/--word-score belong to the torchaudio beam search")
    hyps, stats = decode_manifest(
        args.checkpoint,
        entries,
        streaming=args.streaming,
        chunk_ms=args.chunk_ms,
        decoder=args.decoder,
        beam=args.beam,
        lexicon=args.lexicon,
        lm=args.lm,
        beam_backend=args.beam_backend,
        decoder_options=options or None,
        batch_seconds=args.batch_seconds,
        device=args.device,
        threads=args.threads,
        emission_delay_ref=args.emission_delay_ref,
        rejects=rejects,
        progress=not args.no_progress,
    )  # errors of the run itself (a refused checkpoint, bad audio settings): one line from asrkd.cli, exit 1
    if not hyps:
        raise ValueError(f"{args.manifest}: no entries to decode\n{rejects.summary()}")
    emit(args, hyps)
    stats["out"] = str(args.out) if args.out else None
    info = sys.stdout if args.out else sys.stderr  # stdout holds the hypotheses when there is no --out
    print(format_summary(stats), file=info)
    if len(rejects):
        print(rejects.summary(), file=info)
    if args.report:
        rejects.write_report(args.report)
        print(f"report: {args.report}", file=info)
    if args.json:
        write_text(args.json, json.dumps(stats, indent=2) + "\n")
    if args.out:
        print(f"wrote {len(hyps)} hypotheses to {args.out}")
    return 1 if args.strict and stats["failed"] else 0
