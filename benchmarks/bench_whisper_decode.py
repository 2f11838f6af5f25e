"""asrkd's Whisper decoder against ctranslate2's ``Whisper.generate``: CER/WER and speed, one run.

For each model (tiny.en; base when its wheels are installed), on the real-speech out-of-domain
set (``asrkd prepare realspeech``) or ``--manifest``:

- asrkd: :func:`asrkd.eval.transcribe.transcribe_manifest` (log-mel, 30 s padding, encoder,
  batched greedy or beam search), fp32;
- ctranslate2: the same log-mel features fed to ``ctranslate2.models.Whisper.generate`` with the
  same prompt, fp32 (``compute_type="float32"``), batches of the same size;

both on ``--threads`` CPU threads, normalised with :func:`asrkd.data.text.normalize_text` and
scored with asrkd's scorer against the manifest's transcripts. Reports the two CER/WER, the
share of utterances with identical tokens, both real-time factors and their ratio. Writes
``benchmarks/results/whisper_decode_<device>.json``. Measurements, never asserted.

    .venv/bin/python benchmarks/bench_whisper_decode.py [--manifest M.jsonl] [--beam 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from asrkd.atomic import write_text  # noqa: E402
from asrkd.data import load_manifest  # noqa: E402
from asrkd.data.text import normalize_text  # noqa: E402
from asrkd.eval.scoring import TextNormalizer, score  # noqa: E402
from asrkd.eval.transcribe import transcribe_manifest  # noqa: E402
from asrkd.models.teachers.whisper_decoder import CHUNK_SAMPLES, load_whisper  # noqa: E402


def ct2_transcribe(folder: Path, model, waves, beam: int, batch: int, threads: int):
    import ctranslate2

    ct = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=threads)
    tokens, compute = [], 0.0
    for start in range(0, len(waves), batch):
        group = waves[start : start + batch]
        padded = torch.zeros(len(group), CHUNK_SAMPLES)
        for b, w in enumerate(group):
            padded[b, : w.numel()] = w
        t0 = time.perf_counter()
        feats, _ = model.frontend(padded, torch.full((len(group),), CHUNK_SAMPLES))
        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.transpose(1, 2).numpy()))
        out = ct.generate(sv, [model.vocab.prompt()] * len(group), beam_size=beam)
        compute += time.perf_counter() - t0
        tokens += [r.sequences_ids[0] for r in out]
    return tokens, compute


def bench_model(name: str, folder: Path, utts, args) -> dict:
    model = load_whisper(folder)
    refs = {u.id: u.text for u in utts}
    ours = transcribe_manifest(model, utts, beam_size=args.beam, batch_size=args.batch)
    waves = [u.load_audio(16000) for u in utts]
    ct_tokens, ct_compute = ct2_transcribe(folder, model, waves, args.beam, args.batch, args.threads)
    ct_texts = {u.id: normalize_text(model.vocab.decode(t)) for u, t in zip(utts, ct_tokens)}
    norm = TextNormalizer(normalize=True)  # as `asrkd wer --normalize` in the recipe
    a, c = score(refs, ours.texts, normalizer=norm), score(refs, ct_texts, normalizer=norm)
    same = sum(ours.transcripts[u.id].tokens == t for u, t in zip(utts, ct_tokens))
    audio_s = ours.stats["audio_s"]
    row = {
        "model": name,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "utterances": len(utts),
        "audio_s": round(audio_s, 1),
        "asrkd": {"cer": a["cer"], "wer": a["wer"], "rtf": ours.stats["compute_s"] / audio_s},
        "ctranslate2": {"cer": c["cer"], "wer": c["wer"], "rtf": ct_compute / audio_s},
        "identical_tokens": same,
    }
    row["cer_relative_diff"] = abs(row["asrkd"]["cer"] - row["ctranslate2"]["cer"]) / max(
        row["ctranslate2"]["cer"], 1e-9
    )
    row["rtf_ratio_asrkd_over_ct2"] = row["asrkd"]["rtf"] / row["ctranslate2"]["rtf"]
    return row


def default_manifest() -> Path:
    from asrkd.data import realspeech as rs

    out = Path(tempfile.mkdtemp(prefix="asrkd-ood-")) / "ood"
    rs.build_realspeech(out, rs.default_cache_dir(), fetch=False)
    return out / "ood.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", help="transcribed manifest (default: the real-speech OOD set)")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / f"whisper_decode_cpu-{os.cpu_count()}core.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    manifest = Path(args.manifest) if args.manifest else default_manifest()
    utts = [u for u in load_manifest(manifest) if u.has_text]
    from asrkd.models.teachers.whisper import default_whisper_path

    models = [("whisper-tiny.en", default_whisper_path().parent)]
    try:
        from asrkd.models.teachers.whisper_base import whisper_base_dir

        models.append(("whisper-base", whisper_base_dir()))
    except FileNotFoundError as err:
        print(f"note: whisper-base skipped: {err}")
    rows = [bench_model(name, folder, utts, args) for name, folder in models]
    print(f"{len(utts)} utterances from {manifest}; beam {args.beam}, batch {args.batch}, {args.threads} threads")
    print(
        "| model | params | asrkd CER / WER | ctranslate2 CER / WER | identical tokens | RTF asrkd | RTF ct2 | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, c = r["asrkd"], r["ctranslate2"]
        print(
            f"| {r['model']} | {r['params_m']} M | {a['cer']:.2f} / {a['wer']:.2f} | {c['cer']:.2f} / {c['wer']:.2f} | "
            f"{r['identical_tokens']}/{r['utterances']} | {a['rtf']:.3f} | {c['rtf']:.3f} | "
            f"{r['rtf_ratio_asrkd_over_ct2']:.2f}x |"
        )
    result = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "manifest": str(manifest),
        "beam": args.beam,
        "batch": args.batch,
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
    }
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
