"""Batched greedy and beam search for :class:`~asrkd.models.teachers.whisper_decoder.Whisper`.

Both follow what CTranslate2's ``Whisper.generate`` does without timestamps: the prompt of
:meth:`WhisperVocabulary.prompt`, ``suppress_ids`` masked at every step, ``suppress_ids_begin``
(blank and end-of-text) at the first one, timestamp tokens never chosen. Beam search keeps
``beam_size`` hypotheses per utterance, sets a hypothesis aside when it ends, stops an utterance
once ``beam_size`` have ended (patience 1) and ranks them by log-probability (end-of-text
included) divided by the number of tokens before it.

``transcribe(model, waves, ...)`` returns one :class:`Transcript` per input: token ids (no
prompt, no end-of-text), Whisper's text, and ``avg_logprob`` (summed log-probability, end-of-text
included, over the number of text tokens: CTranslate2's score), the confidence pseudo-labelling keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from asrkd.models.teachers.whisper_decoder import KVCache, Whisper

__all__ = ["Transcript", "transcribe"]


@dataclass
class Transcript:
    tokens: list[int]
    text: str
    avg_logprob: float


def _suppression(model: Whisper, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive masks (V,) for every step and (V,) for the first generated token."""
    vocab = model.vocab
    V = model.decoder.n_vocab
    always = torch.zeros(V, device=device)
    ids = [i for i in vocab.suppress if 0 <= i < V]
    always[ids] = float("-inf")
    always[vocab.timestamp_begin :] = float("-inf")
    first = always.clone()
    first[[i for i in vocab.suppress_begin if 0 <= i < V]] = float("-inf")
    return always, first


def _select(cache: KVCache, rows: torch.Tensor) -> KVCache:
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]


def _greedy(model: Whisper, audio: torch.Tensor, max_new_tokens: int) -> list[tuple[list[int], float]]:
    dec, eot = model.decoder, model.vocab.eot
    B = audio.size(0)
    always, first = _suppression(model, audio.device)
    prompt = torch.tensor(model.vocab.prompt(), device=audio.device).expand(B, -1)
    audio_kv = dec.audio_kv(audio)
    logits, cache = dec(prompt, audio_kv)
    last = logits[:, -1]
    alive = torch.arange(B, device=audio.device)  # rows of the original batch still decoding
    tokens: list[list[int]] = [[] for _ in range(B)]
    logprob = [0.0] * B
    for step in range(max_new_tokens):
        lp = torch.log_softmax(last + (first if step == 0 else always), dim=-1)
        best = lp.argmax(dim=-1)
        best_lp = lp.gather(1, best[:, None])[:, 0]
        if step == max_new_tokens - 1:  # out of room: the hypothesis ends here
            best = torch.full_like(best, eot)
        keep = []
        for j, (row, tok, tok_lp) in enumerate(zip(alive.tolist(), best.tolist(), best_lp.tolist())):
            logprob[row] += tok_lp
            if tok == eot:
                continue
            tokens[row].append(tok)
            keep.append(j)
        if not keep:
            break
        if len(keep) < alive.numel():
            idx = torch.tensor(keep, device=audio.device)
            alive, best = alive[idx], best[idx]
            cache, audio_kv = _select(cache, idx), _select(audio_kv, idx)
        logits, cache = dec(best[:, None], audio_kv, cache)
        last = logits[:, -1]
    return [(t, logprob[b] / max(len(t), 1)) for b, t in enumerate(tokens)]


def _beam(model: Whisper, audio: torch.Tensor, beam_size: int, max_new_tokens: int) -> list[tuple[list[int], float]]:
    dec, eot, V = model.decoder, model.vocab.eot, model.decoder.n_vocab
    B, K = audio.size(0), beam_size
    always, first = _suppression(model, audio.device)
    rows = torch.arange(B, device=audio.device).repeat_interleave(K)  # row b * K + k: beam k of utterance b
    audio_kv = _select(dec.audio_kv(audio), rows)
    prompt = torch.tensor(model.vocab.prompt(), device=audio.device).expand(B * K, -1)
    logits, cache = dec(prompt, audio_kv)
    score = torch.full((B, K), float("-inf"), device=audio.device)
    score[:, 0] = 0.0  # all beams start as the prompt: only one of them is live
    seqs: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        lp = torch.log_softmax(logits[:, -1] + (first if step == 0 else always), dim=-1)
        total = (score.view(-1, 1) + lp).view(B, K * V)
        cand_score, cand_idx = total.topk(2 * K, dim=-1)  # enough for K live ones whatever ends here
        src, tok = rows.clone(), torch.full((B * K,), eot, device=audio.device)
        score = torch.full((B, K), float("-inf"), device=audio.device)
        new_seqs = [[[] for _ in range(K)] for _ in range(B)]
        for b in range(B):
            if len(finished[b]) >= K:
                continue
            live = 0
            for s, idx in zip(cand_score[b].tolist(), cand_idx[b].tolist()):
                k, t = divmod(idx, V)
                if s == float("-inf") or live == K:
                    break
                if t == eot or step == max_new_tokens - 1:  # ended, or out of room
                    if len(finished[b]) < K:
                        finished[b].append((seqs[b][k] + ([] if t == eot else [t]), s))
                    continue
                r = b * K + live
                src[r], tok[r], score[b, live] = b * K + k, t, s
                new_seqs[b][live] = seqs[b][k] + [t]
                live += 1
        seqs = new_seqs
        if all(len(f) >= K for f in finished):
            break
        cache = _select(cache, src)
        logits, cache = dec(tok[:, None], audio_kv, cache)
    # The best ended hypothesis by log-probability per token (CTranslate2's length penalty 1).
    return [max(((t, s / max(len(t), 1)) for t, s in f), key=lambda h: h[1]) for f in finished]


@torch.inference_mode()
def transcribe(
    model: Whisper,
    waves: Sequence[torch.Tensor],
    *,
    beam_size: int = 1,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    device: str | torch.device = "cpu",
) -> list[Transcript]:
    """Whisper transcripts of 16 kHz mono waveforms (each at most 30 s).

    Args:
        beam_size: 1 for greedy search, more for beam search.
        batch_size: utterances encoded and decoded together.
        max_new_tokens: tokens generated at most per utterance (default: half the decoder's
            context, 224, as openai-whisper).
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = model.decoder.n_ctx - len(model.vocab.prompt())
    max_new = min(max_new_tokens or model.decoder.n_ctx // 2, limit)
    out: list[Transcript] = []
    for start in range(0, len(waves), batch_size):
        group = [w.reshape(-1).float() for w in waves[start : start + batch_size]]
        lengths = torch.tensor([w.numel() for w in group])
        batch = torch.zeros(len(group), int(lengths.max()))
        for b, w in enumerate(group):
            batch[b, : w.numel()] = w
        audio = model.encode_padded(batch.to(device), lengths.to(device))
        hyps = _greedy(model, audio, max_new) if beam_size == 1 else _beam(model, audio, beam_size, max_new)
        out.extend(Transcript(toks, model.vocab.decode(toks), lp) for toks, lp in hyps)
    return out
