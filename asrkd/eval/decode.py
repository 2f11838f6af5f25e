"""``asrkd decode``: any asrkd checkpoint over a manifest, full-utterance or streaming.

::

    asrkd decode --checkpoint exp/mini/student_kd.pt --manifest data/test.jsonl --out hyp.txt \\
        [--streaming [--chunk-ms 240]] [--decoder greedy|beam --beam 8 --lexicon L --lm LM] \\
        [--emission-delay-ref exp/mini/teacher.pt | forced-align] [--json stats.json]

writes Kaldi-style lines ``utt-id word word ...``, one per manifest entry, and prints the
real-time factor (and, streaming, the latency and the per-token emission delay).

Library side:

- :class:`Recognizer`: an acoustic CTC model with its front-end and vocabulary.
  Log-mel models (the students, anything trained by asrkd from features) run behind their
  checkpoint's :class:`~asrkd.data.features.FeaturePipeline`; waveform-input models (an
  adapted ``whisper_ctc`` teacher, any :func:`asrkd.models.teachers.load_teacher` spec) take
  waves. ``log_probs`` (full context, batched) and ``stream_log_probs`` (chunk by chunk
  through the students' stateful API).
- :func:`load_recognizer` (checkpoint path or teacher spec), :func:`decode_manifest`
  (what the CLI and the recipes call), :func:`write_hypotheses`.
- Emission delay: :func:`token_emissions`, :func:`match_emissions`, :func:`delay_summary`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from asrkd.atomic import atomic_write, refuse_overwrite, refuse_overwrite_files, write_text
from asrkd.data.sampler import duration_batches

HELP = "decode a manifest with an asrkd checkpoint (full-utterance or streaming) into Kaldi-style hypotheses"

__all__ = [
    "Emission",
    "Recognizer",
    "decode_manifest",
    "delay_summary",
    "load_recognizer",
    "match_emissions",
    "token_emissions",
    "write_hypotheses",
]

SAMPLE_RATE = 16000
# Symbols that other vocabularies use for the word boundary (wav2vec2 "|", SentencePiece "▁").
_SEPARATORS = ("|", "\u2581", "<space>", " ")
# Audio shorter than this gives no frame to any model here (one 25 ms analysis window).
_MIN_WAVE_SAMPLES = 400


def _canon(symbol: str) -> str:
    """A vocabulary symbol in a form comparable across models (separator -> " ", case-folded)."""
    if symbol in _SEPARATORS:
        return " "
    return symbol.replace("\u2581", " ").casefold()


# --------------------------------------------------------------------------- the model side


class Recognizer:
    """An acoustic CTC model ready to decode audio.

    Args:
        model: for ``frontend`` given, a log-mel model ``forward(feats (B, T, F), lengths
            (B,)) -> (logits (B, T', V), out_lengths (B,))``; without, a waveform model
            ``forward(waves (B, N) 16 kHz, lengths (B,)) -> (logits, out_lengths)``.
        tokens: id -> symbol.
        blank_id: the CTC blank.
        frame_rate: output frames per second.
        frontend: the model's eval-mode feature pipeline (log-mel + CMVN), or None.
        tokenizer: the asrkd tokenizer (turns ids into text, text into ids); None: ids are
            turned into text from ``tokens`` (separators ``|``/``▁`` become spaces,
            ``<...>`` specials are dropped).
        name: what it was loaded from (reports).
        arch: the checkpoint's arch, if any.

    A model with ``init_state``/``stream_step``/``stream_flush`` (the students) and a
    ``frontend`` can also decode chunk by chunk (:meth:`stream_log_probs`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tokens: Sequence[str],
        blank_id: int,
        frame_rate: float,
        frontend: nn.Module | None = None,
        tokenizer: Any = None,
        name: str = "",
        arch: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.frontend = frontend.eval() if frontend is not None else None
        self.tokens = [str(t) for t in tokens]
        if not 0 <= blank_id < len(self.tokens):
            raise ValueError(f"{name or 'model'}: blank id {blank_id} is outside the {len(self.tokens)} tokens")
        vocab = getattr(model, "vocab_size", None)
        if isinstance(vocab, int) and vocab != len(self.tokens):
            raise ValueError(
                f"{name or 'model'}: the model has {vocab} outputs but the vocabulary {len(self.tokens)} symbols"
            )
        self.blank_id = int(blank_id)
        self.frame_rate = float(frame_rate)
        self.tokenizer = tokenizer
        self.name = name
        self.arch = arch
        self._canon = [_canon(t) for t in self.tokens]

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_student(cls, model: nn.Module, tokenizer: Any, features: Any = None, cmvn: Any = None,
                     name: str = "") -> Recognizer:
        """An in-memory log-mel model (e.g. a student being trained) with its tokenizer, a
        ``FeatureConfig`` (or its dict, or a ready ``FeaturePipeline``) and a ``GlobalCMVN``
        (or its dict, or None). The model is put in eval mode (a trainer puts it back with
        ``model.train()``)."""
        from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN

        if isinstance(features, FeaturePipeline):
            frontend = features
        else:
            config = features if isinstance(features, FeatureConfig) else FeatureConfig.from_dict(features or {})
            if isinstance(cmvn, Mapping):
                cmvn = GlobalCMVN.from_dict(cmvn)
            frontend = FeaturePipeline(config, cmvn)
        return cls(model, tokens=tokenizer.tokens, blank_id=int(getattr(tokenizer, "blank_id", 0)),
                   frame_rate=float(model.frame_rate), frontend=frontend, tokenizer=tokenizer, name=name)

    # -- properties ------------------------------------------------------------------------
    @property
    def input_type(self) -> str:
        return "wave" if self.frontend is None else "features"

    @property
    def can_stream(self) -> bool:
        return self.frontend is not None and all(
            hasattr(self.model, a) for a in ("init_state", "stream_step", "stream_flush", "chunk_frames")
        )

    @property
    def device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def to(self, device: str | torch.device) -> Recognizer:
        self.model.to(device)
        if self.frontend is not None:
            self.frontend.to(device)
        return self

    @property
    def min_samples(self) -> int:
        """Fewest samples that give the model at least one output frame (as far as known)."""
        if self.frontend is None:
            return _MIN_WAVE_SAMPLES
        cfg = self.frontend.config
        sub = int(getattr(self.model, "subsampling", 1))
        return (sub - 1) * cfg.hop_length + cfg.n_fft

    # -- text ------------------------------------------------------------------------------
    def text(self, ids: Iterable[int]) -> str:
        """Token ids (collapsed, blanks removed) -> normalised text."""
        ids = [int(i) for i in ids]
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        parts = []
        for i in ids:
            sym = self.tokens[i]
            if i == self.blank_id or (sym.startswith("<") and sym.endswith(">") and sym not in _SEPARATORS):
                continue
            parts.append(" " if sym in _SEPARATORS else sym.replace("\u2581", " "))
        return " ".join("".join(parts).split())

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (for forced alignment); ``ValueError`` naming the characters
        it cannot spell."""
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text))
        from asrkd.data.tokenizer import normalize_text

        index: dict[str, int] = {}
        for i, c in enumerate(self._canon):
            if i != self.blank_id and len(c) == 1:
                index.setdefault(c, i)
        norm = normalize_text(text)
        missing = sorted({c for c in norm if c.casefold() not in index})
        if missing:
            raise ValueError(f"characters outside the vocabulary of {self.name or 'the model'}: {''.join(missing)!r}")
        return [index[c.casefold()] for c in norm]

    def symbols(self, ids: Iterable[int]) -> list[str]:
        """Canonical symbols of ids (separators as " ", case-folded): comparable across models."""
        return [self._canon[int(i)] for i in ids]

    # -- acoustic model --------------------------------------------------------------------
    @torch.inference_mode()
    def log_probs(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-context CTC log-probabilities.

        Args:
            waves: (B, N) float 16 kHz, padded.
            lengths: (B,) valid samples.

        Returns:
            ``(log_probs (B, T, V) float32, out_lengths (B,) int64)`` on the model's device.
        """
        device = self.device
        waves, lengths = waves.to(device), lengths.to(device)
        if self.frontend is not None:
            feats, feat_lengths = self.frontend(waves, lengths)
            logits, out_lengths = self.model(feats, feat_lengths)
        else:
            logits, out_lengths = self.model(waves, lengths)
        # fp32 normalisation whatever the model's dtype.
        return torch.log_softmax(logits.float(), dim=-1), out_lengths.long()

    def native_chunk_ms(self) -> float:
        """Audio of one encoder segment: ``chunk_frames`` feature frames."""
        self._need_streaming()
        return self.model.chunk_frames * self.frontend.config.hop_ms

    def _need_streaming(self) -> None:
        if not self.can_stream:
            raise ValueError(
                f"{self.name or 'this model'} cannot stream: streaming needs a log-mel model with the students' "
                "stateful API (init_state / stream_step / stream_flush); decode it without --streaming"
            )

    def chunk_samples(self, chunk_ms: float | None) -> int:
        """Samples per push for ``chunk_ms`` (None: the native chunk); a positive multiple
        of the feature hop (``ValueError`` otherwise)."""
        self._need_streaming()
        cfg = self.frontend.config
        if chunk_ms is None:
            return self.model.chunk_frames * cfg.hop_length
        hops = chunk_ms / cfg.hop_ms
        if chunk_ms <= 0 or abs(hops - round(hops)) > 1e-6:
            raise ValueError(
                f"--chunk-ms {chunk_ms:g} must be a positive multiple of the feature hop ({cfg.hop_ms:g} ms); "
                f"the model's native chunk is {self.native_chunk_ms():g} ms"
            )
        return int(round(hops)) * cfg.hop_length

    def first_push_samples(self) -> int:
        """Samples the first segment and its look-ahead need: the first push holds exactly
        these, so that pushes end where segments become complete."""
        self._need_streaming()
        cfg = self.frontend.config
        frames = self.model.chunk_frames + self.model.lookahead_frames
        return (frames - 1) * cfg.hop_length + cfg.n_fft

    def streaming_latency_ms(self, chunk_ms: float | None = None) -> float:
        """Longest wait of any audio sample for its logit when audio arrives in pushes of
        ``chunk_ms``: the model's latency (segment + look-ahead), the analysis window's reach
        past its hop, and the buffering of pushes that do not line up with segments
        (``chunk - gcd(chunk, native chunk)``)."""
        from asrkd.models.students import AudioStreamer

        c = self.chunk_samples(chunk_ms)
        n = self.chunk_samples(None)
        base = AudioStreamer(self.model, self.frontend).latency_ms
        return base + (c - math.gcd(c, n)) * 1000.0 / self.frontend.config.sample_rate

    @torch.inference_mode()
    def stream_log_probs(
        self, wave: torch.Tensor, chunk_samples: int | None = None
    ) -> tuple[torch.Tensor, list[float]]:
        """Stream one utterance through the front-end and the student chunk by chunk.

        The first push holds :meth:`first_push_samples` samples, later pushes
        ``chunk_samples`` (default: the native chunk); features are computed incrementally
        (:class:`asrkd.models.students.AudioStreamer`).

        Args:
            wave: (N,) float 16 kHz.

        Returns:
            ``(log_probs (T, V) float32, available_ms)``: for every output frame, the audio
            time (ms from the start of the stream) at which it was output, i.e. the end of
            the push that produced it (the end of the audio for frames of the final flush).
        """
        from asrkd.models.students import AudioStreamer

        self._need_streaming()
        if chunk_samples is None:
            chunk_samples = self.chunk_samples(None)
        sr = self.frontend.config.sample_rate
        streamer = AudioStreamer(self.model, self.frontend, batch_size=1)
        wave = wave.reshape(1, -1).to(self.device)
        n = wave.size(1)
        pieces: list[torch.Tensor] = []
        available: list[float] = []
        pos, size = 0, self.first_push_samples()
        while pos < n:
            piece = wave[:, pos : pos + size]
            pos += piece.size(1)
            out = streamer.push(piece)
            pieces.append(out[0])
            available += [pos * 1000.0 / sr] * out.size(1)
            size = chunk_samples
        out = streamer.flush()
        pieces.append(out[0])
        available += [n * 1000.0 / sr] * out.size(1)
        logits = torch.cat(pieces, dim=0)
        return torch.log_softmax(logits.float(), dim=-1), available


def _recognizer_from_state(state: dict[str, Any], name: str) -> Recognizer:
    from asrkd.data.tokenizer import load_tokenizer
    from asrkd.models.teachers.from_checkpoint import FeatureInputCTC, teacher_from_state

    # The teachers' loader is the one place that turns any asrkd checkpoint into a model
    # with its front-end: log-mel models come back wrapped in FeatureInputCTC, waveform
    # models (an adapted whisper_ctc) as they are.
    teacher = teacher_from_state(state, name)
    tokenizer = load_tokenizer(state["tokenizer"])
    inner = teacher.model
    if isinstance(inner, FeatureInputCTC):
        return Recognizer(inner.model, tokens=teacher.vocab, blank_id=teacher.blank_id, frame_rate=teacher.frame_rate,
                          frontend=inner.frontend, tokenizer=tokenizer, name=name, arch=state.get("arch"))
    return Recognizer(teacher, tokens=teacher.vocab, blank_id=teacher.blank_id, frame_rate=teacher.frame_rate,
                      tokenizer=tokenizer, name=name, arch=state.get("arch"))


def load_recognizer(spec: str | os.PathLike | Recognizer | nn.Module, device: str | torch.device = "cpu") -> Recognizer:
    """A :class:`Recognizer` from an asrkd checkpoint (a path, or ``asrkd:PATH``), any
    other :func:`asrkd.models.teachers.load_teacher` spec (``torchaudio:BUNDLE``, ``hf:DIR``, ...),
    a loaded teacher (a waveform module with ``vocab``, ``blank_id``, ``frame_rate``), or a
    Recognizer (returned as is, moved to ``device``)."""
    if isinstance(spec, Recognizer):
        return spec.to(device)
    if isinstance(spec, nn.Module):
        missing = [a for a in ("vocab", "blank_id", "frame_rate") if not hasattr(spec, a)]
        if missing:
            raise TypeError(
                f"a module to decode needs {missing} (a teacher from load_teacher); for a student use "
                "Recognizer.from_student(model, tokenizer, features, cmvn)"
            )
        return Recognizer(spec, tokens=spec.vocab, blank_id=spec.blank_id, frame_rate=spec.frame_rate,
                          name=str(getattr(spec, "spec", "")) or type(spec).__name__).to(device)
    spec = os.fspath(spec)
    path = Path(spec[len("asrkd:"):] if spec.startswith("asrkd:") else spec)
    if spec.startswith("asrkd:") or path.is_file():
        from asrkd.models.checkpoint import load_checkpoint

        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return _recognizer_from_state(load_checkpoint(path), str(path)).to(device)
    if path.suffix in {".pt", ".pth", ".ckpt"}:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from asrkd.models.teachers import load_teacher

    return load_recognizer(load_teacher(spec), device)


# --------------------------------------------------------------------------- emission delay


@dataclass(frozen=True)
class Emission:
    """A token's first frame on its CTC path: ``symbol`` (canonical), ``frame``, ``ms``
    (``frame × 1000 / frame_rate``)."""

    symbol: str
    frame: int
    ms: float


def token_emissions(log_probs: torch.Tensor, ids: Sequence[int], *, blank: int, frame_rate: float,
                    symbols: Sequence[str] | None = None) -> list[Emission]:
    """Where each token of ``ids`` is emitted: the first frame of its span on the best CTC
    path that spells ``ids`` (``torchaudio.functional.forced_align``). For the greedy
    hypothesis that path is the greedy path itself (its spikes); for a reference transcript
    it is the forced alignment.

    Args:
        log_probs: (T, V) log-probabilities of one utterance.
        ids: the token ids (no blanks).
        blank: the blank id.
        frame_rate: frames per second, to turn frames into ms (frame start: ``t × 1000 / rate``).
        symbols: id -> canonical symbol (default: ``str(id)``).

    Raises:
        ValueError: when the frames are too few for the tokens (``T < len(ids) + repeats``).
    """
    import torchaudio.functional as AF

    ids = [int(i) for i in ids]
    if not ids:
        return []
    T = log_probs.size(0)
    repeats = sum(a == b for a, b in zip(ids, ids[1:]))
    if T < len(ids) + repeats:
        raise ValueError(f"{T} frames cannot hold {len(ids)} tokens with {repeats} adjacent repeats")
    targets = torch.tensor([ids], dtype=torch.int32)
    path, scores = AF.forced_align(log_probs.detach().float().cpu()[None], targets, blank=blank)
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=blank)
    sym = (lambda i: symbols[i]) if symbols is not None else str
    return [Emission(sym(s.token), int(s.start), s.start * 1000.0 / frame_rate) for s in spans]


def match_emissions(hyp: Sequence[Emission], ref: Sequence[Emission]) -> list[tuple[Emission, Emission]]:
    """Pairs of matched tokens: the two symbol sequences are aligned with a minimum-edit
    (Levenshtein) alignment and the pairs the alignment marks correct (same symbol) are
    returned in order; substituted, inserted and deleted tokens are left out."""
    from asrkd.eval.scoring import align

    out = []
    i = j = 0
    for op, r, h in align([e.symbol for e in ref], [e.symbol for e in hyp], method="levenshtein"):
        if op == "C":
            out.append((hyp[j], ref[i]))
        if r is not None:
            i += 1
        if h is not None:
            j += 1
    return out


def delay_summary(delays_ms: Sequence[float]) -> dict[str, Any]:
    """``{"tokens", "mean_ms", "median_ms", "p90_ms", "min_ms", "max_ms"}`` (None when empty);
    percentiles interpolate linearly (``numpy.percentile``)."""
    import numpy as np

    if len(delays_ms) == 0:
        return {"tokens": 0, "mean_ms": None, "median_ms": None, "p90_ms": None, "min_ms": None, "max_ms": None}
    d = np.asarray(delays_ms, dtype=np.float64)
    return {
        "tokens": int(d.size),
        "mean_ms": float(d.mean()),
        "median_ms": float(np.median(d)),
        "p90_ms": float(np.percentile(d, 90)),
        "min_ms": float(d.min()),
        "max_ms": float(d.max()),
    }


class _DelayMeter:
    """Emission delay of hypotheses against a reference, utterance by utterance."""

    def __init__(self, ref: str | os.PathLike | Recognizer | nn.Module, rec: Recognizer, device) -> None:
        self.rec = rec
        self.forced = False
        ref_model: Recognizer = rec
        if isinstance(ref, (str, os.PathLike)):
            s = os.fspath(ref)
            if s == "forced-align":
                self.forced = True
            elif s.startswith("forced-align:"):
                self.forced = True
                ref_model = load_recognizer(s[len("forced-align:"):], device)
            else:
                ref_model = load_recognizer(s, device)
        else:
            ref_model = load_recognizer(ref, device)
        self.ref = ref_model
        self.description = (
            f"forced alignment of the reference text on {'its own' if ref_model is rec else ref_model.name} "
            "full-context log-probs" if self.forced else f"CTC spikes of {ref_model.name} (full context, greedy)"
        )
        self.delays: list[float] = []
        self.available: list[float] = []
        self.utterances = 0
        self.hyp_tokens = 0
        self.ref_tokens = 0
        self.skipped: Counter[str] = Counter()

    def add(self, wave: torch.Tensor, text: str | None, hyp_lp: torch.Tensor, hyp_ids: Sequence[int],
            available_ms: Sequence[float] | None, full_lp: torch.Tensor | None = None) -> None:
        """``hyp_lp`` (T, V): the log-probs the hypothesis came from; ``full_lp``: the
        model's own full-context log-probs if already computed (full-utterance mode)."""
        from asrkd.eval.search import greedy_decode

        if self.forced:
            if text is None:
                self.skipped["no_text"] += 1
                return
            try:
                ref_ids = self.ref.encode(text)
            except ValueError:
                self.skipped["oov_text"] += 1
                return
        if self.ref is self.rec and full_lp is not None:
            ref_lp = full_lp
        else:
            lp, lens = self.ref.log_probs(wave[None], torch.tensor([wave.numel()]))
            ref_lp = lp[0, : int(lens[0])]
        if not self.forced:
            ref_ids = greedy_decode(ref_lp, blank=self.ref.blank_id)[0]
        try:
            ref_em = token_emissions(ref_lp, ref_ids, blank=self.ref.blank_id, frame_rate=self.ref.frame_rate,
                                     symbols=self.ref._canon)
        except ValueError:
            self.skipped["too_short_for_alignment"] += 1
            return
        hyp_em = token_emissions(hyp_lp, hyp_ids, blank=self.rec.blank_id, frame_rate=self.rec.frame_rate,
                                 symbols=self.rec._canon)
        self.utterances += 1
        self.hyp_tokens += len(hyp_em)
        self.ref_tokens += len(ref_em)
        for h, r in match_emissions(hyp_em, ref_em):
            self.delays.append(h.ms - r.ms)
            if available_ms is not None:
                self.available.append(available_ms[h.frame] - r.ms)

    def result(self) -> dict[str, Any]:
        out = {
            "reference": self.description,
            "utterances": self.utterances,
            "hyp_tokens": self.hyp_tokens,
            "ref_tokens": self.ref_tokens,
            **delay_summary(self.delays),
            "skipped": dict(self.skipped),
        }
        if self.available:
            out["available"] = delay_summary(self.available)
        return out


# --------------------------------------------------------------------------- decoding


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_manifest(
    checkpoint_or_model: str | os.PathLike | Recognizer | nn.Module,
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
    emission_delay_ref: str | os.PathLike | Recognizer | nn.Module | None = None,
    rejects: Any = None,
    progress: bool = False,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Decode every entry of a manifest.

    Args:
        checkpoint_or_model: an asrkd checkpoint path (any arch: students, adapted
            teachers, ...), a teacher spec, a loaded teacher or a :class:`Recognizer`.
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
    from tqdm import tqdm

    from asrkd.data import Rejects, load_manifest
    from asrkd.data.audio import AudioError
    from asrkd.eval.search import build_decoder, flashlight_available

    wall0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available here")
        rec = load_recognizer(checkpoint_or_model, device)
        rejects = Rejects() if rejects is None else rejects
        manifest_path = None
        before = len(rejects)
        if isinstance(manifest, (str, os.PathLike)):
            manifest_path = str(Path(manifest))  # how load_manifest names its lines ("PATH:LINE")
            utts = load_manifest(manifest, rejects, audio_only=True)  # an empty transcript does not stop decoding
        else:
            utts = list(manifest)
        # Entries the manifest reader had to skip but whose id is known still get a line.
        skipped_ids = []
        known = {u.id for u in utts}
        for r in rejects.records[before:]:
            if r.kind == "duplicate_id" or r.id in known or (manifest_path and r.id.startswith(f"{manifest_path}:")):
                continue
            if r.id and not any(c.isspace() for c in r.id):
                skipped_ids.append(r.id)
                known.add(r.id)

        if streaming:
            chunk = rec.chunk_samples(chunk_ms)  # validates the model and the chunk
        if isinstance(decoder, str):
            if decoder not in ("greedy", "beam"):
                raise ValueError(f"unknown decoder {decoder!r}; expected 'greedy' or 'beam'")
            backend = beam_backend
            if decoder == "beam" and backend == "auto":
                backend = "torchaudio" if flashlight_available() else "asrkd"
            options = dict(decoder_options or {})
            if decoder == "beam" and backend == "torchaudio" and "word_separator" not in options:
                options["word_separator"] = next((s for s in (" ", "|", "<space>") if s in rec.tokens), " ")
            search = (
                build_decoder("greedy", blank=rec.blank_id)
                if decoder == "greedy"
                else build_decoder("beam", rec.tokens, blank=rec.blank_id, beam=beam, lexicon=lexicon, lm=lm,
                                   backend=backend, **options)
            )
            decoder_name = decoder
        else:
            search, decoder_name, backend = decoder, type(decoder).__name__, None
        meter = _DelayMeter(emission_delay_ref, rec, device) if emission_delay_ref is not None else None

        texts: dict[str, str] = {}
        failed: list[str] = []
        audio_s = 0.0
        compute_s = 0.0
        frames_out = 0
        observed_latency = 0.0
        bar = tqdm(total=len(utts), desc="decode", unit="utt", disable=not progress, file=sys.stderr)

        def load(u) -> torch.Tensor | None:
            try:
                wave = u.load_audio(SAMPLE_RATE)
            except AudioError as err:
                rejects.add(u.id, err.kind, f"{u.id}: {err.reason}")
                failed.append(u.id)
                return None
            if wave.numel() < rec.min_samples:
                rejects.add(u.id, "too_short", f"{u.id}: {wave.numel()} samples give the model no output frame "
                                               f"(needs >= {rec.min_samples})")
                failed.append(u.id)
                return None
            return wave

        if streaming:
            groups = [[u] for u in utts]
        else:
            groups = [[utts[i] for i in b] for b in duration_batches([u.duration for u in utts], batch_seconds)]
        for group in groups:
            items = [(u, w) for u in group if (w := load(u)) is not None]
            if items and streaming:
                u, wave = items[0]
                _sync(device)
                t0 = time.perf_counter()
                lp, available = rec.stream_log_probs(wave, chunk)
                ids = search.decode(lp[None], [lp.size(0)])[0]
                _sync(device)
                compute_s += time.perf_counter() - t0
                texts[u.id] = rec.text(ids)
                frames_out += lp.size(0)
                for j, avail in enumerate(available):
                    observed_latency = max(observed_latency, avail - j * 1000.0 / rec.frame_rate)
                audio_s += wave.numel() / SAMPLE_RATE
                if meter is not None:
                    meter.add(wave, u.text, lp, ids, available)
            elif items:
                lengths = torch.tensor([w.numel() for _, w in items])
                waves = torch.zeros(len(items), int(lengths.max()))
                for b, (_, w) in enumerate(items):
                    waves[b, : w.numel()] = w
                _sync(device)
                t0 = time.perf_counter()
                lp, out_lengths = rec.log_probs(waves, lengths)
                lp_cpu = lp.cpu()
                hyp_ids = search.decode(lp_cpu, out_lengths.cpu())
                _sync(device)
                compute_s += time.perf_counter() - t0
                for b, (u, w) in enumerate(items):
                    n = int(out_lengths[b])
                    texts[u.id] = rec.text(hyp_ids[b])
                    frames_out += n
                    audio_s += w.numel() / SAMPLE_RATE
                    if meter is not None:
                        meter.add(w, u.text, lp_cpu[b, :n], hyp_ids[b], None, full_lp=lp_cpu[b, :n])
            bar.update(len(group))
            if compute_s > 0 and audio_s > 0:
                bar.set_postfix(rtf=f"{compute_s / audio_s:.4f}", refresh=False)
        bar.close()

        order = [u.id for u in utts] + skipped_ids
        hyps = {uid: texts.get(uid, "") for uid in order}
        failed_ids = failed + skipped_ids
        stats: dict[str, Any] = {
            "checkpoint": rec.name,
            "arch": rec.arch,
            "input": rec.input_type,
            "params": rec.parameters_count(),
            "frame_rate": rec.frame_rate,
            "manifest": manifest_path,
            "utterances": len(hyps),
            "decoded": len(texts),
            "failed": len(failed_ids),
            "failed_ids": failed_ids,
            "rejects": rejects.counts(),
            "audio_s": audio_s,
            "compute_s": compute_s,
            "rtf": compute_s / audio_s if audio_s > 0 else None,
            "rtf_includes": "log-mel + CMVN (or the model's own front-end), acoustic model, CTC search; "
                            "not audio file reading or the emission-delay reference",
            "output_frames": frames_out,
            "streaming": bool(streaming),
            "decoder": decoder_name,
            "beam": beam if decoder_name == "beam" else None,
            "beam_backend": backend if decoder_name == "beam" else None,
            "lexicon": str(lexicon) if lexicon is not None else None,
            "lm": str(lm) if lm is not None else None,
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        if rec.can_stream:
            stats["native_chunk_ms"] = rec.native_chunk_ms()
            stats["model_latency_ms"] = float(rec.model.algorithmic_latency_ms)
        if streaming:
            stats["chunk_ms"] = chunk * 1000.0 / SAMPLE_RATE
            stats["algorithmic_latency_ms"] = rec.streaming_latency_ms(stats["chunk_ms"])
            stats["observed_latency_ms"] = observed_latency
        stats["emission_delay"] = meter.result() if meter is not None else None
        stats["wall_s"] = time.perf_counter() - wall0
        return hyps, stats
    finally:
        torch.set_num_threads(old_threads)


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


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="asrkd checkpoint (any arch: student, adapted teacher, ...) or a teacher spec")
    parser.add_argument("--manifest", required=True, help="manifest JSONL to decode")
    parser.add_argument("--out", required=True, help="hypotheses, Kaldi style: utt-id word word ...")
    s = parser.add_argument_group("streaming")
    s.add_argument("--streaming", action="store_true", help="decode chunk by chunk through the student's streaming API")
    s.add_argument("--chunk-ms", type=float, default=None,
                   help="audio per push in ms: a multiple of the feature hop (default: the model's native chunk)")
    s.add_argument("--emission-delay-ref", metavar="TEACHER_CKPT|forced-align[:CKPT]",
                   help="per-token emission delay against a teacher's full-context CTC spikes, or a forced "
                        "alignment of the reference text (on this model's full-context log-probs, or CKPT's)")
    d = parser.add_argument_group("search")
    d.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    d.add_argument("--beam", type=int, default=8, help="beam size (--decoder beam)")
    d.add_argument("--beam-backend", choices=("auto", "torchaudio", "asrkd"), default="auto",
                   help="auto: torchaudio's flashlight decoder when flashlight-text is installed, else asrkd's")
    d.add_argument("--lexicon", help="flashlight lexicon (word spelling |), torchaudio backend")
    d.add_argument("--lm", help="KenLM model (ARPA or binary), torchaudio backend")
    d.add_argument("--lm-weight", type=float, default=None, help="LM weight (torchaudio backend; default 2.0)")
    d.add_argument("--word-score", type=float, default=None,
                   help="word insertion score (torchaudio backend; default 0)")
    r = parser.add_argument_group("run")
    r.add_argument("--batch-seconds", type=float, default=60.0, help="padded audio seconds per batch (full-utterance)")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    r.add_argument("--json", metavar="STATS.json", help="write the statistics as JSON")
    r.add_argument("--report", metavar="FILE", help="write every skipped entry as a JSON line")
    r.add_argument("--strict", action="store_true", help="exit 1 when any entry could not be decoded")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from asrkd.data import Rejects, load_manifest
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
    if not Path(args.manifest).is_file():
        raise FileNotFoundError(f"manifest not found: {args.manifest}")
    outputs = {"--out": args.out, "--json": args.json, "--report": args.report}
    refuse_overwrite(outputs, {"--manifest": args.manifest, "--checkpoint": spec_file(args.checkpoint),
                               "--lexicon": args.lexicon, "--lm": args.lm,
                               "--emission-delay-ref": spec_file(args.emission_delay_ref)})
    audio = [u.audio for u in load_manifest(args.manifest, Rejects(), audio_only=True)]
    refuse_overwrite_files(outputs, audio, f"an audio file of {args.manifest}")
    options = {k: v for k, v in (("lm_weight", args.lm_weight), ("word_score", args.word_score)) if v is not None}
    if options and args.beam_backend == "asrkd":
        return fail("--lm-weight/--word-score belong to the torchaudio beam search")
    rejects = Rejects()
    hyps, stats = decode_manifest(
        args.checkpoint, args.manifest, streaming=args.streaming, chunk_ms=args.chunk_ms, decoder=args.decoder,
        beam=args.beam, lexicon=args.lexicon, lm=args.lm, beam_backend=args.beam_backend,
        decoder_options=options or None, batch_seconds=args.batch_seconds, device=args.device,
        threads=args.threads, emission_delay_ref=args.emission_delay_ref, rejects=rejects,
        progress=not args.no_progress,
    )  # errors of the run itself (a refused checkpoint, bad audio settings): one line from asrkd.cli, exit 1
    if not hyps:
        raise ValueError(f"{args.manifest}: no entries to decode\n{rejects.summary()}")
    write_hypotheses(args.out, hyps)
    stats["out"] = str(args.out)
    print(format_summary(stats))
    if len(rejects):
        print(rejects.summary())
    if args.report:
        rejects.write_report(args.report)
        print(f"report: {args.report}")
    if args.json:
        write_text(args.json, json.dumps(stats, indent=2) + "\n")
    print(f"wrote {len(hyps)} hypotheses to {args.out}")
    return 1 if args.strict and stats["failed"] else 0
