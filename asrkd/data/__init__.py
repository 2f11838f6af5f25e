"""Data layer: manifests, importers, audio, features, tokenizers, batching, the synthetic corpus.

The names below are the public API (see ``docs/internals.md``); ``asrkd.data.importers``
and ``asrkd.data.synth`` are imported on demand.
"""

from __future__ import annotations

from .audio import AudioError, AudioInfo, audio_info, load_audio, resample, write_audio
from .augment import AugmentConfig, WaveAugment
from .dataset import ASRDataset, build_dataloader, collate
from .features import (
    FeatureConfig,
    FeaturePipeline,
    GlobalCMVN,
    LogMel,
    SpecAugment,
    compute_cmvn,
    ctc_min_frames,
    fits_ctc,
    frames_after_subsampling,
    speed_perturbation,
)
from .manifest import (
    ManifestError,
    Utterance,
    filter_by_duration,
    load_manifest,
    manifest_stats,
    merge_manifests,
    save_manifest,
    split_manifest,
)
from .rejects import KINDS, RejectRecord, Rejects
from .sampler import DurationBatchSampler
from .text import normalize_text
from .tokenizer import BPETokenizer, CharTokenizer, TokenizerError, load_tokenizer

__all__ = [
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "resample",
    "write_audio",
    "AugmentConfig",
    "WaveAugment",
    "ASRDataset",
    "build_dataloader",
    "collate",
    "FeatureConfig",
    "FeaturePipeline",
    "GlobalCMVN",
    "LogMel",
    "SpecAugment",
    "compute_cmvn",
    "ctc_min_frames",
    "fits_ctc",
    "frames_after_subsampling",
    "speed_perturbation",
    "ManifestError",
    "Utterance",
    "filter_by_duration",
    "load_manifest",
    "manifest_stats",
    "merge_manifests",
    "save_manifest",
    "split_manifest",
    "KINDS",
    "RejectRecord",
    "Rejects",
    "DurationBatchSampler",
    "BPETokenizer",
    "CharTokenizer",
    "TokenizerError",
    "load_tokenizer",
    "normalize_text",
]
