"""Hugging Face CTC models (``Wav2Vec2ForCTC``, ``HubertForCTC``, ``WavLMForCTC``, ...) from a local directory.

``transformers`` is optional (``pip install asrkd[hf]``). The directory is what
``save_pretrained`` writes: ``config.json`` + weights, the tokenizer files (``vocab.json``,
...) and, optionally, ``preprocessor_config.json``. Nothing is downloaded.

- vocabulary: the tokenizer's symbols for ids ``0 .. vocab_size-1`` (ids it lacks are
  named ``<unused-ID>``); blank = ``config.pad_token_id``, as in HF's CTC loss;
- input: normalised per utterance over its valid samples when the feature extractor says
  ``do_normalize``; an attention mask is passed when it says ``return_attention_mask``,
  otherwise padding is zeroed (what HF recommends for group-norm models);
- frame rate: 16000 / product of ``config.conv_stride``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from asrkd.data.audio import SAMPLE_RATE
from asrkd.models.acoustic import AcousticModel, conv_min_samples
from asrkd.models.teachers.torchaudio_ctc import normalize_waves


def _require_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "Hugging Face teachers need the optional 'transformers' package: pip install 'asrkd[hf]'"
        ) from err
    return transformers


class HFCTC(nn.Module):
    """``forward(waves (B, N), lengths (B,)) -> (logits (B, T, V), out_lengths (B,))`` for a HF ``*ForCTC`` model."""

    def __init__(self, model: nn.Module, *, do_normalize: bool, attention_mask: bool):
        super().__init__()
        self.model = model
        self.do_normalize = do_normalize
        self.use_attention_mask = attention_mask
        self.frame_rate = SAMPLE_RATE / math.prod(model.config.conv_stride)
        self.min_samples = conv_min_samples(model.config.conv_kernel, model.config.conv_stride)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        out = lengths
        for k, s in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            out = torch.div(out - k, s, rounding_mode="floor") + 1
        return out

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.arange(waves.size(1), device=waves.device)[None, :] < lengths[:, None]
        x = normalize_waves(waves, lengths, eps=1e-7) if self.do_normalize else waves.masked_fill(~mask, 0.0)
        logits = self.model(input_values=x, attention_mask=mask.long() if self.use_attention_mask else None).logits
        return logits, self.output_lengths(lengths)


def _vocab(directory: Path, vocab_size: int) -> list[str]:
    transformers = _require_transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        id_to_token = {i: t for t, i in tok.get_vocab().items()}
    except (OSError, ValueError, TypeError) as err:
        vocab_json = directory / "vocab.json"
        if not vocab_json.is_file():
            raise FileNotFoundError(f"{directory}: no tokenizer (vocab.json) to name the CTC outputs: {err}") from None
        id_to_token = {i: t for t, i in json.loads(vocab_json.read_text()).items()}
    return [id_to_token.get(i, f"<unused-{i}>") for i in range(vocab_size)]


def load_hf_ctc(directory: str | os.PathLike) -> AcousticModel:
    """A teacher from a local Hugging Face CTC model directory."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"Hugging Face model directory not found or without config.json: {directory}")
    transformers = _require_transformers()
    try:  # local files only; never remote code; .bin weights go through torch.load(weights_only=True)
        model = transformers.AutoModelForCTC.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        reason = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise ValueError(f"hf:{directory}: cannot load it as a Hugging Face CTC model: {reason}") from None
    model.float()
    cfg = model.config
    do_normalize, attention_mask = True, False
    if (directory / "preprocessor_config.json").is_file():
        pre = json.loads((directory / "preprocessor_config.json").read_text())
        if pre.get("sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise ValueError(
                f"{directory} expects {pre['sampling_rate']} Hz audio; asrkd teachers take {SAMPLE_RATE} Hz"
            )
        do_normalize = bool(pre.get("do_normalize", True))
        attention_mask = bool(pre.get("return_attention_mask", False))
    module = HFCTC(model, do_normalize=do_normalize, attention_mask=attention_mask)
    vocab = _vocab(directory, cfg.vocab_size)
    blank = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    return AcousticModel(
        module, vocab=vocab, blank_id=blank, frame_rate=module.frame_rate, spec=f"hf:{directory}", frozen=True
    )
