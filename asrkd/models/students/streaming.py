"""Stateful chunk-by-chunk inference shared by the streaming students.

A student is a causal front-end (:class:`~asrkd.models.students.frontend.CausalConvSubsampling`),
an encoder that processes segments of ``chunk_size`` frames with ``right_context``
look-ahead frames and cached left context, and a linear CTC head. :class:`StreamingCTC`
drives the streaming: feature chunks of any size go through the front-end, its frames
wait in a buffer until a whole segment and its right context are there, then the
encoder (``_encode_segment``, one per architecture) turns the segment into logits.
``stream_flush`` runs what is left at the end of the input, with zeros as the missing
right context, exactly as ``forward`` treats the end of an utterance.

Everything here is TorchScript-compatible: ``torch.jit.script(model)`` exports the
streaming API as is (see :mod:`asrkd.models.export`).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Functional form: TorchScript cannot read the string annotations that
# `from __future__ import annotations` gives a class-style NamedTuple.
StreamState = NamedTuple(
    "StreamState",
    [
        ("frontend", List[Tensor]),
        ("encoder", List[Tensor]),
        ("buffer", Tensor),
        ("valid", Tensor),
        ("fed", int),
        ("emitted", int),
    ],
)
StreamState.__doc__ = """State carried between :meth:`StreamingCTC.stream_step` calls.

``frontend``: per-stage input frames kept by the front-end; ``encoder``: the
architecture's caches (keys/values, memory, convolution history); ``buffer`` (B, n, D):
front-end frames not yet emitted as logits (``buffer[:, 0]`` is output frame
``emitted``); ``valid`` (B,): valid feature frames fed per stream; ``fed``: feature
frames fed (all streams move in step); ``emitted``: logit frames returned so far.
"""


class StreamingCTC(nn.Module):
    """Base class of the streaming CTC students (not used on its own).

    Subclasses set ``frontend``, ``classifier`` and the attributes below in ``__init__``
    (via :meth:`_setup_streaming`) and implement ``_init_encoder_state`` and
    ``_encode_segment``.

    Attributes:
        vocab_size: output classes (V), blank = 0 by the tokenizer's convention.
        frame_rate: output frames per second.
        subsampling: input feature frames per output frame.
        chunk_size, right_context: encoder segment and look-ahead, in output frames.
        chunk_frames: input feature frames per streaming step (``chunk_size * subsampling``).
        lookahead_frames: input feature frames of right context (``right_context * subsampling``).
        algorithmic_latency_ms: (chunk_size + right_context) output frames, in ms: the
            longest a feature frame waits for its logit, the front-end adding no look-ahead.
    """

    __jit_ignored_attributes__ = ["model_kwargs"]

    def _setup_streaming(
        self,
        vocab_size: int,
        input_dim: int,
        d_model: int,
        chunk_size: int,
        right_context: int,
        subsampling: int,
        feature_rate: float,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if right_context < 0:
            raise ValueError(f"right_context must be >= 0, got {right_context}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + one symbol), got {vocab_size}")
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.d_model = d_model
        self.chunk_size = chunk_size
        self.right_context = right_context
        self.subsampling = subsampling
        self.frame_rate = float(feature_rate) / subsampling
        self.chunk_frames = chunk_size * subsampling
        self.lookahead_frames = right_context * subsampling
        self.algorithmic_latency_ms = (chunk_size + right_context) * 1000.0 / self.frame_rate

    # -- implemented by each architecture -------------------------------------------------
    def _init_encoder_state(self, batch_size: int) -> List[Tensor]:
        raise NotImplementedError

    def _encode_segment(
        self, seg: Tensor, rc: Tensor, seg_lengths: Tensor, state: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        """seg (B, n <= chunk_size, D), rc (B, right_context, D), seg_lengths (B,) valid
        frames of seg -> (encoded seg (B, n, D), new encoder state)."""
        raise NotImplementedError

    # -- shared API ------------------------------------------------------------------------
    @torch.jit.export
    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Output frames for ``lengths`` input feature frames (``forward``'s out_lengths)."""
        return torch.div(lengths, self.subsampling, rounding_mode="floor")

    @torch.jit.export
    def init_state(self, batch_size: int = 1) -> StreamState:
        """A fresh state for ``batch_size`` streams that advance together."""
        ref = self.classifier.weight
        return StreamState(
            self.frontend.init_state(batch_size, ref.device, ref.dtype),
            self._init_encoder_state(batch_size),
            ref.new_zeros(batch_size, 0, self.d_model),
            torch.zeros(batch_size, dtype=torch.long, device=ref.device),
            0,
            0,
        )

    @torch.jit.export
    def stream_step(
        self, feats: Tensor, state: StreamState, lengths: Optional[Tensor] = None
    ) -> Tuple[Tensor, StreamState]:
        """Feed feature frames, get the logits that became final.

        Args:
            feats: (B, C, F) the next C feature frames of each stream (any C >= 0;
                ``chunk_frames`` is the natural step).
            state: from :meth:`init_state` or the previous call (not modified).
            lengths: (B,) valid frames of this chunk per stream (default: all C). A stream
                whose chunk is short has ended: later chunks must give it 0 valid frames.

        Returns:
            (logits (B, C', V), new_state): C' is a multiple of ``chunk_size`` (0 until a
            segment and its right context are complete).
        """
        if feats.dim() != 3 or feats.size(2) != self.input_dim:
            raise ValueError(f"stream_step: expected features (B, C, {self.input_dim}), got {list(feats.shape)}")
        batch, n = feats.size(0), feats.size(1)
        if batch != state.valid.size(0):
            raise ValueError(f"stream_step: batch size {batch} differs from the state's {state.valid.size(0)}")
        if lengths is None:
            chunk_valid = torch.full_like(state.valid, n)
        else:
            chunk_valid = lengths.to(device=state.valid.device, dtype=torch.long)
            if chunk_valid.shape != state.valid.shape or bool(((chunk_valid < 0) | (chunk_valid > n)).any()):
                raise ValueError(f"stream_step: lengths must be (B,) in [0, {n}]")
            if bool(((chunk_valid > 0) & (state.valid < state.fed)).any()):
                raise ValueError("stream_step: a stream got valid frames after a short (final) chunk")
        valid = state.valid + chunk_valid
        x, frontend_state = self.frontend.stream(feats, state.frontend)
        # Zero frames past each stream's end: forward() does the same, and they become the
        # zero right context of a stream's last segment.
        start = state.emitted + state.buffer.size(1)
        valid_out = self.output_lengths(valid)
        pos = torch.arange(start, start + x.size(1), device=x.device)
        x = x * (pos[None, :] < valid_out[:, None]).unsqueeze(-1).to(x.dtype)
        buffer = torch.cat([state.buffer, x], dim=1)
        end = int(valid_out.max()) if batch > 0 else 0

        outs: List[Tensor] = []
        emitted = state.emitted
        encoder_state = state.encoder
        c, r = self.chunk_size, self.right_context
        # A segment runs only when it lies wholly inside the longest stream; the segment
        # holding the end waits for stream_flush, which knows it is the last.
        while buffer.size(1) >= c + r and emitted + c <= end:
            seg_lengths = (valid_out - emitted).clamp(0, c)
            y, encoder_state = self._encode_segment(buffer[:, :c], buffer[:, c : c + r], seg_lengths, encoder_state)
            outs.append(self.classifier(y))
            buffer = buffer[:, c:]
            emitted += c
        logits = torch.cat(outs, dim=1) if len(outs) > 0 else buffer.new_zeros(batch, 0, self.vocab_size)
        return logits, StreamState(frontend_state, encoder_state, buffer, valid, state.fed + n, emitted)

    @torch.jit.export
    def stream_flush(self, state: StreamState) -> Tensor:
        """End of input: the logits of the frames still held back, (B, C', V).

        Frames past the end get zeros as right context, as in ``forward``. Over a whole
        stream, the concatenated outputs of ``stream_step`` and ``stream_flush`` have
        ``max(output_lengths(lengths))`` frames and equal ``forward``'s logits.
        """
        batch = state.valid.size(0)
        valid_out = self.output_lengths(state.valid)
        end = int(valid_out.max()) if batch > 0 else 0
        buffer = state.buffer[:, : max(end - state.emitted, 0)]
        outs: List[Tensor] = []
        emitted = state.emitted
        encoder_state = state.encoder
        c, r = self.chunk_size, self.right_context
        while buffer.size(1) > 0:
            n = min(c, buffer.size(1))
            rc = buffer[:, n : n + r]
            rc = F.pad(rc, (0, 0, 0, r - rc.size(1)))
            seg_lengths = (valid_out - emitted).clamp(0, n)
            y, encoder_state = self._encode_segment(buffer[:, :n], rc, seg_lengths, encoder_state)
            outs.append(self.classifier(y))
            buffer = buffer[:, n:]
            emitted += n
        if len(outs) == 0:
            return state.buffer.new_zeros(batch, 0, self.vocab_size)
        return torch.cat(outs, dim=1)

    def stream(self, feats: Tensor, lengths: Optional[Tensor] = None, step_frames: int = 0) -> Tensor:
        """Convenience: run a whole (B, T, F) input through stream_step in steps of
        ``step_frames`` (default ``chunk_frames``) and stream_flush; returns (B, T', V)."""
        step = step_frames if step_frames > 0 else self.chunk_frames
        state = self.init_state(feats.size(0))
        outs: List[Tensor] = []
        for t0 in range(0, feats.size(1), step):
            chunk = feats[:, t0 : t0 + step]
            chunk_lengths: Optional[Tensor] = None
            if lengths is not None:
                chunk_lengths = (lengths - t0).clamp(0, chunk.size(1))
            out, state = self.stream_step(chunk, state, chunk_lengths)
            outs.append(out)
        outs.append(self.stream_flush(state))
        return torch.cat(outs, dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
