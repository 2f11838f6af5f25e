"""The one acoustic-model type: network + front-end + vocabulary + blank + frame rate.

Teachers (:func:`asrkd.models.teachers.load_teacher`), students being decoded, checkpoints
of any arch (:func:`load_acoustic_model`) and the emission-delay reference are all an
:class:`AcousticModel`: waves in, CTC logits out, with the vocabulary that names them.
A log-mel network (the students, anything asrkd trained on features) runs behind its
checkpoint's :class:`~asrkd.data.features.FeaturePipeline`; a waveform network (Whisper with
a CTC head, wav2vec2/HuBERT, HF models) takes the waves itself.

Streaming students also stream: :meth:`AcousticModel.stream` opens an :class:`AudioStream`
(audio chunks in, the logits that became final out), and :meth:`AcousticModel.stream_log_probs`
runs one utterance through it as a live stream would.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from asrkd.data.audio import SAMPLE_RATE
from asrkd.data.text import BLANK_CLASS, canonical_symbol, normalize_text, symbols_to_text

__all__ = ["AcousticModel", "AudioStream", "check_waves", "conv_min_samples", "load_acoustic_model"]

# A waveform network that declares no ``min_samples``: one 25 ms analysis window at 16 kHz, the
# receptive field of wav2vec2's feature encoder and more than Whisper's front-end needs.
WAVE_MIN_SAMPLES = 400

# load_teacher specs that name a file of another kind (whisper:X.pt is an openai-whisper checkpoint)
_TEACHER_SPEC_PREFIXES = ("whisper:", "torchaudio:", "torchaudio-arch:", "hf:")
_STREAMING_API = ("init_state", "stream_step", "stream_flush", "chunk_frames")


def check_waves(waves: Tensor, lengths: Tensor) -> None:
    """Validate a padded waveform batch ``(B, N)`` float and its ``lengths (B,)`` int."""
    if waves.dim() != 2 or not waves.is_floating_point():
        raise ValueError(f"waves must be a float tensor (B, samples), got {tuple(waves.shape)} {waves.dtype}")
    if lengths.dim() != 1 or lengths.size(0) != waves.size(0) or lengths.is_floating_point():
        raise ValueError(
            f"lengths must be an int tensor ({waves.size(0)},), got {tuple(lengths.shape)} {lengths.dtype}"
        )
    if lengths.numel() and (int(lengths.max()) > waves.size(1) or int(lengths.min()) <= 0):
        raise ValueError(
            f"lengths must lie in [1, {waves.size(1)}] (the padded length), got min {int(lengths.min())} "
            f"max {int(lengths.max())}"
        )


def conv_min_samples(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Samples a stack of unpadded 1-D convolutions needs for one output frame (its receptive
    field): 400 for wav2vec2's feature encoder."""
    need = 1
    for k, s in reversed(list(zip(kernels, strides))):
        need = (need - 1) * s + k
    return need


class AcousticModel(nn.Module):
    """A CTC acoustic model with everything needed to run and read it.

    ``forward(waves (B, N) float 16 kHz, lengths (B,) int) -> (logits (B, T, V) float32,
    out_lengths (B,) int64)``; :meth:`log_probs` gives the fp32 log-softmax of the same.

    Args:
        model: the network. With ``frontend``: ``forward(feats (B, T, F), lengths) -> (logits,
            out_lengths)``; without: ``forward(waves (B, N), lengths) -> (logits, out_lengths)``.
        vocab: id -> symbol.
        blank_id: the CTC blank.
        frame_rate: output frames per second.
        frontend: the eval-mode feature pipeline (log-mel + CMVN) of a log-mel network, or None.
        tokenizer: the asrkd tokenizer (ids <-> text); None: text is spelled from ``vocab``
            (:func:`asrkd.data.text.symbols_to_text`).
        spec: what it was loaded from (logs, reports, the teacher cache's fingerprint).
        arch: the checkpoint's arch, if any.
        frozen: a teacher: it stays in eval mode (``train()`` is a no-op, so a parent's
            ``.train()`` cannot switch on its dropout), its parameters have
            ``requires_grad=False`` and the forward runs under ``torch.no_grad``.

    Attributes ``model``, ``frontend``, ``vocab``, ``blank_id``, ``frame_rate``,
    ``sample_rate`` (16000), ``spec``, ``tokenizer``, ``arch``, ``frozen``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        vocab: Sequence[str],
        blank_id: int,
        frame_rate: float,
        frontend: nn.Module | None = None,
        tokenizer: Any = None,
        spec: str = "",
        arch: str | None = None,
        frozen: bool = False,
    ):
        super().__init__()
        vocab = [str(v) for v in vocab]
        if not 0 <= blank_id < len(vocab):
            raise ValueError(f"blank_id {blank_id} outside the vocabulary of {len(vocab)} symbols ({spec or 'model'})")
        outputs = getattr(model, "vocab_size", None)
        if isinstance(outputs, int) and outputs != len(vocab):
            raise ValueError(
                f"{spec or 'model'}: the model has {outputs} outputs but the vocabulary {len(vocab)} symbols"
            )
        self.model = model
        self.frontend = frontend.eval() if frontend is not None else None
        self.vocab = vocab
        self.blank_id = int(blank_id)
        self.frame_rate = float(frame_rate)
        self.sample_rate = SAMPLE_RATE
        self.tokenizer = tokenizer
        self.spec = spec
        self.arch = arch
        self.frozen = frozen
        self._canon = [canonical_symbol(s) for s in vocab]
        if frozen:
            model.requires_grad_(False)
        self.eval()

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_student(
        cls,
        model: nn.Module,
        tokenizer: Any,
        features: Any = None,
        cmvn: Any = None,
        spec: str = "",
        arch: str | None = None,
    ) -> AcousticModel:
        """An in-memory log-mel network (e.g. a student being trained) with its tokenizer, a
        ``FeatureConfig`` (or its dict, or a ready ``FeaturePipeline``) and a ``GlobalCMVN``
        (or its dict, or None). The network is put in eval mode (a trainer puts it back with
        ``model.train()``)."""
        from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN

        if isinstance(features, FeaturePipeline):
            frontend = features
        else:
            config = features if isinstance(features, FeatureConfig) else FeatureConfig.from_dict(features or {})
            if isinstance(cmvn, Mapping):
                cmvn = GlobalCMVN.from_dict(cmvn)
            frontend = FeaturePipeline(config, cmvn)
        return cls._named_by(tokenizer, model, frontend, spec=spec, arch=arch)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], spec: str, *, frozen: bool = False) -> AcousticModel:
        """The model of an already loaded asrkd checkpoint dict (any registered arch): log-mel
        networks get the checkpoint's own front-end (log-mel + CMVN, no SpecAugment),
        waveform networks (``input_type == "wave"``, e.g. an adapted ``whisper_ctc``) none."""
        from asrkd.data.tokenizer import load_tokenizer
        from asrkd.models.checkpoint import model_from_state

        if not state.get("tokenizer"):
            raise ValueError(f"{spec}: checkpoint has no tokenizer, so its outputs have no names")
        tokenizer = load_tokenizer(state["tokenizer"])
        model = model_from_state(state, spec)
        frontend = None
        if getattr(model, "input_type", "features") != "wave":
            if not state.get("features"):
                raise ValueError(
                    f"{spec}: a log-mel model ({state['arch']}) but the checkpoint has no 'features' config"
                )
            from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN

            cmvn = GlobalCMVN.from_dict(state["cmvn"]) if state.get("cmvn") else None
            frontend = FeaturePipeline(FeatureConfig.from_dict(state["features"]), cmvn)
        return cls._named_by(tokenizer, model, frontend, spec=spec, arch=state.get("arch"), frozen=frozen)

    @classmethod
    def _named_by(cls, tokenizer: Any, model: nn.Module, frontend: nn.Module | None, **kw: Any) -> AcousticModel:
        """A network whose outputs are ``tokenizer``'s symbols (blank: its ``blank_id``)."""
        return cls(
            model,
            vocab=tokenizer.tokens,
            blank_id=int(getattr(tokenizer, "blank_id", 0)),
            frame_rate=float(model.frame_rate),
            frontend=frontend,
            tokenizer=tokenizer,
            **kw,
        )

    # -- module behaviour ------------------------------------------------------------------
    def train(self, mode: bool = True) -> AcousticModel:
        return super().train(False if self.frozen else mode)

    def forward(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        check_waves(waves, lengths)
        lengths = lengths.to(waves.device)
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            if self.frontend is not None:
                feats, feat_lengths = self.frontend(waves, lengths)
                logits, out_lengths = self.model(feats, feat_lengths)
            else:
                logits, out_lengths = self.model(waves, lengths)
        if logits.size(-1) != len(self.vocab):
            raise RuntimeError(
                f"{'teacher' if self.frozen else 'model'} {self.spec!r} returned {logits.size(-1)} classes but its "
                f"vocabulary has {len(self.vocab)}"
            )
        return logits.float(), out_lengths.to(torch.int64)

    @torch.inference_mode()
    def log_probs(self, waves: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Full-context CTC log-probabilities ``(B, T, V)`` float32 and ``out_lengths (B,)``
        on the model's device (inputs are moved there)."""
        logits, out_lengths = self(waves.to(self.device), lengths.to(self.device))
        return torch.log_softmax(logits, dim=-1), out_lengths

    @property
    def device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def input_type(self) -> str:
        return "wave" if self.frontend is None else "features"

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def min_samples(self) -> int:
        """Fewest samples that give at least one output frame: what the network declares
        (``min_samples``), else what a log-mel front-end and the network's subsampling need,
        else :data:`WAVE_MIN_SAMPLES` (a waveform network that says nothing)."""
        declared = getattr(self.model, "min_samples", None)
        if declared:
            return int(declared)
        if self.frontend is not None:
            cfg = self.frontend.config
            return (int(getattr(self.model, "subsampling", 1)) - 1) * cfg.hop_length + cfg.n_fft
        return WAVE_MIN_SAMPLES

    def extra_repr(self) -> str:
        return (
            f"spec={self.spec!r}, vocab={len(self.vocab)}, blank_id={self.blank_id}, "
            f"frame_rate={self.frame_rate}, frozen={self.frozen}"
        )

    # -- text ------------------------------------------------------------------------------
    def text(self, ids: Iterable[int]) -> str:
        """Token ids (collapsed, blanks removed) -> text."""
        ids = [int(i) for i in ids]
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        return symbols_to_text(self.vocab[i] for i in ids if i != self.blank_id)

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (for forced alignment); ``ValueError`` naming the characters
        it cannot spell."""
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text))
        index: dict[str, int] = {}
        for i, c in enumerate(self._canon):
            if i != self.blank_id and c != BLANK_CLASS and len(c) == 1:
                index.setdefault(c, i)
        norm = normalize_text(text)
        missing = sorted({c for c in norm if c.casefold() not in index})
        if missing:
            raise ValueError(f"characters outside the vocabulary of {self.spec or 'the model'}: {''.join(missing)!r}")
        return [index[c.casefold()] for c in norm]

    def symbols(self, ids: Iterable[int]) -> list[str]:
        """Canonical symbols of ids (:func:`asrkd.data.text.canonical_symbol`): comparable across models."""
        return [self._canon[int(i)] for i in ids]

    # -- streaming -------------------------------------------------------------------------
    @property
    def can_stream(self) -> bool:
        return self.frontend is not None and all(hasattr(self.model, a) for a in _STREAMING_API)

    def _need_streaming(self) -> None:
        if not self.can_stream:
            raise ValueError(
                f"{self.spec or 'this model'} cannot stream: streaming needs a log-mel model with the students' "
                "stateful API (init_state / stream_step / stream_flush); decode it without --streaming"
            )

    def native_chunk_ms(self) -> float:
        """Audio of one encoder segment: ``chunk_frames`` feature frames."""
        self._need_streaming()
        return self.model.chunk_frames * self.frontend.config.hop_ms

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
        ``chunk_ms``: the network's latency (segment + look-ahead), the analysis window's reach
        past its hop (``n_fft - hop``: 15 ms for 25 ms windows every 10 ms), and the buffering of
        pushes that do not line up with segments (``chunk - gcd(chunk, native chunk)``)."""
        c, n = self.chunk_samples(chunk_ms), self.chunk_samples(None)
        cfg = self.frontend.config
        window_ms = 1000.0 * (cfg.n_fft - cfg.hop_length) / cfg.sample_rate
        return self.model.algorithmic_latency_ms + window_ms + (c - math.gcd(c, n)) * 1000.0 / cfg.sample_rate

    def stream(self, batch_size: int = 1) -> AudioStream:
        """Open ``batch_size`` streams that advance together."""
        self._need_streaming()
        return AudioStream(self, batch_size)

    @torch.inference_mode()
    def stream_log_probs(self, wave: Tensor, chunk_samples: int | None = None) -> tuple[Tensor, list[float]]:
        """Stream one utterance ``wave (N,)`` chunk by chunk, as a live stream: the first push
        holds :meth:`first_push_samples` samples, later pushes ``chunk_samples`` (default: the
        native chunk).

        Returns:
            ``(log_probs (T, V) float32, available_ms)``: for every output frame, the audio
            time (ms from the start of the stream) at which it was output, i.e. the end of
            the push that produced it (the end of the audio for frames of the final flush).
        """
        chunk_samples = self.chunk_samples(None) if chunk_samples is None else chunk_samples
        stream = self.stream(1)
        wave = wave.reshape(1, -1).to(self.device)
        n, sr = wave.size(1), self.frontend.config.sample_rate
        pieces: list[Tensor] = []
        available: list[float] = []
        pos, size = 0, self.first_push_samples()
        while pos < n:
            piece = wave[:, pos : pos + size]
            pos += piece.size(1)
            out = stream.push(piece)
            pieces.append(out[0])
            available += [pos * 1000.0 / sr] * out.size(1)
            size = chunk_samples
        out = stream.flush()
        pieces.append(out[0])
        available += [n * 1000.0 / sr] * out.size(1)
        return torch.log_softmax(torch.cat(pieces, dim=0).float(), dim=-1), available


class AudioStream:
    """Live streams of one :class:`AcousticModel`: audio chunks in, logits out.

    Log-mel frames have no centre padding (frame ``t`` covers samples ``[t * hop, t * hop +
    n_fft)``), so a frame is computed once its samples are in and the stream keeps only the
    samples the next frame starts with. ``push`` and ``flush`` give the logits of the offline
    front-end + ``forward`` on the concatenated audio.
    """

    def __init__(self, model: AcousticModel, batch_size: int = 1):
        if model.frontend.training:
            raise ValueError(f"{model.spec or 'model'}: put the front-end in eval mode (no SpecAugment) to stream")
        self.model = model
        self.hop = int(model.frontend.config.hop_length)
        self.samples = torch.zeros(batch_size, 0, device=model.device)
        self.state = model.model.init_state(batch_size)

    def push(self, wave: Tensor) -> Tensor:
        """wave (B, n) float samples -> logits (B, C', V) that became final."""
        if wave.dim() != 2 or wave.size(0) != self.samples.size(0):
            raise ValueError(f"push: expected audio ({self.samples.size(0)}, n), got {list(wave.shape)}")
        frontend, network = self.model.frontend, self.model.model
        buf = torch.cat([self.samples, wave.to(self.samples)], dim=1)
        n_frames = int(frontend.config.num_frames(buf.size(1)))
        if n_frames == 0:
            self.samples = buf
            return buf.new_zeros(buf.size(0), 0, len(self.model.vocab))
        feats, _ = frontend(buf)
        logits, self.state = network.stream_step(feats[:, :n_frames], self.state)
        self.samples = buf[:, n_frames * self.hop :]
        return logits

    def flush(self) -> Tensor:
        """End of the streams: the logits still held back (B, C', V)."""
        return self.model.model.stream_flush(self.state)


def load_acoustic_model(spec: str | os.PathLike | AcousticModel, device: str | torch.device = "cpu") -> AcousticModel:
    """An :class:`AcousticModel` from an asrkd checkpoint (a path, or ``asrkd:PATH``), any other
    :func:`asrkd.models.teachers.load_teacher` spec (``torchaudio:BUNDLE``, ``hf:DIR``, ...), or
    an AcousticModel (returned as is); moved to ``device``."""
    if isinstance(spec, AcousticModel):
        return spec.to(device)
    if isinstance(spec, nn.Module):
        raise TypeError(
            f"a {type(spec).__name__} is not an AcousticModel: wrap it with AcousticModel(...) or "
            "AcousticModel.from_student(model, tokenizer, features, cmvn)"
        )
    spec = os.fspath(spec)
    path = Path(spec[len("asrkd:") :] if spec.startswith("asrkd:") else spec)
    if spec.startswith("asrkd:") or path.is_file():
        from asrkd.models.checkpoint import load_checkpoint

        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return AcousticModel.from_state(load_checkpoint(path), str(path)).to(device)
    if path.suffix in {".pt", ".pth", ".ckpt"} and not spec.startswith(_TEACHER_SPEC_PREFIXES):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    from asrkd.models.teachers import load_teacher

    return load_teacher(spec).to(device)
