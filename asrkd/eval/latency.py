"""Emission delay: when a model emits each token, against a reference model or a forced alignment.

:func:`token_emissions` finds where each token of a CTC hypothesis (its spikes) or of a
reference transcript (its forced alignment) is emitted, :func:`match_emissions` pairs the tokens
two models agree on, and :class:`DelayMeter` collects the per-token delays of a decode run
(``asrkd decode --emission-delay-ref``); :func:`delay_summary` gives mean / median / p90.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from asrkd.data.features import ctc_min_frames
from asrkd.models.acoustic import AcousticModel, load_acoustic_model

__all__ = ["DelayMeter", "Emission", "delay_summary", "match_emissions", "token_emissions"]


@dataclass(frozen=True)
class Emission:
    """A token's first frame on its CTC path: ``symbol`` (canonical), ``frame``, ``ms``
    (``frame × 1000 / frame_rate``)."""

    symbol: str
    frame: int
    ms: float


def token_emissions(
    log_probs: torch.Tensor, ids: Sequence[int], *, blank: int, frame_rate: float, symbols: Sequence[str] | None = None
) -> list[Emission]:
    """Where each token of ``ids`` is emitted: the first frame of its span on the best CTC
    path that spells ``ids`` (``torchaudio.functional.forced_align``). For the greedy
    hypothesis that path is the greedy path itself (its spikes); for a reference transcript
    it is the forced alignment.

    Args:
        log_probs: (T, V) log-probabilities of one utterance.
        ids: the token ids (no blanks).
        blank: the blank id.
        frame_rate: frames per second, to turn frames into ms (frame start: ``t × 1000 / rate``).
        symbols: id -> canonical symbol (default: ``str(id)``).

    Raises:
        ValueError: when the frames are too few for the tokens (``T < len(ids) + repeats``).
    """
    import torchaudio.functional as AF

    ids = [int(i) for i in ids]
    if not ids:
        return []
    T = log_probs.size(0)
    if T < ctc_min_frames(ids):
        raise ValueError(
            f"{T} frames cannot hold {len(ids)} tokens with {ctc_min_frames(ids) - len(ids)} adjacent repeats"
        )
    targets = torch.tensor([ids], dtype=torch.int32)
    path, scores = AF.forced_align(log_probs.detach().float().cpu()[None], targets, blank=blank)
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=blank)
    sym = (lambda i: symbols[i]) if symbols is not None else str
    return [Emission(sym(s.token), int(s.start), s.start * 1000.0 / frame_rate) for s in spans]


def match_emissions(hyp: Sequence[Emission], ref: Sequence[Emission]) -> list[tuple[Emission, Emission]]:
    """Pairs of matched tokens: the two symbol sequences are aligned with a minimum-edit
    (Levenshtein) alignment and the pairs the alignment marks correct (same symbol) are
    returned in order; substituted, inserted and deleted tokens are left out."""
    from asrkd.eval.scoring import align

    out = []
    i = j = 0
    for op, r, h in align([e.symbol for e in ref], [e.symbol for e in hyp], method="levenshtein"):
        if op == "C":
            out.append((hyp[j], ref[i]))
        if r is not None:
            i += 1
        if h is not None:
            j += 1
    return out


def delay_summary(delays_ms: Sequence[float]) -> dict[str, Any]:
    """``{"tokens", "mean_ms", "median_ms", "p90_ms", "min_ms", "max_ms"}`` (None when empty);
    percentiles interpolate linearly (``numpy.percentile``)."""
    import numpy as np

    if len(delays_ms) == 0:
        return {"tokens": 0, "mean_ms": None, "median_ms": None, "p90_ms": None, "min_ms": None, "max_ms": None}
    d = np.asarray(delays_ms, dtype=np.float64)
    return {
        "tokens": int(d.size),
        "mean_ms": float(d.mean()),
        "median_ms": float(np.median(d)),
        "p90_ms": float(np.percentile(d, 90)),
        "min_ms": float(d.min()),
        "max_ms": float(d.max()),
    }


class DelayMeter:
    """Emission delay of hypotheses against a reference, utterance by utterance."""

    def __init__(self, ref: str | os.PathLike | AcousticModel, rec: AcousticModel, device) -> None:
        self.rec = rec
        self.forced = False
        ref_model: AcousticModel = rec
        if isinstance(ref, (str, os.PathLike)):
            s = os.fspath(ref)
            if s == "forced-align":
                self.forced = True
            elif s.startswith("forced-align:"):
                self.forced = True
                ref_model = load_acoustic_model(s[len("forced-align:") :], device)
            else:
                ref_model = load_acoustic_model(s, device)
        else:
            ref_model = load_acoustic_model(ref, device)
        self.ref = ref_model
        # id -> canonical symbol of each model, for matching tokens across vocabularies
        self.ref_symbols = ref_model.symbols(range(len(ref_model.vocab)))
        self.rec_symbols = rec.symbols(range(len(rec.vocab)))
        self.description = (
            f"forced alignment of the reference text on {'its own' if ref_model is rec else ref_model.spec} "
            "full-context log-probs"
            if self.forced
            else f"CTC spikes of {ref_model.spec} (full context, greedy)"
        )
        self.delays: list[float] = []
        self.available: list[float] = []
        self.utterances = 0
        self.hyp_tokens = 0
        self.ref_tokens = 0
        self.skipped: Counter[str] = Counter()

    def add(
        self,
        wave: torch.Tensor,
        text: str | None,
        hyp_lp: torch.Tensor,
        hyp_ids: Sequence[int],
        available_ms: Sequence[float] | None,
        full_lp: torch.Tensor | None = None,
    ) -> None:
        """``hyp_lp`` (T, V): the log-probs the hypothesis came from; ``full_lp``: the
        model's own full-context log-probs if already computed (full-utterance mode)."""
        from asrkd.eval.search import greedy_decode

        if self.forced:
            if text is None:
                self.skipped["no_text"] += 1
                return
            try:
                ref_ids = self.ref.encode(text)
            except ValueError:
                self.skipped["oov_text"] += 1
                return
        if self.ref is self.rec and full_lp is not None:
            ref_lp = full_lp
        elif wave.numel() < self.ref.min_samples:  # decodable by the model, too short for the reference
            self.skipped["too_short_for_reference"] += 1
            return
        else:
            lp, lens = self.ref.log_probs(wave[None], torch.tensor([wave.numel()]))
            ref_lp = lp[0, : int(lens[0])]
        if not self.forced:
            ref_ids = greedy_decode(ref_lp, blank=self.ref.blank_id)[0]
        try:
            ref_em = token_emissions(
                ref_lp,
                ref_ids,
                blank=self.ref.blank_id,
                frame_rate=self.ref.frame_rate,
                symbols=self.ref_symbols,
            )
        except ValueError:
            self.skipped["too_short_for_alignment"] += 1
            return
        hyp_em = token_emissions(
            hyp_lp,
            hyp_ids,
            blank=self.rec.blank_id,
            frame_rate=self.rec.frame_rate,
            symbols=self.rec_symbols,
        )
        self.utterances += 1
        self.hyp_tokens += len(hyp_em)
        self.ref_tokens += len(ref_em)
        for h, r in match_emissions(hyp_em, ref_em):
            self.delays.append(h.ms - r.ms)
            if available_ms is not None:
                self.available.append(available_ms[h.frame] - r.ms)

    def result(self) -> dict[str, Any]:
        out = {
            "reference": self.description,
            "utterances": self.utterances,
            "hyp_tokens": self.hyp_tokens,
            "ref_tokens": self.ref_tokens,
            **delay_summary(self.delays),
            "skipped": dict(self.skipped),
        }
        if self.available:
            out["available"] = delay_summary(self.available)
        return out
