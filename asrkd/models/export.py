"""``asrkd export``: a streaming student checkpoint -> a self-contained TorchScript file.

The exported module is the whole student compiled with ``torch.jit.script``: ``forward``,
``init_state``, ``stream_step`` and ``stream_flush`` work as in Python, with no asrkd
(or torchaudio) import needed to run it. The checkpoint's tokenizer, feature and CMVN
settings travel in the file as ``asrkd.json`` (read them with :func:`load_exported`).
Before writing, the compiled module is checked against the eager one on random input.

ONNX is not offered: the streaming state has data-dependent shapes (growing caches,
partial last segments) that the ONNX exporters cannot follow.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any

import torch

from asrkd.atomic import refuse_overwrite, write_bytes
from asrkd.models.checkpoint import load_model
from asrkd.models.students.streaming import StreamingCTC

METADATA_FILE = "asrkd.json"
FORMATS = ("torchscript",)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in the export metadata")


def script_student(model: StreamingCTC) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of ``model`` in eval mode (TorchScript's deprecation
    warning silenced: it still is the one format that keeps the streaming loop)."""
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(model)
    finally:
        model.train(was_training)


@torch.no_grad()
def check_export(model: StreamingCTC, scripted: torch.jit.ScriptModule, seed: int = 0) -> float:
    """Max |difference| of logits between ``scripted`` and the eager ``model`` (eval mode),
    full-utterance and streamed (steps of ``chunk_frames``, a ragged end), on random input."""
    was_training = model.training
    model.eval()
    try:
        gen = torch.Generator().manual_seed(seed)
        frames = 3 * model.chunk_frames + model.lookahead_frames + 7
        feats = torch.randn(1, frames, model.input_dim, generator=gen)
        lengths = torch.tensor([frames])
        ref_full, _ = model(feats, lengths)
        got_full, _ = scripted(feats, lengths)
        ref_stream = model.stream(feats)
        state = scripted.init_state(1)
        outs = []
        for t0 in range(0, frames, model.chunk_frames):
            out, state = scripted.stream_step(feats[:, t0 : t0 + model.chunk_frames], state, None)
            outs.append(out)
        outs.append(scripted.stream_flush(state))
        got_stream = torch.cat(outs, dim=1)
        if got_stream.shape != ref_stream.shape or got_full.shape != ref_full.shape:
            raise RuntimeError("exported module gives logits of another shape than the eager model")
        return max((got_full - ref_full).abs().max().item(), (got_stream - ref_stream).abs().max().item())
    finally:
        model.train(was_training)


def save_scripted(
    scripted: torch.jit.ScriptModule, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> None:
    """``torch.jit.save`` with ``metadata`` stored in the file as ``asrkd.json``. Serialised
    in memory first: the file is then written atomically (a C++ writer that hits a full disk
    aborts the process instead of raising)."""
    extra = {METADATA_FILE: json.dumps(_jsonable(metadata or {}))}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(scripted, buffer, _extra_files=extra)
    write_bytes(path, buffer.getvalue())


def export_torchscript(
    model: StreamingCTC, path: str | os.PathLike, metadata: dict[str, Any] | None = None, atol: float = 1e-4
) -> float:
    """Script ``model``, check it against eager (raises if logits differ by more than
    ``atol``), save it to ``path`` with ``metadata`` as ``asrkd.json``; returns the max
    difference found."""
    scripted = script_student(model)
    diff = check_export(model, scripted)
    if not diff <= atol:
        raise RuntimeError(f"exported module differs from the eager model by {diff:.3g} (> {atol})")
    save_scripted(scripted, path, metadata)
    return diff


def load_exported(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Load an ``asrkd export`` file: ``(scripted_module, metadata_dict)``."""
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    return module, json.loads(extra[METADATA_FILE] or "{}")


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike
) -> tuple[StreamingCTC, dict[str, Any], float]:
    """``asrkd export``: the streaming student of ``checkpoint`` to TorchScript at ``out``, with its
    tokenizer, features and CMVN as metadata. Returns ``(model, checkpoint dict, max |exported -
    eager| logit difference)``; refuses an ``out`` that is the checkpoint."""
    refuse_overwrite({"--out": out}, {"--checkpoint": checkpoint})
    model, ckpt = load_model(checkpoint)
    if not isinstance(model, StreamingCTC):
        raise ValueError(
            f"{checkpoint} holds arch {ckpt.get('arch')!r}, not a streaming student (emformer_ctc or conformer_ctc)"
        )
    metadata = {
        "arch": ckpt["arch"],
        "model_kwargs": ckpt.get("model_kwargs", {}),
        "tokenizer": ckpt.get("tokenizer"),
        "features": ckpt.get("features"),
        "cmvn": ckpt.get("cmvn"),
        "frame_rate": model.frame_rate,
        "chunk_frames": model.chunk_frames,
        "lookahead_frames": model.lookahead_frames,
        "algorithmic_latency_ms": model.algorithmic_latency_ms,
    }
    return model, ckpt, export_torchscript(model, out, metadata)
