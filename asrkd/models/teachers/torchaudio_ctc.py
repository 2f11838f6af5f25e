"""torchaudio wav2vec 2.0 / HuBERT / WavLM CTC models as teachers.

Two ways in:

- ``torchaudio:BUNDLE`` — a ``torchaudio.pipelines`` ASR bundle (``WAV2VEC2_ASR_BASE_960H``,
  ``HUBERT_ASR_LARGE``, ...). Nothing is downloaded: the weights must already be in the torch
  hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``); otherwise the error names the
  file, the URL it comes from and the folder to put it in.
- ``torchaudio-arch:ARCH:PATH`` — a state dict saved from a torchaudio ``Wav2Vec2Model``
  (``torch.save(model.state_dict(), PATH)``) plus the name of its builder in
  ``torchaudio.models`` (``wav2vec2_base``, ``hubert_large``, ``wavlm_base``, ...;
  ``wav2vec2_model`` / ``wavlm_model`` take their full configuration from a ``"config"``
  entry). The file may also be a dict ``{"state_dict": ..., "labels": [...], "config": {...}}``.
  Labels come from the ``labels=`` argument, the file's ``"labels"`` entry, or a
  ``PATH-stem.labels.json`` file next to it (a JSON list, blank first); a 29-class model
  without labels gets torchaudio's English CTC labels.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from asrkd.data.audio import SAMPLE_RATE
from asrkd.models.acoustic import AcousticModel, conv_min_samples

# Builders in torchaudio.models that accept `aux_num_out` (the CTC output layer size).
ARCHS = (
    "wav2vec2_base",
    "wav2vec2_large",
    "wav2vec2_large_lv60k",
    "wav2vec2_xlsr_300m",
    "wav2vec2_xlsr_1b",
    "wav2vec2_xlsr_2b",
    "hubert_base",
    "hubert_large",
    "hubert_xlarge",
    "wavlm_base",
    "wavlm_large",
    "wav2vec2_model",
    "wavlm_model",
)


def normalize_waves(waves: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding stays 0.

    What ``layer_norm(wave, wave.shape)`` does to one un-padded utterance (the input
    normalisation of the large wav2vec2/HuBERT models), made independent of padding.
    """
    mask = (torch.arange(waves.size(1), device=waves.device)[None, :] < lengths[:, None]).to(waves.dtype)
    n = lengths.to(waves.dtype)[:, None]
    mean = (waves * mask).sum(1, keepdim=True) / n
    var = (((waves - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (waves - mean) / torch.sqrt(var + eps) * mask


class TorchaudioCTC(nn.Module):
    """A torchaudio ``Wav2Vec2Model`` with a CTC layer: ``forward(waves, lengths) -> (logits, out_lengths)``.

    Note: the ``group_norm`` feature extractor of the *base* models normalises over the whole
    padded time axis, so their outputs depend slightly on the padding of the batch (as in
    torchaudio and fairseq).
    """

    def __init__(self, model: nn.Module, normalize_waveform: bool = False):
        super().__init__()
        self.model = model
        self.normalize_waveform = normalize_waveform
        convs = [layer.conv for layer in model.feature_extractor.conv_layers]
        self.frame_rate = SAMPLE_RATE / math.prod(c.stride[0] for c in convs)
        self.min_samples = conv_min_samples([c.kernel_size[0] for c in convs], [c.stride[0] for c in convs])

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize_waveform:
            waves = normalize_waves(waves, lengths)
        else:
            mask = torch.arange(waves.size(1), device=waves.device)[None, :] < lengths[:, None]
            waves = waves.masked_fill(~mask, 0.0)
        logits, out_lengths = self.model(waves, lengths)
        return logits, out_lengths


def bundle_weights_path(bundle: Any) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` looks for a bundle's weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(bundle._path)


def _bundle_url(bundle: Any) -> str:
    path = bundle._path
    return path if path.startswith("https") else f"https://download.pytorch.org/torchaudio/models/{path}"


def load_torchaudio_bundle(name: str, *, normalize_waveform: bool | None = None) -> AcousticModel:
    """A teacher from a ``torchaudio.pipelines`` ASR bundle whose weights are already cached."""
    import torchaudio.pipelines as pipelines

    bundle = getattr(pipelines, name, None)
    if bundle is None or not hasattr(bundle, "_path"):
        known = sorted(n for n in dir(pipelines) if n.isupper() and hasattr(getattr(pipelines, n), "get_labels"))
        raise ValueError(f"unknown torchaudio CTC bundle {name!r}; ASR bundles: {', '.join(known)}")
    if not hasattr(bundle, "get_labels"):
        raise ValueError(
            f"torchaudio bundle {name!r} has no CTC output layer (a pretraining bundle); use an *_ASR_* one"
        )
    weights = bundle_weights_path(bundle)
    if not weights.is_file():
        raise FileNotFoundError(
            f"weights of torchaudio bundle {name} are not cached and asrkd never downloads: put "
            f"{weights.name} (from {_bundle_url(bundle)}) at {weights} "
            f"(the folder is <torch.hub.get_dir()>/checkpoints; set TORCH_HOME to move it)"
        )
    model = bundle.get_model()  # finds the cached file; no network
    wrapped_norm = getattr(model, "normalize_waveform", False)
    inner = getattr(model, "model", model)  # unwrap torchaudio's padding-unaware input layer_norm
    if normalize_waveform is None:
        normalize_waveform = bool(getattr(bundle, "_normalize_waveform", wrapped_norm))
    if bundle.sample_rate != SAMPLE_RATE:
        raise ValueError(f"bundle {name} expects {bundle.sample_rate} Hz audio; asrkd teachers take {SAMPLE_RATE} Hz")
    module = TorchaudioCTC(inner, normalize_waveform)
    return AcousticModel(
        module,
        vocab=list(bundle.get_labels()),
        blank_id=0,
        frame_rate=module.frame_rate,
        spec=f"torchaudio:{name}",
        frozen=True,
    )


def _en_labels() -> list[str]:
    from torchaudio.pipelines._wav2vec2.utils import _get_en_labels

    return ["-", *_get_en_labels()]


def load_torchaudio_state_dict(
    arch: str,
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    blank_id: int = 0,
    normalize_waveform: bool = False,
    config: dict[str, Any] | None = None,
) -> AcousticModel:
    """A teacher from a torchaudio ``Wav2Vec2Model`` state dict and its builder name."""
    import torchaudio.models as tam

    if arch not in ARCHS:
        raise ValueError(f"unknown torchaudio architecture {arch!r}; known: {', '.join(ARCHS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torchaudio state dict not found: {path}")
    from asrkd.models.checkpoint import safe_load

    obj = safe_load(path)
    extra: dict[str, Any] = {}
    if (
        isinstance(obj, dict)
        and any(k in obj for k in ("state_dict", "model"))
        and not any(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        extra, obj = obj, obj.get("state_dict", obj.get("model"))
    if not isinstance(obj, dict) or "aux.weight" not in obj:
        raise ValueError(f"{path}: not a torchaudio Wav2Vec2Model CTC state dict (no 'aux.weight' output layer)")
    num_out = obj["aux.weight"].shape[0]

    if labels is None:
        labels = extra.get("labels")
    sidecar = path.with_name(path.stem + ".labels.json")
    if labels is None and sidecar.is_file():
        labels = json.loads(sidecar.read_text())
    if labels is None and num_out == 29:
        labels = _en_labels()
    if labels is None:
        raise ValueError(
            f"{path}: the model has {num_out} output classes but no labels; pass labels=[...], store "
            f"{{'state_dict': ..., 'labels': [...]}} in the file, or write them to {sidecar}"
        )
    labels = list(labels)
    if len(labels) != num_out:
        raise ValueError(f"{path}: {len(labels)} labels for a model with {num_out} output classes")

    kwargs = dict(config or extra.get("config") or {})
    if arch in ("wav2vec2_model", "wavlm_model") and not kwargs:
        raise ValueError(f"architecture {arch} needs its configuration: pass config={{...}} or store a 'config' entry")
    kwargs["aux_num_out"] = num_out
    model = getattr(tam, arch)(**kwargs)
    try:
        model.load_state_dict(obj)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit torchaudio.models.{arch}: {err}") from None
    module = TorchaudioCTC(model, normalize_waveform)
    return AcousticModel(
        module,
        vocab=labels,
        blank_id=blank_id,
        frame_rate=module.frame_rate,
        spec=f"torchaudio-arch:{arch}:{path}",
        frozen=True,
    )
