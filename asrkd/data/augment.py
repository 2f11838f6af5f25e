"""Timing-preserving waveform augmentation of the student's training audio.

The student learns on synthetic speech (espeak-ng, festival) and must cope with real audio:
rooms, telephone channels, background noise, recording levels. :class:`WaveAugment` applies
such distortions to a 16 kHz waveform before the log-mel front end. Every step keeps the
number of samples *exactly* and does not shift the signal in time (a room impulse response
with its direct path at index 0, zero-phase resampling), so the feature frame count and the
frame alignment stay those the teacher cache was made for: cached teacher targets come from
the clean audio, the student hears the augmented audio of the same length.

All randomness comes from torch (``generator``, or the global RNG that
:class:`~asrkd.train.state.SeededItems` seeds per item), so an augmented epoch is
reproducible and resumable. Noise, the room impulse response and the hum are generated
here; nothing is downloaded.

Configuration (``data.augment`` of the trainer, see ``docs/data.md``)::

    noise:     {prob: 0.5, snr_db: [5, 30], colours: [white, pink, brown, hum]}
    reverb:    {prob: 0.3, rt60: [0.2, 0.8], drr_db: [0, 10]}
    telephone: {prob: 0.1, band_pass: true, mu_law: true}
    gain:      {prob: 0.5, db: [-12, 6]}

A missing or null sub-key turns that augmentation off; ``{}`` or ``true`` turns it on with
the defaults above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .audio import SAMPLE_RATE

COLOURS = ("white", "pink", "brown", "hum")
# 60 dB of decay is a factor 1000 in amplitude: exp(-ln(1000) t / rt60)
_LN_1000 = math.log(1000.0)
_EPS = 1e-12
# torchaudio's default sinc (width 6, rolloff 0.99) leaves only ~33 dB between the 8 kHz
# band and its images at 16 kHz; a longer, earlier-cut kernel keeps them > 50 dB down.
_RESAMPLE = {"lowpass_filter_width": 16, "rolloff": 0.95}


# --------------------------------------------------------------------------- the pure functions
def _af():
    # imported when first used, as elsewhere in asrkd.data: importing the package stays light
    import torchaudio.functional

    return torchaudio.functional


def coloured_noise(n: int, colour: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise of ``n`` samples at 16 kHz with unit RMS (zeros if ``n`` is too short to have any).

    ``colour``: ``white`` (flat), ``pink`` (-3 dB/octave), ``brown`` (-6 dB/octave), or
    ``hum`` (mains hum: a 50 or 60 Hz fundamental with decaying harmonics and random phases).
    Returns ``(n,)`` float32.
    """
    if colour == "hum":
        return _unit_rms(_hum(n, generator))
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}.get(colour)
    if exponent is None:
        raise ValueError(f"unknown noise colour {colour!r}; expected one of {', '.join(COLOURS)}")
    white = torch.randn(n, generator=generator)
    if exponent == 0.0 or n < 2:
        return _unit_rms(white)
    # shape the spectrum of white noise: amplitude ~ f^-exponent (power ~ 1/f for pink, 1/f^2 brown)
    spectrum = torch.fft.rfft(white)
    shape = torch.zeros(spectrum.numel())
    shape[1:] = torch.arange(1, spectrum.numel(), dtype=torch.float32) ** -exponent  # no DC offset
    spectrum = spectrum * shape
    return _unit_rms(torch.fft.irfft(spectrum, n=n))


def _hum(n: int, generator: torch.Generator | None) -> torch.Tensor:
    fundamental = 50.0 if torch.rand((), generator=generator) < 0.5 else 60.0
    t = torch.arange(n, dtype=torch.float32) / SAMPLE_RATE
    phases = 2 * math.pi * torch.rand(8, generator=generator)
    harmonics = torch.arange(1, 9, dtype=torch.float32)
    tones = torch.sin(2 * math.pi * fundamental * harmonics[:, None] * t[None] + phases[:, None])
    return (tones / harmonics[:, None]).sum(0)  # 1/k amplitudes: a buzzy, mostly low hum


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    rms = x.pow(2).mean().sqrt() if x.numel() else x.new_zeros(())
    return x / rms if rms > _EPS else torch.zeros_like(x)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``wave + a * noise`` with ``a`` such that the signal-to-noise ratio (mean powers) is ``snr_db``.

    ``wave``, ``noise``: ``(N,)``; returns ``(N,)``. Silent input (or silent noise) is returned
    unchanged: no SNR is defined, and scaling by 0/0 would give NaN.
    """
    if noise.shape != wave.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != wave shape {tuple(wave.shape)}")
    p_signal, p_noise = wave.pow(2).mean(), noise.pow(2).mean()
    if wave.numel() == 0 or p_signal <= _EPS or p_noise <= _EPS:
        return wave.clone()
    scale = torch.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return wave + scale * noise.to(wave.dtype)


def synthetic_rir(
    rt60: float, sample_rate: int = SAMPLE_RATE, generator: torch.Generator | None = None, drr_db: float = 3.0
) -> torch.Tensor:
    """A synthetic room impulse response ``(L,)``, ``L = round(rt60 * sample_rate)`` (at least 2).

    The direct path (1.0) is at index 0, so convolving does not delay the speech; the tail is
    Gaussian noise under an exponential envelope that falls 60 dB in ``rt60`` seconds (the
    late reverberation of a diffuse room), scaled so the direct-to-reverberant energy ratio
    is ``drr_db``.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be > 0 s, got {rt60}")
    length = max(2, int(round(rt60 * sample_rate)))
    t = torch.arange(1, length, dtype=torch.float32) / sample_rate
    tail = torch.randn(length - 1, generator=generator) * torch.exp(-_LN_1000 * t / rt60)
    tail = tail * torch.sqrt(10.0 ** (-drr_db / 10.0) / tail.pow(2).sum().clamp(min=_EPS))
    return torch.cat([torch.ones(1), tail])


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """``wave (N,)`` convolved with ``rir (L,)``, cut to the first ``N`` samples: ``(N,)``.

    The reverberant tail past the end is dropped, so the length (and, with the direct path
    at ``rir[0]``, the timing) is that of the input.
    """
    if wave.numel() == 0:
        return wave.clone()
    return _af().fftconvolve(wave, rir.to(wave.dtype))[: wave.numel()]


def mu_law(wave: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """8-bit (``channels`` levels) μ-law encode + decode of ``wave (N,)`` in [-1, 1]: ``(N,)``
    with at most ``channels`` distinct values (G.711's companding, as a telephone codec)."""
    return _af().mu_law_decoding(_af().mu_law_encoding(wave.clamp(-1.0, 1.0), channels), channels).to(wave.dtype)


def telephone(
    wave: torch.Tensor, sample_rate: int = SAMPLE_RATE, *, band_pass: bool = True, mu_law_codec: bool = True
) -> torch.Tensor:
    """A narrow-band telephone channel: ``wave (N,)`` -> 8 kHz -> (300-3400 Hz band-pass) ->
    (8-bit μ-law) -> back to ``sample_rate``, ``(N,)``. Resampling is zero-phase, so the
    timing is kept; the biquads shift it by well under a frame."""
    n = wave.numel()
    if n == 0:
        return wave.clone()
    # torchaudio's biquads clamp to [-1, 1]: scale a loud (e.g. reverberated) input down instead
    narrow = _peak_protect(_af().resample(wave, sample_rate, 8000, **_RESAMPLE))
    if band_pass:
        narrow = _af().lowpass_biquad(_af().highpass_biquad(narrow, 8000, 300.0), 8000, 3400.0)
    if mu_law_codec:
        narrow = mu_law(_peak_protect(narrow))
    wide = _af().resample(narrow, 8000, sample_rate, **_RESAMPLE)
    # 8 kHz holds ceil(N / 2) samples: back at 16 kHz that is N or N + 1
    return torch.nn.functional.pad(wide, (0, max(0, n - wide.numel())))[:n]


def apply_gain(wave: torch.Tensor, db: float) -> torch.Tensor:
    """``wave (N,)`` scaled by ``db`` decibels, then scaled down if needed so that ``|x| <= 1``."""
    return _peak_protect(wave * 10.0 ** (db / 20.0))


def _peak_protect(wave: torch.Tensor) -> torch.Tensor:
    # Scaling the whole utterance down keeps its shape; hard clipping would add distortion.
    peak = wave.abs().max() if wave.numel() else wave.new_zeros(())
    return wave / peak if peak > 1.0 else wave


# --------------------------------------------------------------------------- configuration
def _range(d: Mapping[str, Any], key: str, default: tuple[float, float], lo: float, where: str) -> tuple[float, float]:
    value = d.get(key, default)
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(_finite(v) for v in value)
        and lo <= value[0] <= value[1]
    )
    if not ok:
        bound = f"{lo:g} <= low <= high" if math.isfinite(lo) else "low <= high"
        raise ValueError(
            f"augment key '{where}{key}' must be a list [low, high] of finite numbers, {bound}; got {value!r}"
        )
    return float(value[0]), float(value[1])


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _prob(d: Mapping[str, Any], default: float, where: str) -> float:
    value = d.get("prob", default)
    if not (_finite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"augment key '{where}prob' must be a number in [0, 1], got {value!r}")
    return float(value)


def _bool(d: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"augment key '{where}{key}' must be true or false, got {value!r}")
    return value


def _known(d: Mapping[str, Any], cls: type, where: str) -> None:
    names = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(f"unknown augment key '{where}{unknown[0]}' (valid: {', '.join(names)})")


@dataclass
class NoiseConfig:
    """Additive noise at a random SNR (dB, uniform in ``snr_db``) of one of ``colours``."""

    prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 30.0)
    colours: tuple[str, ...] = COLOURS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> NoiseConfig:
        _known(d, cls, where)
        colours = d.get("colours", list(cls.colours))
        if not (isinstance(colours, (list, tuple)) and colours and all(c in COLOURS for c in colours)):
            raise ValueError(
                f"augment key '{where}colours' must be a non-empty list of {', '.join(COLOURS)}, got {colours!r}"
            )
        snr = _range(d, "snr_db", cls.snr_db, -math.inf, where)
        return cls(_prob(d, cls.prob, where), snr, tuple(colours))


@dataclass
class ReverbConfig:
    """A synthetic room: RT60 (s) uniform in ``rt60``, direct-to-reverberant ratio in ``drr_db``."""

    prob: float = 0.3
    rt60: tuple[float, float] = (0.2, 0.8)
    drr_db: tuple[float, float] = (0.0, 10.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ReverbConfig:
        _known(d, cls, where)
        rt60 = _range(d, "rt60", cls.rt60, 0.0, where)
        if rt60[0] <= 0 or rt60[1] > 5.0:
            raise ValueError(f"augment key '{where}rt60' must lie in (0, 5] seconds, got {list(rt60)}")
        return cls(_prob(d, cls.prob, where), rt60, _range(d, "drr_db", cls.drr_db, -math.inf, where))


@dataclass
class TelephoneConfig:
    """A narrow-band telephone channel (see :func:`telephone`)."""

    prob: float = 0.1
    band_pass: bool = True
    mu_law: bool = True

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> TelephoneConfig:
        _known(d, cls, where)
        return cls(
            _prob(d, cls.prob, where),
            _bool(d, "band_pass", cls.band_pass, where),
            _bool(d, "mu_law", cls.mu_law, where),
        )


@dataclass
class GainConfig:
    """A recording level change of ``db`` decibels (uniform), then clip protection."""

    prob: float = 0.5
    db: tuple[float, float] = (-12.0, 6.0)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> GainConfig:
        _known(d, cls, where)
        return cls(_prob(d, cls.prob, where), _range(d, "db", cls.db, -math.inf, where))


_SECTIONS = {"reverb": ReverbConfig, "telephone": TelephoneConfig, "noise": NoiseConfig, "gain": GainConfig}


@dataclass
class AugmentConfig:
    """Which augmentations :class:`WaveAugment` applies (``None``: that one is off)."""

    reverb: ReverbConfig | None = None
    telephone: TelephoneConfig | None = None
    noise: NoiseConfig | None = None
    gain: GainConfig | None = None

    @classmethod
    def default(cls) -> AugmentConfig:
        """All four on with their default settings."""
        return cls(ReverbConfig(), TelephoneConfig(), NoiseConfig(), GainConfig())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, prefix: str = "") -> AugmentConfig:
        """From a mapping like the module docstring's; ``prefix`` (e.g. ``"data.augment."``) is put
        before the key names in the ``ValueError`` raised for an unknown key or a bad value."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ValueError(f"augment key '{prefix.rstrip('.') or 'augment'}' must be a mapping, got {d!r}")
        unknown = [k for k in d if k not in _SECTIONS]
        if unknown:
            raise ValueError(f"unknown augment key '{prefix}{unknown[0]}' (valid: {', '.join(_SECTIONS)})")
        return cls(**{name: _section(sub, d.get(name), f"{prefix}{name}.") for name, sub in _SECTIONS.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if v is None else _plain(asdict(v))) for k, v in vars(self).items()}

    @property
    def enabled(self) -> bool:
        return any(v is not None and v.prob > 0 for v in vars(self).values())


def _section(cls: type, value: Any, where: str):
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if not isinstance(value, Mapping):
        raise ValueError(f"augment key '{where.rstrip('.')}' must be a mapping, true or null (off), got {value!r}")
    return cls.from_dict(value, where)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}  # lists survive YAML/JSON


# --------------------------------------------------------------------------- the transform
@dataclass
class WaveAugment:
    """Applies an :class:`AugmentConfig` to one waveform.

    ``__call__(wave (N,) float32 16 kHz, generator=None) -> (N,)``: the same length, the same
    timing. :meth:`apply` also returns what was applied (name -> its drawn parameters).
    """

    config: AugmentConfig = field(default_factory=AugmentConfig)
    sample_rate: int = SAMPLE_RATE

    def __call__(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(wave, generator)[0]

    def apply(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        if wave.dim() != 1:
            raise ValueError(f"WaveAugment expects a (N,) waveform, got shape {tuple(wave.shape)}")
        c, g, applied = self.config, generator, {}
        # Order of a real recording chain: the room acts on the voice (reverb), the channel on
        # the reverberant voice (telephone); noise comes after the channel so the drawn SNR is
        # the SNR the model hears; the level (gain) and its clip protection come last.
        with torch.no_grad():
            x = wave
            if _draw(c.reverb, g):
                rt60, drr = _uniform(c.reverb.rt60, g), _uniform(c.reverb.drr_db, g)
                x = reverberate(x, synthetic_rir(rt60, self.sample_rate, g, drr))
                applied["reverb"] = {"rt60": rt60, "drr_db": drr}
            if _draw(c.telephone, g):
                x = telephone(x, self.sample_rate, band_pass=c.telephone.band_pass, mu_law_codec=c.telephone.mu_law)
                applied["telephone"] = {}
            if _draw(c.noise, g):
                colour = c.noise.colours[int(torch.randint(len(c.noise.colours), (), generator=g))]
                snr = _uniform(c.noise.snr_db, g)
                x = add_noise(x, coloured_noise(x.numel(), colour, g).to(x.dtype), snr)
                applied["noise"] = {"colour": colour, "snr_db": snr}
            if _draw(c.gain, g):
                db = _uniform(c.gain.db, g)
                x = apply_gain(x, db)
                applied["gain"] = {"db": db}
        return x.to(wave.dtype), applied


def _draw(section, generator: torch.Generator | None) -> bool:
    return section is not None and section.prob > 0 and float(torch.rand((), generator=generator)) < section.prob


def _uniform(span: tuple[float, float], generator: torch.Generator | None) -> float:
    lo, hi = span
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


__all__ = [
    "AugmentConfig",
    "GainConfig",
    "NoiseConfig",
    "ReverbConfig",
    "TelephoneConfig",
    "WaveAugment",
    "add_noise",
    "apply_gain",
    "coloured_noise",
    "mu_law",
    "reverberate",
    "synthetic_rir",
    "telephone",
]
