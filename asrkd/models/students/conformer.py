"""Chunked Conformer CTC student: causal conv front-end + chunk-causal Conformer blocks + CTC head.

Each block is FFN/2 → MHSA → convolution module → FFN/2 → LayerNorm (as torchaudio's
``ConformerLayer``), made streamable:

* attention: frames of chunk ``c`` attend to chunks ``c - left_chunks .. c`` and to the
  chunk's ``right_context`` look-ahead frames;
* look-ahead is Emformer-style: each chunk gets a *copy* of the next ``right_context``
  frames, encoded from what the chunk sees only, so the look-ahead does not grow with
  depth. The real frames are encoded again, as part of the next chunk;
* the depthwise convolution is causal (left-padded), and its normalisation is LayerNorm
  (BatchNorm would mix padding into the statistics and differ between batch and stream).

There is no positional encoding (as in torchaudio's Conformer): the causal convolutions
give the order. ``forward`` computes every chunk at once with a block mask; streaming
keeps per layer the keys/values of the last ``left_chunks`` chunks and the convolution's
last ``kernel_size - 1`` inputs, and gives the same logits.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asrkd.models.checkpoint import register_model
from asrkd.models.students.frontend import CausalConvSubsampling
from asrkd.models.students.streaming import StreamingCTC


class _FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ffn_dim),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CausalConvModule(nn.Module):
    """Conformer convolution module with a causal depthwise convolution.

    ``forward(x (B, n_u + n_r, D), n_u, history (B, K-1, D), rc_end (B, N))``: the first
    ``n_u`` frames are real frames, preceded by ``history`` (the depthwise input of the
    ``K-1`` frames before them); the other ``n_r = N * R`` frames are N right-context
    copies of R frames, copy ``i`` following the real frames up to (excluding) position
    ``rc_end[:, i]``. Returns (out (B, n_u + n_r, D), new history (B, K-1, D)).
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model)
        self.conv_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.history = kernel_size - 1

    def _depthwise(self, x: Tensor) -> Tensor:
        # (B', t, D) -> (B', t - K + 1, D)
        return self.depthwise(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: Tensor, n_u: int, history: Tensor, rc_end: Tensor) -> Tuple[Tensor, Tensor]:
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        full = torch.cat([history, y[:, :n_u]], dim=1)  # (B, K-1 + n_u, D)
        out = self._depthwise(full)
        n_r = y.size(1) - n_u
        if n_r > 0:
            b, n_chunks, d = y.size(0), rc_end.size(1), y.size(2)
            r = n_r // n_chunks
            # Copy i sees the K-1 real frames before rc_end[:, i], i.e. full[rc_end : rc_end + K-1].
            idx = rc_end[:, :, None] + torch.arange(self.history, device=y.device)
            idx = idx.reshape(b, n_chunks * self.history, 1).expand(-1, -1, d)
            hist = torch.gather(full, 1, idx).reshape(b, n_chunks, self.history, d)
            copies = torch.cat([hist, y[:, n_u:].reshape(b, n_chunks, r, d)], dim=2)
            out_r = self._depthwise(copies.reshape(b * n_chunks, self.history + r, d)).reshape(b, n_r, d)
            out = torch.cat([out, out_r], dim=1)
        out = self.pointwise_out(F.silu(self.conv_norm(out)))
        return self.dropout(out), full[:, full.size(1) - self.history :]


class ChunkedConformerLayer(nn.Module):
    """One Conformer block over real frames and right-context copies.

    ``forward(x (B, n_u + n_r, D), n_u, mask (B, 1, n_u + n_r, L + n_u + n_r) bool (True =
    attend), k_cache, v_cache (B, H, L, D/H), conv_history (B, K-1, D), rc_end (B, N))``
    -> (x, keys and values of the n_u real frames (B, H, n_u, D/H), new conv history).
    """

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, kernel_size: int, dropout: float):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads})")
        self.ffn1 = _FeedForward(d_model, ffn_dim, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = CausalConvModule(d_model, kernel_size, dropout)
        self.ffn2 = _FeedForward(d_model, ffn_dim, dropout)
        self.final_norm = nn.LayerNorm(d_model)
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout_p = dropout

    def forward(
        self,
        x: Tensor,
        n_u: int,
        mask: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        conv_history: Tensor,
        rc_end: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        b, t, d = x.shape
        x = x + 0.5 * self.ffn1(x)
        qkv = self.qkv(self.attn_norm(x)).reshape(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, t, D/H)
        a = F.scaled_dot_product_attention(
            q,
            torch.cat([k_cache, k], dim=2),
            torch.cat([v_cache, v], dim=2),
            attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        x = x + self.attn_dropout(self.attn_out(a.transpose(1, 2).reshape(b, t, d)))
        conv_out, conv_history = self.conv(x, n_u, conv_history, rc_end)
        x = x + conv_out
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x), k[:, :, :n_u], v[:, :, :n_u], conv_history


@register_model("conformer_ctc")
class ConformerCTC(StreamingCTC):
    """Chunked Conformer CTC acoustic model over log-mel features.

    Args:
        vocab_size: output classes (V).
        input_dim: feature bins (F).
        d_model, num_heads, ffn_dim, num_layers: width, heads, feed-forward width, depth.
        kernel_size: causal depthwise convolution kernel (output frames).
        chunk_size: attention chunk, in output frames.
        right_context: look-ahead frames per chunk (output frames, 0 = none).
        left_chunks: previous chunks each chunk attends to (-1 = all: memory grows with the stream).
        subsampling: front-end factor (4 or 8; 2 also works).
        frontend_channels: front-end convolution channels.
        dropout: dropout everywhere (training only).
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
        num_layers: int = 4,
        kernel_size: int = 15,
        chunk_size: int = 6,
        right_context: int = 1,
        left_chunks: int = 8,
        subsampling: int = 4,
        frontend_channels: int = 32,
        dropout: float = 0.1,
        feature_rate: float = 100.0,
    ):
        super().__init__()
        self.model_kwargs = dict(
            vocab_size=vocab_size, input_dim=input_dim, d_model=d_model, num_heads=num_heads,
            ffn_dim=ffn_dim, num_layers=num_layers, kernel_size=kernel_size, chunk_size=chunk_size,
            right_context=right_context, left_chunks=left_chunks, subsampling=subsampling,
            frontend_channels=frontend_channels, dropout=dropout, feature_rate=feature_rate,
        )  # fmt: skip
        if left_chunks < -1:
            raise ValueError(f"left_chunks must be >= -1, got {left_chunks}")
        self._setup_streaming(vocab_size, input_dim, d_model, chunk_size, right_context, subsampling, feature_rate)
        self.frontend = CausalConvSubsampling(input_dim, d_model, frontend_channels, subsampling, dropout)
        self.layers = nn.ModuleList(
            [ChunkedConformerLayer(d_model, num_heads, ffn_dim, kernel_size, dropout) for _ in range(num_layers)]
        )
        self.classifier = nn.Linear(d_model, vocab_size)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.left_chunks = left_chunks

    def _full_mask(self, t: int, n_chunks: int, lengths: Tensor) -> Tensor:
        """(B, 1, T + N*R, T + N*R) attention mask of forward: real frames first, then the
        right-context copies of chunk 0, 1, ..."""
        c, r = self.chunk_size, self.right_context
        dev = lengths.device
        u_chunk = torch.div(torch.arange(t, device=dev), c, rounding_mode="floor")
        r_chunk = torch.div(torch.arange(n_chunks * r, device=dev), max(r, 1), rounding_mode="floor")
        q_chunk = torch.cat([u_chunk, r_chunk])
        to_real = u_chunk[None, :] <= q_chunk[:, None]
        if self.left_chunks >= 0:
            to_real = to_real & (u_chunk[None, :] >= q_chunk[:, None] - self.left_chunks)
        to_real = to_real[None] & (torch.arange(t, device=dev)[None, None, :] < lengths[:, None, None])
        to_copies = (r_chunk[None, :] == q_chunk[:, None])[None].expand(lengths.size(0), -1, -1)
        mask = torch.cat([to_real, to_copies], dim=2)
        # Padding rows must see something (softmax over nothing is NaN); valid rows already see themselves.
        mask = mask | torch.eye(t + n_chunks * r, dtype=torch.bool, device=dev)[None]
        return mask.unsqueeze(1)

    def forward(self, feats: Tensor, lengths: Tensor) -> Tuple[Tensor, Tensor]:
        """feats (B, T, F), lengths (B,) -> (logits (B, T', V), out_lengths (B,)), T' = max(out_lengths)."""
        x, out_lengths = self.frontend(feats, lengths)
        b = x.size(0)
        t = int(out_lengths.max()) if b > 0 else 0
        if t == 0:
            return x.new_zeros(b, 0, self.vocab_size), out_lengths
        x = x[:, :t]
        c, r = self.chunk_size, self.right_context
        n_chunks = (t + c - 1) // c
        starts = torch.arange(1, n_chunks + 1, device=x.device) * c
        if r > 0:
            # Copy of chunk i = the r frames after it; frames past the end are zeros
            # (x is zero past each length, and position t of the padded x is zero).
            idx = (starts[:, None] + torch.arange(r, device=x.device)).clamp(max=t).reshape(-1)
            h = torch.cat([x, F.pad(x, (0, 0, 0, 1))[:, idx]], dim=1)
        else:
            h = x
        mask = self._full_mask(t, n_chunks, out_lengths)
        rc_end = torch.minimum(starts[None, :], out_lengths[:, None])
        empty_kv = x.new_zeros(b, self.num_heads, 0, self.d_model // self.num_heads)
        history = x.new_zeros(b, self.kernel_size - 1, self.d_model)
        for layer in self.layers:
            h, _, _, _ = layer(h, t, mask, empty_kv, empty_kv, history, rc_end)
        return self.classifier(h[:, :t]), out_lengths

    def _init_encoder_state(self, batch_size: int) -> List[Tensor]:
        # Per layer: keys, values (B, H, L, D/H) of the left context, conv history (B, K-1, D).
        ref = self.classifier.weight
        state: List[Tensor] = []
        for _ in range(self.num_layers):
            state.append(ref.new_zeros(batch_size, self.num_heads, 0, self.d_model // self.num_heads))
            state.append(ref.new_zeros(batch_size, self.num_heads, 0, self.d_model // self.num_heads))
            state.append(ref.new_zeros(batch_size, self.kernel_size - 1, self.d_model))
        return state

    def _encode_segment(
        self, seg: Tensor, rc: Tensor, seg_lengths: Tensor, state: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        b, n = seg.size(0), seg.size(1)
        r = rc.size(1)
        cached = state[0].size(2)
        dev = seg.device
        # Keys: [cache, chunk (valid up to seg_lengths), copies]; a row always sees itself.
        key_ok = torch.cat(
            [
                torch.ones(b, cached, dtype=torch.bool, device=dev),
                torch.arange(n, device=dev)[None, :] < seg_lengths[:, None],
                torch.ones(b, r, dtype=torch.bool, device=dev),
            ],
            dim=1,
        )
        diag = torch.arange(cached + n + r, device=dev)[None, :] == torch.arange(n + r, device=dev)[:, None] + cached
        mask = (key_ok[:, None, :] | diag[None]).unsqueeze(1)
        rc_end = seg_lengths.clamp(0, n)[:, None]
        h = torch.cat([seg, rc], dim=1)
        keep = self.left_chunks * self.chunk_size
        new_state: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            h, k, v, history = layer(h, n, mask, state[3 * i], state[3 * i + 1], state[3 * i + 2], rc_end)
            k = torch.cat([state[3 * i], k], dim=2)
            v = torch.cat([state[3 * i + 1], v], dim=2)
            if keep >= 0:
                k = k[:, :, max(k.size(2) - keep, 0) :]
                v = v[:, :, max(v.size(2) - keep, 0) :]
            new_state.extend([k, v, history])
        return h[:, :n], new_state
