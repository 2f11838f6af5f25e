"""Convolutional subsampling front-end that streams exactly.

A stack of 3×3 ``Conv2d`` stages with stride 2 over (time, frequency), each followed by
ReLU, then a linear projection of ``channels × frequency`` to the model width. Unlike the
usual Conformer front-end, the time axis is *causal*: output frame ``j`` of a stage is
computed from input frames ``2j-1, 2j, 2j+1`` (one frame of zero padding on the left), so
it never needs a frame past the last one it covers. Streaming therefore needs no
look-ahead, and each stage only keeps the input frames its next window starts with.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_KERNEL = 3
_STRIDE = 2


class CausalConvSubsampling(nn.Module):
    """Subsample log-mel frames by ``factor`` (2, 4 or 8) with causal 2-D convolutions.

    Args:
        input_dim: feature bins per frame (F).
        d_model: output width (D).
        channels: convolution channels of every stage.
        factor: time subsampling, 2 ** number of stages.
        dropout: dropout after the projection (training only).

    ``forward(feats (B, T, F), lengths (B,)) -> (x (B, T // factor, D), lengths // factor)``;
    frames past a sequence's length are zeroed. ``stream(feats_chunk (B, C, F), state)``
    gives the same frames chunk by chunk, for any chunk sizes.
    """

    def __init__(self, input_dim: int, d_model: int, channels: int = 32, factor: int = 4, dropout: float = 0.0):
        super().__init__()
        stages = {2: 1, 4: 2, 8: 3}.get(factor)
        if stages is None:
            raise ValueError(f"subsampling factor must be 2, 4 or 8, got {factor}")
        freqs = [input_dim]
        convs = []
        in_ch = 1
        for _ in range(stages):
            out_f = (freqs[-1] - _KERNEL) // _STRIDE + 1
            if out_f < 1:
                raise ValueError(f"input_dim={input_dim} is too small for {factor}x subsampling")
            convs.append(nn.Conv2d(in_ch, channels, _KERNEL, stride=_STRIDE))
            freqs.append(out_f)
            in_ch = channels
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Linear(channels * freqs[-1], d_model)
        self.dropout = nn.Dropout(dropout)
        self.input_dim = input_dim
        self.channels = channels
        self.factor = factor
        self.freqs: List[int] = freqs  # frequency size at the input of each stage (+ output)
        self.kernel = _KERNEL
        self.stride = _STRIDE
        # Frames a stage keeps from the past: its window reaches kernel - stride frames back.
        self.history = _KERNEL - _STRIDE

    def _windows(self, t: int) -> int:
        # Output frames of a stage whose input (history included) has t frames.
        return (t - self.kernel) // self.stride + 1 if t >= self.kernel else 0

    def _project(self, x: Tensor) -> Tensor:
        # (B, C, t, F') -> (B, t, D)
        b, c, t, f = x.shape
        return self.dropout(self.proj(x.transpose(1, 2).reshape(b, t, c * f)))

    def forward(self, feats: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> (x (B, T // factor, D), out_lengths (B,))."""
        if feats.dim() != 3 or feats.size(2) != self.input_dim:
            raise ValueError(f"expected features (B, T, {self.input_dim}), got {list(feats.shape)}")
        if lengths.shape != (feats.size(0),):
            raise ValueError(f"expected lengths ({feats.size(0)},), got {list(lengths.shape)}")
        if feats.size(0) > 0 and bool(((lengths < 0) | (lengths > feats.size(1))).any()):
            raise ValueError(f"lengths must lie in [0, {feats.size(1)}] (the feature frames given)")
        x = feats.unsqueeze(1)
        for i, conv in enumerate(self.convs):
            x = F.pad(x, (0, 0, self.history, 0))
            n_out = self._windows(x.size(2))
            if n_out > 0:
                x = F.relu(conv(x[:, :, : (n_out - 1) * self.stride + self.kernel]))
            else:
                x = x.new_zeros(x.size(0), self.channels, 0, self.freqs[i + 1])
        x = self._project(x)
        out_lengths = torch.div(lengths, self.factor, rounding_mode="floor")
        keep = torch.arange(x.size(1), device=x.device)[None, :] < out_lengths[:, None]
        return x * keep.unsqueeze(-1).to(x.dtype), out_lengths

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> List[Tensor]:
        """Per stage, the input frames its next window starts with (zeros = left padding)."""
        state: List[Tensor] = []
        for i in range(len(self.freqs) - 1):
            ch = 1 if i == 0 else self.channels
            state.append(torch.zeros(batch_size, ch, self.history, self.freqs[i], device=device, dtype=dtype))
        return state

    def stream(self, feats: Tensor, state: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """feats (B, C, F) -> (x (B, C', D), new_state); concatenating the outputs of all
        chunks equals ``forward`` on the concatenated input (C' may be 0)."""
        x = feats.unsqueeze(1)
        new_state: List[Tensor] = []
        for i, conv in enumerate(self.convs):
            buf = torch.cat([state[i], x], dim=2)
            n_out = self._windows(buf.size(2))
            if n_out > 0:
                x = F.relu(conv(buf[:, :, : (n_out - 1) * self.stride + self.kernel]))
            else:
                x = buf.new_zeros(buf.size(0), self.channels, 0, self.freqs[i + 1])
            new_state.append(buf[:, :, n_out * self.stride :])
        return self._project(x), new_state
