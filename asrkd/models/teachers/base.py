"""The frozen-teacher wrapper every adapter returns."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

SAMPLE_RATE = 16000


def check_waves(waves: torch.Tensor, lengths: torch.Tensor) -> None:
    """Validate a padded waveform batch ``(B, N)`` float and its ``lengths (B,)`` int."""
    if waves.dim() != 2 or not waves.is_floating_point():
        raise ValueError(f"waves must be a float tensor (B, samples), got {tuple(waves.shape)} {waves.dtype}")
    if lengths.dim() != 1 or lengths.size(0) != waves.size(0) or lengths.is_floating_point():
        raise ValueError(f"lengths must be an int tensor ({waves.size(0)},), got {tuple(lengths.shape)} {lengths.dtype}")
    if lengths.numel() and (int(lengths.max()) > waves.size(1) or int(lengths.min()) <= 0):
        raise ValueError(
            f"lengths must lie in [1, {waves.size(1)}] (the padded length), got min {int(lengths.min())} "
            f"max {int(lengths.max())}"
        )


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


class FrozenTeacher(nn.Module):
    """A pretrained acoustic model seen as a teacher: waves in, CTC logits out, never trained.

    ``forward(waves (B, N) float 16 kHz, lengths (B,) int) -> (logits (B, T_t, V_t) float32,
    out_lengths (B,) int64)``. The module stays in eval mode (``train()`` is a no-op, so a
    parent's ``.train()`` cannot switch on its dropout) and its parameters have
    ``requires_grad=False``; the forward runs under ``torch.no_grad``.

    Attributes: ``frame_rate`` (output frames per second), ``vocab`` (id -> symbol),
    ``blank_id``, ``sample_rate`` (16000), ``spec`` (what it was loaded from), ``model``
    (the wrapped module, whose forward has the same signature).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        vocab: Sequence[str],
        blank_id: int,
        frame_rate: float,
        spec: str = "",
    ):
        super().__init__()
        vocab = [str(v) for v in vocab]
        if not 0 <= blank_id < len(vocab):
            raise ValueError(f"blank_id {blank_id} outside the vocabulary of {len(vocab)} symbols")
        self.model = freeze(model)
        self.vocab = vocab
        self.blank_id = int(blank_id)
        self.frame_rate = float(frame_rate)
        self.sample_rate = SAMPLE_RATE
        self.spec = spec
        self.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_waves(waves, lengths)
        lengths = lengths.to(waves.device)
        with torch.no_grad():
            logits, out_lengths = self.model(waves, lengths)
        if logits.size(-1) != len(self.vocab):
            raise RuntimeError(
                f"teacher {self.spec!r} returned {logits.size(-1)} classes but its vocabulary has {len(self.vocab)}"
            )
        return logits.float(), out_lengths.to(torch.int64)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, vocab={len(self.vocab)}, blank_id={self.blank_id}, frame_rate={self.frame_rate}"
