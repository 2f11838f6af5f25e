"""Dataset over a manifest, collate with padding, DataLoader construction.

Bad items never stop training: the manifest-level checks (empty text, characters outside
the vocabulary, too short for CTC given the duration) run when the dataset is built; the
audio-level ones (missing / unreadable / truncated / empty / NaN audio, a length other than
the manifest's ``duration``, too short for CTC after feature extraction) run in ``__getitem__``, which then returns a
:class:`~asrkd.data.rejects.RejectRecord` instead of an item. :func:`collate` drops those
and hands them to the main process in ``batch["rejected"]``; the training loop adds them to
its :class:`~asrkd.data.rejects.Rejects` (``rejects.extend(batch["rejected"])``) and skips a
batch whose ``size`` is 0.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .audio import SAMPLE_RATE, AudioError
from .augment import WaveAugment
from .features import FeaturePipeline, ctc_min_frames
from .manifest import Utterance
from .rejects import RejectRecord, Rejects


class ASRDataset(Dataset):
    """Items of a manifest as tensors.

    Args:
        utterances: manifest entries (see :func:`~asrkd.data.manifest.load_manifest`).
        tokenizer: turns ``text`` into target ids; ``None`` gives empty targets for all.
        features: the student front end (log-mel -> CMVN -> SpecAugment in training mode);
            the dataset keeps its own copy, in train mode iff ``train``. ``None`` skips feature
            extraction (``feats`` is then absent), e.g. for caching a teacher that reads waveforms.
        train: applies SpecAugment (the pipeline is put in train mode), speed perturbation and
            ``augment``.
        subsampling: the student's time subsampling factor, for the CTC length check.
        speed_factors: e.g. ``(0.9, 1.0, 1.1)`` for speed perturbation in training; the CTC
            check assumes the fastest factor.
        rejects: where manifest-level rejections are counted (also ``self.rejects``).
        augment: waveform augmentation (:class:`~asrkd.data.augment.WaveAugment`), applied in
            training only, after speed perturbation and before the features; it keeps the
            length, so the frame count is the one a teacher cache was made for. It draws from
            the global torch RNG (seeded per item by :class:`~asrkd.train.state.SeededItems`).

    ``__getitem__`` returns a dict with ``id`` (str), ``wave`` (N,) float32 at 16 kHz (as
    augmented: a teacher run in the loop on ``batch["waves"]`` hears what the student hears),
    ``feats`` (T, n_mels), ``targets`` (L,) int64 (empty without text) and ``has_text``, or a
    ``RejectRecord`` for an item that cannot be used.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        tokenizer=None,
        features: FeaturePipeline | None = None,
        *,
        train: bool = False,
        subsampling: int = 4,
        speed_factors: Sequence[float] | None = None,
        rejects: Rejects | None = None,
        augment: WaveAugment | None = None,
    ):
        self.tokenizer = tokenizer
        self.augment = augment if train else None
        self.features = features
        self.train = train
        self.subsampling = int(subsampling)
        self.sample_rate = features.config.sample_rate if features is not None else SAMPLE_RATE
        self.rejects = rejects if rejects is not None else Rejects()
        self.speed = None
        self._max_speed = 1.0
        if train and speed_factors:
            from .features import speed_perturbation

            self.speed = speed_perturbation(tuple(speed_factors), self.sample_rate)
            self._max_speed = max(speed_factors)
        if features is not None:
            # A private copy in the right mode: the caller's pipeline may also serve another
            # dataset (train and dev share one) or the trainer.
            features = copy.deepcopy(features).train(train)
            self.features = features
        self.utterances: list[Utterance] = []
        self._targets: list[list[int]] = []
        for u in utterances:
            targets = self._check(u)
            if targets is not None:
                self.utterances.append(u)
                self._targets.append(targets)

    # -- manifest-level checks ------------------------------------------------------------
    def _hop_win(self) -> tuple[int, int]:
        if self.features is not None:
            c = self.features.config
            return c.hop_length, c.n_fft
        return 160, 400

    def _frames(self, num_samples: int) -> int:
        hop, win = self._hop_win()
        feats = 0 if num_samples < win else 1 + (num_samples - win) // hop
        return feats // max(1, self.subsampling)

    def _check(self, u: Utterance) -> list[int] | None:
        if u.text is None or self.tokenizer is None:
            return []
        if not u.text.strip():  # Utterance validation rejects this too; kept for hand-made objects
            self.rejects.add(u.id, "empty_text", f"{u.id}: empty or whitespace-only text")
            return None
        oov = self.tokenizer.oov_chars(u.text)
        if oov:
            self.rejects.add(u.id, "oov_chars", f"{u.id}: characters outside the vocabulary: {''.join(oov)!r}")
            return None
        targets = self.tokenizer.encode(u.text)
        if not targets:
            self.rejects.add(u.id, "empty_text", f"{u.id}: text {u.text!r} is empty after normalisation")
            return None
        samples = int(u.duration * self.sample_rate / self._max_speed)
        need, have = ctc_min_frames(targets), self._frames(samples)
        if have < need:
            self.rejects.add(
                u.id,
                "too_short_for_ctc",
                f"{u.id}: {have} frames after {self.subsampling}x "
                f"subsampling < {need} (labels + repeats) for {u.duration:.2f} s",
            )
            return None
        return targets

    # -- Dataset ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utterances]

    @property
    def ids(self) -> list[str]:
        return [u.id for u in self.utterances]

    def __getitem__(self, index: int) -> dict[str, Any] | RejectRecord:
        u = self.utterances[index]
        try:
            wave = u.load_audio(self.sample_rate)
        except AudioError as err:
            return RejectRecord(u.id, err.kind, f"{u.id}: {err}")
        if self.speed is not None:
            with torch.no_grad():
                wave, _ = self.speed(wave[None], torch.tensor([wave.numel()]))
                wave = wave[0]
        if self.augment is not None:
            wave = self.augment(wave)
        targets = torch.tensor(self._targets[index], dtype=torch.long)
        item: dict[str, Any] = {"id": u.id, "wave": wave, "targets": targets, "has_text": u.has_text}
        if self.features is not None:
            with torch.no_grad():
                feats, n = self.features(wave[None], torch.tensor([wave.numel()]))
            feats = feats[0, : int(n[0])]
            if not torch.isfinite(feats).all():
                return RejectRecord(u.id, "nan_audio", f"{u.id}: non-finite features")
            item["feats"] = feats
            out_frames = feats.shape[0] // max(1, self.subsampling)
        else:
            out_frames = self._frames(wave.numel())
        if u.has_text and self.tokenizer is not None and out_frames < ctc_min_frames(self._targets[index]):
            return RejectRecord(
                u.id,
                "too_short_for_ctc",
                f"{u.id}: {out_frames} frames after "
                f"{self.subsampling}x subsampling < {ctc_min_frames(self._targets[index])} "
                "(labels + repeats) as loaded",
            )
        return item


def _pad(seqs: Sequence[torch.Tensor], value: float = 0.0) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=value)


def collate(items: Sequence[dict[str, Any] | RejectRecord]) -> dict[str, Any]:
    """Pad a list of dataset items into a batch.

    Returns ``ids`` (list[str]), ``waves`` (B, N_max) float32 + ``wave_lengths`` (B,),
    ``feats`` (B, T_max, F) + ``feat_lengths`` (B,) (when the dataset has features),
    ``targets`` (B, L_max) int64 padded with 0 + ``target_lengths`` (B,), ``has_text`` (B,)
    bool, ``size`` (B) and ``rejected`` (list of ``RejectRecord`` dropped from this batch).
    """
    rejected = [x for x in items if isinstance(x, RejectRecord)]
    good = [x for x in items if not isinstance(x, RejectRecord)]
    batch: dict[str, Any] = {"ids": [x["id"] for x in good], "size": len(good), "rejected": rejected}
    if not good:
        batch.update(
            waves=torch.zeros(0, 0),
            wave_lengths=torch.zeros(0, dtype=torch.long),
            targets=torch.zeros(0, 0, dtype=torch.long),
            target_lengths=torch.zeros(0, dtype=torch.long),
            has_text=torch.zeros(0, dtype=torch.bool),
        )
        return batch
    batch["waves"] = _pad([x["wave"] for x in good])
    batch["wave_lengths"] = torch.tensor([x["wave"].numel() for x in good], dtype=torch.long)
    if "feats" in good[0]:
        batch["feats"] = _pad([x["feats"] for x in good])
        batch["feat_lengths"] = torch.tensor([x["feats"].shape[0] for x in good], dtype=torch.long)
    batch["targets"] = _pad([x["targets"] for x in good], 0)
    batch["target_lengths"] = torch.tensor([x["targets"].numel() for x in good], dtype=torch.long)
    batch["has_text"] = torch.tensor([bool(x["has_text"]) for x in good], dtype=torch.bool)
    return batch


def _worker_init(_: int) -> None:
    # Each DataLoader worker is its own process: one intra-op thread each, or workers x
    # threads oversubscribe the cores.
    torch.set_num_threads(1)


def build_dataloader(
    dataset: ASRDataset,
    batch_sampler,
    *,
    num_workers: int = 2,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader with :func:`collate`, the given batch sampler (e.g.
    :class:`~asrkd.data.sampler.DurationBatchSampler`) and single-threaded workers."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=False, worker_init_fn=_worker_init)
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **kwargs,
    )


__all__ = ["ASRDataset", "collate", "build_dataloader"]
