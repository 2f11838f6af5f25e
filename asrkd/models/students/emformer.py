"""Streaming Emformer CTC student: causal conv front-end + torchaudio ``Emformer`` + linear CTC head.

Training uses ``Emformer.forward`` (all segments at once, right-context blocks copied and
masked); streaming runs the same layers' ``infer`` one segment at a time, carrying
torchaudio's per-layer state (memory bank, left-context keys/values, frames seen).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from asrkd.models.checkpoint import register_model
from asrkd.models.students.frontend import CausalConvSubsampling
from asrkd.models.students.streaming import StreamingCTC


@register_model("emformer_ctc")
class EmformerCTC(StreamingCTC):
    """Emformer CTC acoustic model over log-mel features.

    Args:
        vocab_size: output classes (V).
        input_dim: feature bins (F).
        d_model, num_heads, ffn_dim, num_layers: Emformer width, heads, feed-forward width, depth.
        chunk_size: Emformer segment length, in output frames.
        right_context: look-ahead frames per segment (output frames).
        left_context: left-context frames each segment attends to (output frames).
        max_memory_size: Emformer memory-bank size (0 = no memory).
        subsampling: front-end factor (4 or 8; 2 also works).
        frontend_channels: front-end convolution channels.
        dropout: dropout in the front-end and the Emformer layers.
        activation: feed-forward activation ("relu", "gelu", "silu").
        feature_rate: input feature frames per second.

    ``forward(feats (B, T, F), lengths (B,)) -> (logits (B, T // subsampling, V), out_lengths)``.
    """

    def __init__(
        self,
        vocab_size: int,
        input_dim: int = 80,
        d_model: int = 144,
        num_heads: int = 4,
        ffn_dim: int = 576,
        num_layers: int = 6,
        chunk_size: int = 6,
        right_context: int = 1,
        left_context: int = 48,
        max_memory_size: int = 0,
        subsampling: int = 4,
        frontend_channels: int = 32,
        dropout: float = 0.1,
        activation: str = "gelu",
        feature_rate: float = 100.0,
    ):
        super().__init__()
        self.model_kwargs = dict(
            vocab_size=vocab_size, input_dim=input_dim, d_model=d_model, num_heads=num_heads,
            ffn_dim=ffn_dim, num_layers=num_layers, chunk_size=chunk_size, right_context=right_context,
            left_context=left_context, max_memory_size=max_memory_size, subsampling=subsampling,
            frontend_channels=frontend_channels, dropout=dropout, activation=activation,
            feature_rate=feature_rate,
        )  # fmt: skip
        if left_context < 0 or max_memory_size < 0:
            raise ValueError("left_context and max_memory_size must be >= 0")
        self._setup_streaming(vocab_size, input_dim, d_model, chunk_size, right_context, subsampling, feature_rate)
        self.frontend = CausalConvSubsampling(input_dim, d_model, frontend_channels, subsampling, dropout)
        self.encoder = torchaudio.models.Emformer(
            d_model,
            num_heads,
            ffn_dim,
            num_layers,
            segment_length=chunk_size,
            dropout=dropout,
            activation=activation,
            left_context_length=left_context,
            right_context_length=right_context,
            max_memory_size=max_memory_size,
        )
        self.classifier = nn.Linear(d_model, vocab_size)
        self.num_layers = num_layers
        self.left_context = left_context
        self.max_memory_size = max_memory_size

    def forward(self, feats: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> (logits (B, T', V), out_lengths (B,)), T' = max(out_lengths)."""
        x, out_lengths = self.frontend(feats, lengths)
        t_out = int(out_lengths.max()) if x.size(0) > 0 else 0
        if t_out == 0:
            return x.new_zeros(x.size(0), 0, self.vocab_size), out_lengths
        # Emformer takes the utterance followed by the last segment's right context: zeros,
        # which is also what stream_flush feeds after the end.
        x = F.pad(x[:, :t_out], (0, 0, 0, self.right_context))
        y, _ = self.encoder(x, out_lengths)
        return self.classifier(y), out_lengths

    def _init_encoder_state(self, batch_size: int) -> List[Tensor]:
        # torchaudio's per-layer state: [memory (M, B, D), left-context keys (L, B, D),
        # left-context values (L, B, D), frames seen (1, B) int32].
        ref = self.classifier.weight
        state: List[Tensor] = []
        for _ in range(self.num_layers):
            state.append(ref.new_zeros(self.max_memory_size, batch_size, self.d_model))
            state.append(ref.new_zeros(self.left_context, batch_size, self.d_model))
            state.append(ref.new_zeros(self.left_context, batch_size, self.d_model))
            state.append(torch.zeros(1, batch_size, dtype=torch.int32, device=ref.device))
        return state

    def _encode_segment(
        self, seg: Tensor, rc: Tensor, seg_lengths: Tensor, state: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        # Emformer.infer insists on full segments; the last one of a stream is shorter, so
        # this is its loop over the layers without that check. With a batch, torchaudio
        # masks keys past seg_lengths; it reads the segment length from max(seg_lengths),
        # which the caller guarantees equals seg.size(1).
        utterance = seg.transpose(0, 1)
        right_context = rc.transpose(0, 1)
        if self.encoder.use_mem:
            mems = self.encoder.memory_op(utterance.permute(1, 2, 0)).permute(2, 0, 1)
        else:
            mems = torch.empty(0, dtype=seg.dtype, device=seg.device)
        out = utterance
        new_state: List[Tensor] = []
        for i, layer in enumerate(self.encoder.emformer_layers):
            layer_state = [state[4 * i], state[4 * i + 1], state[4 * i + 2], state[4 * i + 3]]
            out, right_context, layer_state, mems = layer.infer(out, seg_lengths, right_context, layer_state, mems)
            new_state.extend(layer_state)
        return out.transpose(0, 1), new_state
