"""Student features: 80-dim log-mel (torchaudio), global CMVN, SpecAugment, speed perturbation.

Frames are computed without centre padding: frame ``t`` covers samples
``[t * hop, t * hop + n_fft)`` (by default ``n_fft`` = the 25 ms window, 400 samples), so
``num_frames(N) = 1 + (N - n_fft) // hop`` (0 when N < n_fft).
A streaming front end therefore produces exactly the frames of the offline one, and the
frame count is known from the sample count alone (used by the CTC length checks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .audio import SAMPLE_RATE, AudioError


@dataclass
class FeatureConfig:
    """Log-mel front end. Stored in checkpoints (``to_dict``) so decoding rebuilds it exactly."""

    sample_rate: int = SAMPLE_RATE
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 400  # the span of one frame; >= the window (longer: the window is zero-padded)
    f_min: float = 20.0
    f_max: float | None = None
    log_offset: float = 1e-6  # log(mel + offset): a floor for digital silence (exact zeros)

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"window {self.win_length} samples is longer than n_fft {self.n_fft}")
        if self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"bad feature config {self}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Feature frames for ``num_samples`` samples (see the module docstring)."""
        if num_samples < self.n_fft:
            return 0
        return 1 + (int(num_samples) - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown FeatureConfig keys: {sorted(unknown)}")
        return cls(**dict(d))


class LogMel(nn.Module):
    """Waveforms to log-mel features, always computed in fp32 (autocast is disabled).

    ``forward(wave (B, N), lengths (B,)) -> (feats (B, T, n_mels), feat_lengths (B,))`` with
    ``T = config.num_frames(N)``; frames past an item's length are 0.
    """

    def __init__(self, config: FeatureConfig | None = None):
        super().__init__()
        import torchaudio

        self.config = config or FeatureConfig()
        c = self.config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            power=2.0,
            center=False,
        )

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        c = self.config
        lengths = lengths.long()
        return torch.where(
            lengths >= c.n_fft,
            1 + (lengths - c.n_fft).div(c.hop_length, rounding_mode="floor"),
            torch.zeros_like(lengths),
        )

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects (B, N) waveforms, got shape {tuple(wave.shape)}")
        B, N = wave.shape
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=wave.device)
        feat_lengths = self.output_lengths(lengths.to(wave.device))
        span = self.config.n_fft
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = wave.float()
            if N < span:  # torch.stft needs one frame; every item has 0 frames anyway
                x = nn.functional.pad(x, (0, span - N))
            mel = self.mel(x)[..., : self.config.num_frames(max(N, 0))]  # (B, n_mels, T)
            feats = torch.log(mel + self.config.log_offset).transpose(1, 2).contiguous()
        T = feats.shape[1]
        valid = torch.arange(T, device=feats.device)[None, :] < feat_lengths[:, None]
        return feats.masked_fill(~valid[..., None], 0.0), feat_lengths


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation: ``(feats - mean) / std`` over the last dim.

    ``feats``: (..., n_mels). The statistics are computed once over a training manifest
    (:func:`compute_cmvn`) and stored with the model (``to_dict`` / ``from_dict``).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean/std must be (n_mels,), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not torch.isfinite(mean).all() or not (std > 0).all():
            raise ValueError("CMVN statistics must be finite with std > 0")
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GlobalCMVN":
        return cls(torch.tensor(d["mean"], dtype=torch.float32), torch.tensor(d["std"], dtype=torch.float32))

    @classmethod
    def identity(cls, n_mels: int = 80) -> "GlobalCMVN":
        return cls(torch.zeros(n_mels), torch.ones(n_mels))


def compute_cmvn(
    manifest_entries: Iterable,
    config: FeatureConfig | None = None,
    *,
    max_utterances: int | None = None,
    rejects=None,
    std_floor: float = 1e-3,
) -> GlobalCMVN:
    """Mean and std of log-mel features over ``manifest_entries`` (``Utterance`` objects).

    Sums are accumulated in float64. With ``max_utterances`` an evenly spaced subset is used
    (deterministic). Unreadable audio, and audio too short for one feature frame (``too_short``),
    is skipped and counted in ``rejects`` (a :class:`~asrkd.data.rejects.Rejects`); without
    ``rejects`` it raises :class:`~asrkd.data.audio.AudioError`.
    """
    config = config or FeatureConfig()
    entries = list(manifest_entries)
    if max_utterances is not None and len(entries) > max_utterances:
        step = len(entries) / max_utterances
        entries = [entries[int(i * step)] for i in range(max_utterances)]
    logmel = LogMel(config)
    total = torch.zeros(config.n_mels, dtype=torch.float64)
    total_sq = torch.zeros(config.n_mels, dtype=torch.float64)
    frames = 0
    for u in entries:
        try:
            wave = u.load_audio(config.sample_rate)
            with torch.no_grad():
                feats, n = logmel(wave[None], torch.tensor([wave.numel()]))
            if int(n[0]) <= 0:  # counted, so an all-short manifest does not end in "rejected: none"
                ms = wave.numel() / config.sample_rate * 1000
                raise AudioError(
                    f"{u.id}: {u.audio}: {wave.numel()} samples ({ms:.1f} ms) give no feature frame "
                    f"(the window is {config.win_ms:g} ms)",
                    "too_short",
                )
        except AudioError as err:
            if rejects is None:
                raise
            rejects.add(u.id, err.kind, str(err))
            continue
        f = feats[0, : int(n[0])].double()
        total += f.sum(0)
        total_sq += (f * f).sum(0)
        frames += f.shape[0]
    if frames == 0:
        raise ValueError("compute_cmvn: no usable audio frames in the given entries")
    mean = total / frames
    var = (total_sq / frames - mean * mean).clamp_min(0.0)
    return GlobalCMVN(mean.float(), var.sqrt().clamp_min(std_floor).float())


class SpecAugment(nn.Module):
    """SpecAugment frequency and time masks (torchaudio ``FrequencyMasking``/``TimeMasking``).

    Active only in training mode. ``forward(feats (T, F) | (B, T, F), lengths=None)``: with
    ``lengths`` each item is masked within its own valid frames, so padding neither attracts
    masks nor widens them. Masked values are 0, i.e. the mean after CMVN.
    Time masks are at most ``time_width`` frames and ``max_time_ratio`` of the utterance.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 2,
        time_width: int = 40,
        max_time_ratio: float = 0.1,
    ):
        super().__init__()
        import torchaudio

        self.freq_masks, self.time_masks = freq_masks, time_masks
        self.freq = torchaudio.transforms.FrequencyMasking(freq_width, iid_masks=True)
        self.time = torchaudio.transforms.TimeMasking(time_width, iid_masks=True, p=max_time_ratio)

    def _one(self, feats: torch.Tensor) -> torch.Tensor:  # (T, F)
        x = feats.t()[None]  # (1, F, T): torchaudio masks (..., freq, time)
        for _ in range(self.freq_masks):
            x = self.freq(x)
        for _ in range(self.time_masks):
            x = self.time(x)
        return x[0].t()

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return feats
        if feats.dim() == 2:
            return self._one(feats) if feats.shape[0] > 0 else feats
        out = feats.clone()
        for b in range(feats.shape[0]):
            t = feats.shape[1] if lengths is None else int(lengths[b])
            if t > 0:
                out[b, :t] = self._one(feats[b, :t])
        return out


class FeaturePipeline(nn.Module):
    """The whole student front end: log-mel -> CMVN -> SpecAugment (training mode only).

    ``forward(wave (B, N), lengths (B,)) -> (feats (B, T, n_mels), feat_lengths (B,))``.
    Used per item by :class:`~asrkd.data.dataset.ASRDataset` and on whole batches by the
    trainer (e.g. when the teacher runs in the loop on the same waveforms) and by decoding.
    """

    def __init__(
        self, config: FeatureConfig | None = None, cmvn: GlobalCMVN | None = None, specaug: SpecAugment | None = None
    ):
        super().__init__()
        self.config = config or FeatureConfig()
        self.logmel = LogMel(self.config)
        self.cmvn = cmvn
        self.specaug = specaug

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        feats, feat_lengths = self.logmel(wave, lengths)
        if self.cmvn is not None:
            feats = self.cmvn(feats)
        if self.specaug is not None and self.training:
            feats = self.specaug(feats, feat_lengths)
        T = feats.shape[1]
        valid = torch.arange(T, device=feats.device)[None, :] < feat_lengths[:, None]
        return feats.masked_fill(~valid[..., None], 0.0), feat_lengths


def ctc_min_frames_batch(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Fewest output frames CTC needs for each padded label row ``targets (B, S)`` with
    ``target_lengths (B,)``: one per label plus one blank between each pair of equal adjacent
    labels. Computed on the targets' device (no host synchronisation in a training step)."""
    target_lengths = target_lengths.to(targets.device)
    S = targets.shape[1]
    pos = torch.arange(1, max(S, 1), device=targets.device)
    inside = pos[None, : max(S - 1, 0)] < target_lengths[:, None]
    repeats = ((targets[:, 1:] == targets[:, :-1]) & inside).sum(1)
    return target_lengths + repeats


def ctc_min_frames(labels: Iterable[int]) -> int:
    """:func:`ctc_min_frames_batch` of one label sequence (ids, or any hashable labels such as
    the characters of a transcript)."""
    codes: dict = {}
    row = torch.tensor([[codes.setdefault(x, len(codes)) for x in labels]], dtype=torch.long).reshape(1, -1)
    return int(ctc_min_frames_batch(row, torch.tensor([row.shape[1]]))[0])


def frames_after_subsampling(
    num_samples: int,
    *,
    subsampling: int = 4,
    hop_ms: float = 10.0,
    win_ms: float = 25.0,
    sample_rate: int = SAMPLE_RATE,
) -> int:
    """Model output frames for ``num_samples`` audio samples: feature frames (no centre
    padding, frame span ``win_ms``) divided by the subsampling factor, rounded down (the
    conservative choice for convolutional subsampling front ends)."""
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    feats = 0 if num_samples < win else 1 + (int(num_samples) - win) // hop
    return feats // max(1, int(subsampling))


def fits_ctc(
    num_samples: int,
    labels: Iterable[int],
    *,
    subsampling: int = 4,
    hop_ms: float = 10.0,
    win_ms: float = 25.0,
    sample_rate: int = SAMPLE_RATE,
) -> bool:
    """True when an utterance of ``num_samples`` samples is long enough for CTC on ``labels``:
    frames after subsampling >= label length + adjacent repeats."""
    return frames_after_subsampling(
        num_samples, subsampling=subsampling, hop_ms=hop_ms, win_ms=win_ms, sample_rate=sample_rate
    ) >= ctc_min_frames(labels)


def speed_perturbation(factors=(0.9, 1.0, 1.1), sample_rate: int = SAMPLE_RATE):
    """Kaldi-style speed perturbation (tempo and pitch change by resampling): torchaudio's
    ``SpeedPerturbation``, ``forward(wave (..., N), lengths) -> (wave, lengths)``."""
    import torchaudio

    if not factors or min(factors) <= 0:
        raise ValueError(f"speed factors must be positive, got {factors}")
    return torchaudio.transforms.SpeedPerturbation(sample_rate, list(factors))


__all__ = [
    "FeatureConfig",
    "LogMel",
    "GlobalCMVN",
    "compute_cmvn",
    "SpecAugment",
    "FeaturePipeline",
    "ctc_min_frames",
    "ctc_min_frames_batch",
    "frames_after_subsampling",
    "fits_ctc",
    "speed_perturbation",
]
