"""Models trained with asrkd (any registered arch) reloaded as teachers.

A checkpoint holds ``arch``, ``model_kwargs``, ``model`` (state dict), ``tokenizer`` and,
for models that take log-mel features, ``features`` (+ optional ``cmvn``). Log-mel models
get the checkpoint's own front-end (``asrkd.data.features.FeaturePipeline``: log-mel +
CMVN, no SpecAugment) in front so the teacher takes waveforms like every other; waveform-input models
(``input_type == "wave"``, e.g. an adapted ``whisper_ctc``) are used as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrkd.models.teachers.base import FrozenTeacher


class FeatureInputCTC(nn.Module):
    """waves -> front-end -> acoustic model: ``forward(waves, lengths) -> (logits, out_lengths)``."""

    def __init__(self, frontend: nn.Module, model: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, feat_lengths = self.frontend(waves, lengths)
        return self.model(feats, feat_lengths)


def teacher_from_state(state: dict[str, Any], spec: str) -> FrozenTeacher:
    """Build the teacher for an already loaded checkpoint dict."""
    from asrkd.models.checkpoint import model_from_state

    if not state.get("tokenizer"):
        raise ValueError(f"{spec}: checkpoint has no tokenizer, so its outputs have no names")
    from asrkd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(state["tokenizer"])
    model = model_from_state(state, spec)
    if getattr(model, "input_type", "features") == "wave":
        module: nn.Module = model
    else:
        if not state.get("features"):
            raise ValueError(f"{spec}: a log-mel model ({state['arch']}) but the checkpoint has no 'features' config")
        from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN

        cmvn = GlobalCMVN.from_dict(state["cmvn"]) if state.get("cmvn") else None
        module = FeatureInputCTC(FeaturePipeline(FeatureConfig.from_dict(state["features"]), cmvn), model)
    return FrozenTeacher(
        module,
        vocab=list(tokenizer.tokens),
        blank_id=int(getattr(tokenizer, "blank_id", 0)),
        frame_rate=float(model.frame_rate),
        spec=spec,
    )


def load_checkpoint_teacher(path: str | os.PathLike) -> FrozenTeacher:
    """A teacher from an asrkd checkpoint file."""
    from asrkd.models.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"asrkd checkpoint not found: {path}")
    return teacher_from_state(load_checkpoint(path), f"asrkd:{path}")
