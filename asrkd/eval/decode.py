"""Decoding: an acoustic model over a manifest, full-utterance or streaming, into hypotheses.

:func:`decode_manifest` is what ``asrkd decode`` and the recipes call: any
:class:`~asrkd.models.acoustic.AcousticModel` (an asrkd checkpoint of any arch, a teacher spec,
a loaded model) decodes every manifest entry, in batches of full utterances or one live stream
at a time, with greedy or beam search (:mod:`asrkd.eval.search`), and reports the real-time
factor, the streaming latency and, on request, the per-token emission delay
(:mod:`asrkd.eval.latency`). :func:`write_hypotheses` writes Kaldi-style ``utt-id words`` lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from asrkd.atomic import atomic_write
from asrkd.data.audio import SAMPLE_RATE
from asrkd.data.sampler import duration_batches
from asrkd.eval.latency import DelayMeter
from asrkd.models.acoustic import AcousticModel, load_acoustic_model

__all__ = ["decode_manifest", "format_summary", "write_hypotheses"]


def decode_manifest(
    checkpoint_or_model: str | os.PathLike | AcousticModel,
    manifest: str | os.PathLike | Sequence[Any],
    *,
    streaming: bool = False,
    chunk_ms: float | None = None,
    decoder: str | Any = "greedy",
    beam: int = 8,
    lexicon: str | os.PathLike | None = None,
    lm: str | os.PathLike | None = None,
    beam_backend: str = "auto",
    decoder_options: Mapping[str, Any] | None = None,
    batch_seconds: float = 60.0,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    emission_delay_ref: str | os.PathLike | AcousticModel | None = None,
    rejects: Any = None,
    progress: bool = False,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Decode every entry of a manifest.

    Args:
        checkpoint_or_model: an asrkd checkpoint path (any arch: students, adapted
            teachers, ...), a teacher spec, or an :class:`AcousticModel`.
        manifest: a manifest JSONL path or a list of :class:`asrkd.data.Utterance`.
        streaming: run the student chunk by chunk through its stateful API (one utterance
            at a time, as a live stream) instead of full utterances in batches.
        chunk_ms: audio per streaming push (default: the model's native chunk,
            ``chunk_frames × hop``); any positive multiple of the feature hop. It changes
            when logits come out (the latency), never their values.
        decoder: ``"greedy"``, ``"beam"``, or an object with ``decode(log_probs, lengths)``.
        beam, lexicon, lm, beam_backend, decoder_options: for ``"beam"`` (see
            :func:`asrkd.eval.search.build_decoder`; ``beam_backend`` is its ``backend``).
        batch_seconds: full-utterance mode: padded audio seconds per batch.
        device: ``"cpu"`` or ``"cuda"``.
        threads: ``torch.set_num_threads`` for the run (None: leave as is).
        emission_delay_ref: per-token emission delay against a reference: a teacher
            checkpoint/spec (its full-context CTC spikes), ``"forced-align"`` (the
            reference text forced-aligned on this model's own full-context log-probs) or
            ``"forced-align:CKPT"`` (on another model's). None: not measured.
        rejects: an :class:`asrkd.data.Rejects` to record skipped entries in (one is made
            when None; its counts end up in the stats either way).
        progress: show a progress bar (stderr).

    Returns:
        ``(hyps, stats)``: ``hyps`` maps every manifest id, in manifest order (ids of lines
        the manifest reader rejected come last), to its text (``""`` for an entry that could
        not be decoded: it is counted and listed in ``stats``); ``stats`` is described in
        ``docs/decoding.md``.
    """
    from asrkd.data import Rejects

    wall0 = time.perf_counter()
    with _torch_threads(threads):
        device = _device(device)
        model = load_acoustic_model(checkpoint_or_model, device)
        rejects = Rejects() if rejects is None else rejects
        utts, skipped_ids, manifest_path = _read_entries(manifest, rejects)
        chunk = model.chunk_samples(chunk_ms) if streaming else None  # validates the model and the chunk
        search, search_info = _search(
            decoder, model, beam=beam, lexicon=lexicon, lm=lm, backend=beam_backend, options=decoder_options
        )
        meter = DelayMeter(emission_delay_ref, model, device) if emission_delay_ref is not None else None
        run = _Run(model, search, meter, rejects, device)
        run.decode_all(utts, chunk, batch_seconds, progress)
        order = [u.id for u in utts] + skipped_ids
        hyps = {uid: run.texts.get(uid, "") for uid in order}
        stats = _stats(
            run,
            model,
            hyps,
            run.failed + skipped_ids,
            manifest_path,
            streaming,
            chunk,
            search_info,
            lexicon=lexicon,
            lm=lm,
            beam=beam,
            device=device,
        )
        stats["wall_s"] = time.perf_counter() - wall0
        return hyps, stats


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here")
    return device


def _read_entries(manifest, rejects) -> tuple[list, list[str], str | None]:
    """The utterances to decode, the ids of entries the manifest reader had to skip but whose id
    is known (they still get a line), and the manifest path (None for a list)."""
    from asrkd.data import load_manifest

    if not isinstance(manifest, (str, os.PathLike)):
        return list(manifest), [], None
    manifest_path = str(Path(manifest))  # how load_manifest names its lines ("PATH:LINE")
    before = len(rejects)
    utts = load_manifest(manifest, rejects, audio_only=True)  # an empty transcript does not stop decoding
    skipped, known = [], {u.id for u in utts}
    for r in rejects.records[before:]:
        if r.kind == "duplicate_id" or r.id in known or r.id.startswith(f"{manifest_path}:"):
            continue
        if r.id and not any(c.isspace() for c in r.id):
            skipped.append(r.id)
            known.add(r.id)
    return utts, skipped, manifest_path


def _search(decoder, model: AcousticModel, *, beam, lexicon, lm, backend, options) -> tuple[Any, dict[str, Any]]:
    """The search object and what the stats say of it (``decoder``, ``beam_backend``)."""
    from asrkd.eval.search import beam_backend, build_decoder

    if not isinstance(decoder, str):
        return decoder, {"decoder": type(decoder).__name__, "beam_backend": None}
    if decoder not in ("greedy", "beam"):
        raise ValueError(f"unknown decoder {decoder!r}; expected 'greedy' or 'beam'")
    if decoder == "greedy":
        return build_decoder("greedy", blank=model.blank_id), {"decoder": "greedy", "beam_backend": None}
    backend = beam_backend(backend, model.vocab)
    search = build_decoder(
        "beam",
        model.vocab,
        blank=model.blank_id,
        beam=beam,
        lexicon=lexicon,
        lm=lm,
        backend=backend,
        **dict(options or {}),
    )
    return search, {"decoder": "beam", "beam_backend": backend}


@dataclass
class _Run:
    """One decode run: the model and search, and what the run has counted so far."""

    model: AcousticModel
    search: Any
    meter: DelayMeter | None
    rejects: Any
    device: torch.device
    texts: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    audio_s: float = 0.0
    compute_s: float = 0.0
    frames_out: int = 0
    observed_latency_ms: float = 0.0

    def decode_all(self, utts: Sequence[Any], chunk: int | None, batch_seconds: float, progress: bool) -> None:
        from tqdm import tqdm

        if chunk is not None:
            groups = [[u] for u in utts]
        else:
            groups = [[utts[i] for i in b] for b in duration_batches([u.duration for u in utts], batch_seconds)]
        with tqdm(total=len(utts), desc="decode", unit="utt", disable=not progress, file=sys.stderr) as bar:
            for group in groups:
                items = [(u, w) for u in group if (w := self.load(u)) is not None]
                if items and chunk is not None:
                    self.decode_stream(*items[0], chunk)
                elif items:
                    self.decode_batch(items)
                bar.update(len(group))
                if self.compute_s > 0 and self.audio_s > 0:
                    bar.set_postfix(rtf=f"{self.compute_s / self.audio_s:.4f}", refresh=False)

    def load(self, u) -> torch.Tensor | None:
        """The entry's audio, or None (counted) when it cannot be read or is too short."""
        from asrkd.data.audio import AudioError

        try:
            wave = u.load_audio(SAMPLE_RATE)
        except AudioError as err:
            self.rejects.add(u.id, err.kind, f"{u.id}: {err.reason}")
            self.failed.append(u.id)
            return None
        need = self.model.min_samples
        if wave.numel() < need:
            self.rejects.add(
                u.id, "too_short", f"{u.id}: {wave.numel()} samples give the model no output frame (needs >= {need})"
            )
            self.failed.append(u.id)
            return None
        return wave

    def decode_stream(self, u, wave: torch.Tensor, chunk: int) -> None:
        with self._timed():
            lp, available = self.model.stream_log_probs(wave, chunk)
            ids = self.search.decode(lp[None], [lp.size(0)])[0]
        self.texts[u.id] = self.model.text(ids)
        self.frames_out += lp.size(0)
        for j, avail in enumerate(available):
            self.observed_latency_ms = max(self.observed_latency_ms, avail - j * 1000.0 / self.model.frame_rate)
        self.audio_s += wave.numel() / SAMPLE_RATE
        if self.meter is not None:
            self.meter.add(wave, u.text, lp, ids, available)

    def decode_batch(self, items: Sequence[tuple[Any, torch.Tensor]]) -> None:
        lengths = torch.tensor([w.numel() for _, w in items])
        waves = torch.zeros(len(items), int(lengths.max()))
        for b, (_, w) in enumerate(items):
            waves[b, : w.numel()] = w
        with self._timed():
            lp, out_lengths = self.model.log_probs(waves, lengths)
            lp = lp.cpu()
            hyp_ids = self.search.decode(lp, out_lengths.cpu())
        for b, (u, w) in enumerate(items):
            n = int(out_lengths[b])
            self.texts[u.id] = self.model.text(hyp_ids[b])
            self.frames_out += n
            self.audio_s += w.numel() / SAMPLE_RATE
            if self.meter is not None:
                self.meter.add(w, u.text, lp[b, :n], hyp_ids[b], None, full_lp=lp[b, :n])

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        """Adds the block's compute time (CUDA work included) to ``compute_s``."""
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.compute_s += time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(
    run: _Run,
    model: AcousticModel,
    hyps,
    failed_ids,
    manifest_path,
    streaming: bool,
    chunk: int | None,
    search_info: Mapping[str, Any],
    *,
    lexicon,
    lm,
    beam,
    device,
) -> dict[str, Any]:
    beam_search = search_info["decoder"] == "beam"
    stats: dict[str, Any] = {
        "checkpoint": model.spec,
        "arch": model.arch,
        "input": model.input_type,
        "params": model.parameters_count(),
        "frame_rate": model.frame_rate,
        "manifest": manifest_path,
        "utterances": len(hyps),
        "decoded": len(run.texts),
        "failed": len(failed_ids),
        "failed_ids": failed_ids,
        "rejects": run.rejects.counts(),
        "audio_s": run.audio_s,
        "compute_s": run.compute_s,
        "rtf": run.compute_s / run.audio_s if run.audio_s > 0 else None,
        "rtf_includes": "log-mel + CMVN (or the model's own front-end), acoustic model, CTC search; "
        "not audio file reading or the emission-delay reference",
        "output_frames": run.frames_out,
        "streaming": bool(streaming),
        "decoder": search_info["decoder"],
        "beam": beam if beam_search else None,
        "beam_backend": search_info["beam_backend"] if beam_search else None,
        "lexicon": str(lexicon) if lexicon is not None else None,
        "lm": str(lm) if lm is not None else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if model.can_stream:
        stats["native_chunk_ms"] = model.native_chunk_ms()
        stats["model_latency_ms"] = float(model.model.algorithmic_latency_ms)
    if streaming:
        stats["chunk_ms"] = chunk * 1000.0 / SAMPLE_RATE
        stats["algorithmic_latency_ms"] = model.streaming_latency_ms(stats["chunk_ms"])
        stats["observed_latency_ms"] = run.observed_latency_ms
    stats["emission_delay"] = run.meter.result() if run.meter is not None else None
    return stats


def write_hypotheses(path: str | os.PathLike, hyps: Mapping[str, str]) -> None:
    """Write ``utt-id word word ...`` lines (an id alone for an empty hypothesis),
    atomically (temporary file + rename)."""

    def write(f) -> None:
        for uid, text in hyps.items():
            words = " ".join(text.split())
            f.write(f"{uid} {words}\n" if words else f"{uid}\n")

    atomic_write(path, write, mode="w")


def format_summary(stats: Mapping[str, Any]) -> str:
    """The lines ``asrkd decode`` prints at the end."""
    lines = []
    rtf = "n/a" if stats["rtf"] is None else f"{stats['rtf']:.4f}"
    threads = stats["threads"]
    lines.append(
        f"decoded {stats['decoded']} of {stats['utterances']} utterances ({stats['audio_s']:.1f} s of audio) in "
        f"{stats['wall_s']:.1f} s wall; RTF {rtf} (compute {stats['compute_s']:.2f} s: features + model + "
        f"{stats['decoder']} search; {stats['device']}, {threads} thread{'s' if threads != 1 else ''})"
    )
    if stats["streaming"]:
        extra = stats["algorithmic_latency_ms"] - stats["model_latency_ms"]
        lines.append(
            f"streaming: chunk {stats['chunk_ms']:g} ms (native {stats['native_chunk_ms']:g} ms); algorithmic latency "
            f"{stats['algorithmic_latency_ms']:g} ms (model {stats['model_latency_ms']:g} ms + {extra:g} ms window and "
            f"chunk buffering; longest observed {stats['observed_latency_ms']:.0f} ms)"
        )
    d = stats.get("emission_delay")
    if d is not None:
        if d["tokens"]:
            lines.append(
                f"emission delay vs {d['reference']}: mean {d['mean_ms']:.1f} ms, median {d['median_ms']:.1f} ms, "
                f"p90 {d['p90_ms']:.1f} ms over {d['tokens']} matched tokens ({d['utterances']} utterances)"
            )
            if "available" in d:
                a = d["available"]
                lines.append(
                    f"  token output (streaming) vs reference spike: mean {a['mean_ms']:.1f} ms, "
                    f"median {a['median_ms']:.1f} ms, p90 {a['p90_ms']:.1f} ms"
                )
        else:
            lines.append(f"emission delay vs {d['reference']}: no matched tokens")
        if d["skipped"]:
            lines.append("  not measured: " + ", ".join(f"{k} {v}" for k, v in d["skipped"].items()))
    if stats["failed"]:
        ids = stats["failed_ids"]
        lines.append(
            f"failed: {stats['failed']} (written as empty hypotheses): {', '.join(ids[:10])}"
            + (", ..." if len(ids) > 10 else "")
        )
    return "\n".join(lines)
