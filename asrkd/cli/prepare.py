"""``asrkd prepare {kaldi|librispeech|folder} SRC OUT.jsonl``: import a corpus into a manifest."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

KALDI_FILES = ("wav.scp", "text", "segments", "utt2spk", "spk2utt", "reco2dur", "utt2dur", "spk2gender")
HELP = "import a Kaldi data dir, a LibriSpeech tree or a folder of audio (+ .txt) into a JSONL manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("layout", choices=["kaldi", "librispeech", "folder"], help="source layout")
    p.add_argument("src", type=Path, help="Kaldi data dir / LibriSpeech folder / folder of audio files")
    p.add_argument("out", type=Path, help="manifest to write (JSONL)")
    p.add_argument(
        "--report", type=Path, default=None, help="write every rejected item as a JSONL line {id, kind, reason}"
    )
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any item was rejected")
    p.add_argument(
        "--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel audio checks (default: min(8, CPUs))"
    )
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="check transcripts against this saved tokenizer (default: English characters a-z ')",
    )
    vocab.add_argument("--no-vocab-check", action="store_true", help="accept any characters after normalisation")
    p.add_argument(
        "--subsampling", type=int, default=4, help="student subsampling factor for the CTC length check (default 4)"
    )
    p.add_argument("--hop-ms", type=float, default=10.0, help="feature hop for the CTC length check (default 10)")
    p.add_argument(
        "--pipe-dir",
        type=Path,
        default=None,
        help="kaldi: where audio from piped wav.scp entries is stored (default: OUT stem + '.audio/')",
    )
    p.add_argument(
        "--allow-commands",
        action="store_true",
        help="kaldi: run piped wav.scp entries (`cmd ... |`) with bash -c; without it they are rejected "
        "as unsupported. A command can do anything your user can: only for data dirs you trust",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _refuse_outputs_over_inputs(args: argparse.Namespace) -> None:
    """The manifest and the report are distinct, and neither replaces a file of the source
    (``prepare kaldi data/train data/train/text`` would destroy the transcripts it reads), even
    one the import does not read (``spk2utt``). Files listed outside the source (``wav.scp``
    audio elsewhere) and the piped recordings' files are checked by the importer (``outputs``)."""
    from asrkd.atomic import refuse_overwrite

    outputs = {"OUT": args.out, "--report": args.report}
    refuse_overwrite(outputs, {"--tokenizer": args.tokenizer})
    src = args.src.resolve()
    for name, path in outputs.items():
        if path is not None and path.exists() and path.resolve().is_relative_to(src) and _read_by_import(path):
            raise ValueError(
                f"{name} {path} is a file of the source {args.src}: writing it would destroy an input; "
                "choose an output path outside it"
            )


def _read_by_import(path: Path) -> bool:
    from asrkd.data.importers import AUDIO_SUFFIXES

    return path.name in KALDI_FILES or path.suffix.lower() in (*AUDIO_SUFFIXES, ".txt")


def run(args: argparse.Namespace) -> int:
    from asrkd.data.importers import IMPORTERS, CheckOptions
    from asrkd.data.manifest import manifest_stats, save_manifest
    from asrkd.data.rejects import Rejects
    from asrkd.data.tokenizer import CharTokenizer, load_tokenizer

    t0 = time.perf_counter()
    _refuse_outputs_over_inputs(args)
    if args.no_vocab_check:
        tokenizer = None
    elif args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        tokenizer = CharTokenizer.english()
    options = CheckOptions(tokenizer=tokenizer, subsampling=args.subsampling, hop_ms=args.hop_ms)
    rejects = Rejects()
    # the importer refuses these over any file the source lists, before it runs or writes anything
    kwargs = {"jobs": args.jobs, "progress": not args.quiet, "outputs": {"OUT": args.out, "--report": args.report}}
    if args.layout == "kaldi":
        kwargs["pipe_dir"] = args.pipe_dir or args.out.parent / (args.out.name.split(".")[0] + ".audio")
        kwargs["allow_commands"] = args.allow_commands
    utts = IMPORTERS[args.layout](args.src, rejects, options, **kwargs)  # PrepareError: one line from asrkd.cli
    save_manifest(args.out, utts)  # after the import: a failed one leaves an old manifest as it was
    if args.report is not None:
        rejects.write_report(args.report)
    s = manifest_stats(utts)
    print(
        f"wrote {s['utterances']} utterances ({s['hours']:.2f} h; {s['labelled']} labelled, "
        f"{s['unlabelled']} unlabelled; {s['speakers']} speakers) to {args.out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    print(rejects.summary())
    if args.report is not None:
        print(f"report: {args.report}")
    return 1 if (args.strict and len(rejects)) else 0
