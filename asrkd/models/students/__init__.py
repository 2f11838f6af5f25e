"""Streaming CTC students: Emformer and chunked Conformer, with stateful chunk-by-chunk inference.

::

    model = build_student("conformer", "xs", vocab_size=30).eval()
    state = model.init_state(batch_size=1)
    logits, state = model.stream_step(feats[:, : model.chunk_frames], state)  # (1, C', 30)
    tail = model.stream_flush(state)

Both students share the causal convolutional front-end (4x subsampling by default, 8x as
an option), the streaming driver (:class:`StreamingCTC`) and the model protocol of
``docs/internals.md``; their checkpoints rebuild through :func:`asrkd.models.checkpoint.load_model`
(archs ``"emformer_ctc"`` and ``"conformer_ctc"``).
"""

from __future__ import annotations

from typing import Any

from asrkd.models.students.conformer import ConformerCTC
from asrkd.models.students.emformer import EmformerCTC
from asrkd.models.students.frontend import CausalConvSubsampling
from asrkd.models.students.streaming import StreamingCTC, StreamState, count_parameters

__all__ = [
    "ARCHS",
    "SIZES",
    "CausalConvSubsampling",
    "ConformerCTC",
    "EmformerCTC",
    "StreamState",
    "StreamingCTC",
    "build_student",
    "count_parameters",
]

# arch name of build_student -> (registered checkpoint arch, class)
ARCHS: dict[str, tuple[str, type[StreamingCTC]]] = {
    "emformer": ("emformer_ctc", EmformerCTC),
    "conformer": ("conformer_ctc", ConformerCTC),
}

# Named sizes. Parameter counts with 80 mel bins and 30 output classes are in
# docs/students.md (tests/test_students.py checks the ranges). The mini recipe's teacher
# (Whisper tiny.en encoder + CTC head) has ~7.6 M parameters: "xs" stays under 1/5 of it.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "emformer": {
        "xs": dict(d_model=144, num_heads=4, ffn_dim=576, num_layers=5, frontend_channels=32),
        "s": dict(d_model=176, num_heads=4, ffn_dim=704, num_layers=8, frontend_channels=48),
        "m": dict(d_model=256, num_heads=4, ffn_dim=1024, num_layers=12, frontend_channels=64),
    },
    "conformer": {
        "xs": dict(d_model=128, num_heads=4, ffn_dim=384, num_layers=4, kernel_size=15, frontend_channels=32),
        "s": dict(d_model=144, num_heads=4, ffn_dim=576, num_layers=6, kernel_size=15, frontend_channels=48),
        "m": dict(d_model=224, num_heads=4, ffn_dim=896, num_layers=8, kernel_size=15, frontend_channels=64),
    },
}


def build_student(arch: str, size: str, vocab_size: int, **overrides: Any) -> StreamingCTC:
    """Build a streaming student.

    Args:
        arch: ``"emformer"`` or ``"conformer"`` (``"emformer_ctc"`` / ``"conformer_ctc"`` too).
        size: ``"xs"``, ``"s"`` or ``"m"``.
        vocab_size: output classes, blank included.
        **overrides: any constructor argument of the class (e.g. ``chunk_size=8``,
            ``right_context=0``, ``subsampling=8``, ``dropout=0.0``).
    """
    key = arch[: -len("_ctc")] if arch.endswith("_ctc") else arch
    if key not in ARCHS:
        raise ValueError(f"unknown student arch {arch!r}; choose from {sorted(ARCHS)}")
    if size not in SIZES[key]:
        raise ValueError(f"unknown student size {size!r}; choose from {sorted(SIZES[key])}")
    cls = ARCHS[key][1]
    kwargs = {**SIZES[key][size], **overrides}
    try:
        return cls(vocab_size=vocab_size, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad override for {cls.__name__}: {err}") from None
