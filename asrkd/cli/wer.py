"""``asrkd wer``: WER/CER of hypotheses against references (:func:`asrkd.eval.scoring.score`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from asrkd.atomic import atomic_write, refuse_overwrite
from asrkd.eval.scoring import METHODS, TextNormalizer, format_report, read_texts, score, write_details

HELP = "WER/CER of hypotheses against references, counted as NIST sclite does (details, JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, help="references: Kaldi text (utt-id words...) or manifest JSONL")
    parser.add_argument("--hyp", required=True, help="hypotheses: Kaldi text or manifest JSONL")
    parser.add_argument("--json", metavar="OUT.json", help="write the scores as JSON")
    parser.add_argument("--details", metavar="OUT.txt", help="write per-utterance alignments (Kaldi per_utt layout)")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="sclite",
        help="alignment: sclite (default; costs sub 4, ins/del 3, equals NIST sclite) or levenshtein "
        "(unit costs via jiwer, as Kaldi compute-wer)",
    )
    g = parser.add_argument_group("text normalisation (applied to both sides; whitespace is always normalised)")
    g.add_argument(
        "--normalize",
        action="store_true",
        help="asrkd's transcript normalisation (the tokenizers' and the trainer's dev WER: lower case, "
        "numbers as words, accents and punctuation removed); the other options apply after it",
    )
    g.add_argument("--lowercase", action="store_true", help="case-fold both sides")
    g.add_argument("--strip-punct", action="store_true", help="punctuation becomes spaces; apostrophes are deleted")
    g.add_argument("--keep-apostrophes", action="store_true", help="with --strip-punct: keep apostrophes (don't)")
    g.add_argument("--unicode", choices=("NFC", "NFKC"), help="Unicode normal form to apply first")
    g.add_argument(
        "--ignore", metavar="WORD", action="append", default=[], help="drop this word from both sides (repeatable)"
    )


def run(args: argparse.Namespace) -> int:
    if args.keep_apostrophes and not args.strip_punct:
        print("asrkd wer: error: --keep-apostrophes only makes sense with --strip-punct", file=sys.stderr)
        return 2
    normalizer = TextNormalizer(
        normalize=args.normalize,
        lowercase=args.lowercase,
        strip_punct=args.strip_punct,
        keep_apostrophes=args.keep_apostrophes,
        unicode=args.unicode,
        ignore=frozenset(args.ignore),
    )
    # Errors (unreadable or degenerate input, an output that is an input) are raised for
    # asrkd.cli to report as one line, before anything is written.
    refuse_overwrite({"--json": args.json, "--details": args.details}, {"--ref": args.ref, "--hyp": args.hyp})
    refs = read_texts(args.ref)
    if not refs:
        raise ValueError(f"no reference utterances in {args.ref}")
    hyps = read_texts(args.hyp)
    result = score(refs, hyps, normalizer=normalizer, method=args.method, details=bool(args.details))
    _check_scorable(result, args.ref)
    if args.details:
        write_details(args.details, result)
    if args.json:
        out = {k: v for k, v in result.items() if k != "utts"}
        out["ref"], out["hyp"] = str(args.ref), str(args.hyp)
        atomic_write(args.json, lambda f: f.write(json.dumps(out, indent=2) + "\n"), mode="w")
    for warning in result["warnings"]:
        print(f"asrkd wer: warning: {warning}", file=sys.stderr)
    print(format_report(result))
    return 0


def _check_scorable(result: Mapping, ref_path: str | Path) -> None:
    """Refuse a WER over no reference words: 0 % or 100 % there says nothing about the hypotheses."""
    if result["utterances"] == 0:
        raise ValueError(
            f"no labelled reference utterances in {ref_path}: all {result['unlabelled_ref']} entries lack 'text'"
        )
    if result["words"] == 0:
        raise ValueError(
            f"no reference words in {ref_path}: all {result['utterances']} transcripts are empty"
            + (" after normalisation" if result["normalization"] != TextNormalizer().to_dict() else "")
        )
