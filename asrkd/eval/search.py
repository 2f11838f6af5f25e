"""CTC search: greedy, the project's prefix beam search, and torchaudio's flashlight decoder.

Every decoder takes CTC outputs ``log_probs`` of shape ``(T, V)`` or ``(B, T, V)``
(log-probabilities; raw logits are accepted too, they are normalised with a float32
``log_softmax``, which leaves log-probabilities unchanged) and ``lengths`` ``(B,)``
of valid frames (None = all ``T``), and returns one token-id list per utterance, with
repeats collapsed and blanks removed, ready for ``tokenizer.decode``.

- :func:`greedy_decode` / :class:`GreedyDecoder`: best token per frame.
- :func:`prefix_beam_search` / :class:`PrefixBeamSearch`: CTC prefix beam search in
  log space, pure Python, with per-frame token pruning; no lexicon or LM.
- :class:`TorchaudioBeamSearch`: ``torchaudio.models.decoder.ctc_decoder`` (flashlight),
  used when ``flashlight-text`` is importable; optional lexicon and KenLM model.
- :func:`build_decoder`: the factory ``asrkd decode`` uses.
"""

from __future__ import annotations

import heapq
import math
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

__all__ = [
    "GreedyDecoder",
    "PrefixBeamSearch",
    "TorchaudioBeamSearch",
    "beam_backend",
    "build_decoder",
    "flashlight_available",
    "greedy_decode",
    "prefix_beam_search",
]

_NEG_INF = float("-inf")
# Word separators a vocabulary may use, in the order the torchaudio beam search looks for one.
_SEPARATORS = (" ", "|", "<space>")


def _as_batch(
    log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None, blank: int, *, normalize: bool = True
) -> tuple[torch.Tensor, list[int]]:
    """Validate; return ``(B, T, V)`` float32 log-probs on CPU (raw scores with
    ``normalize=False``) and the list of lengths."""
    if not isinstance(log_probs, torch.Tensor) or not log_probs.is_floating_point():
        raise TypeError("log_probs must be a floating-point tensor of shape (T, V) or (B, T, V)")
    if log_probs.dim() == 2:
        log_probs = log_probs.unsqueeze(0)
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must have shape (T, V) or (B, T, V), got {tuple(log_probs.shape)}")
    B, T, V = log_probs.shape
    if not 0 <= blank < V:
        raise ValueError(f"blank id {blank} is outside the vocabulary of {V} tokens")
    if lengths is None:
        lens = [T] * B
    else:
        lens = [int(x) for x in (lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths)]
        if len(lens) != B:
            raise ValueError(f"lengths has {len(lens)} entries for a batch of {B}")
        for b, n in enumerate(lens):
            if not 0 <= n <= T:
                raise ValueError(f"lengths[{b}] = {n} is outside [0, {T}]")
    x = log_probs.detach().float().cpu()
    # fp32 normalisation whatever the model's dtype (bf16/fp16 logits lose the tail).
    return (torch.log_softmax(x, dim=-1) if normalize else x), lens


# --------------------------------------------------------------------------- greedy


def greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None, blank: int = 0
) -> list[list[int]]:
    """Best path decoding: argmax per frame, collapse repeats, drop blanks.

    Args:
        log_probs: ``(T, V)`` or ``(B, T, V)`` CTC outputs.
        lengths: ``(B,)`` valid frames per utterance; None = all frames.
        blank: id of the CTC blank.

    Returns:
        ``B`` lists of token ids (one list for a ``(T, V)`` input).
    """
    scores, lens = _as_batch(log_probs, lengths, blank, normalize=False)  # argmax needs no softmax
    best = scores.argmax(dim=-1)
    out = []
    for b, n in enumerate(lens):
        path = torch.unique_consecutive(best[b, :n])
        out.append(path[path != blank].tolist())
    return out


class GreedyDecoder:
    """Greedy CTC decoding as a decoder object (see :func:`greedy_decode`)."""

    def __init__(self, blank: int = 0) -> None:
        self.blank = blank

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> list[list[int]]:
        return greedy_decode(log_probs, lengths, blank=self.blank)

    def __repr__(self) -> str:
        return f"GreedyDecoder(blank={self.blank})"


# --------------------------------------------------------------------------- prefix beam search


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == _NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class PrefixBeamSearch:
    """CTC prefix beam search in log space (Hannun et al., 2014), without LM.

    Each hypothesis is a label prefix with two log-probabilities: of all paths so far
    that end in a blank and of those that end in its last label. A repeated label
    extends the prefix only from paths ending in blank (``a - a`` is ``aa``; ``a a``
    is ``a``). Per frame only tokens within ``token_threshold`` nats of the frame's
    best and among its ``token_topk`` best are expanded (the blank always is); then the
    ``beam`` most probable prefixes are kept. With no pruning and a beam as large as
    the number of prefixes the search is exact: it returns the labelling of highest
    total CTC probability.

    Args:
        beam: prefixes kept per frame.
        blank: id of the CTC blank.
        token_topk: tokens expanded per frame at most (None = all).
        token_threshold: skip tokens more than this many nats below the frame's best
            (None = no threshold).
        nbest: hypotheses :meth:`search` returns.
    """

    def __init__(
        self,
        beam: int = 8,
        blank: int = 0,
        *,
        token_topk: int | None = 16,
        token_threshold: float | None = 12.0,
        nbest: int = 1,
    ) -> None:
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        if token_topk is not None and token_topk < 1:
            raise ValueError(f"token_topk must be >= 1 or None, got {token_topk}")
        if token_threshold is not None and token_threshold < 0:
            raise ValueError(f"token_threshold must be >= 0 or None, got {token_threshold}")
        if nbest < 1:
            raise ValueError(f"nbest must be >= 1, got {nbest}")
        self.beam = beam
        self.blank = blank
        self.token_topk = token_topk
        self.token_threshold = token_threshold
        self.nbest = nbest

    def _candidates(self, lp: torch.Tensor) -> list[list[int]]:
        """Per frame, the non-blank token ids worth expanding."""
        T, V = lp.shape
        k = V if self.token_topk is None else min(self.token_topk, V)
        vals, idx = lp.topk(k, dim=-1)
        keep = idx != self.blank
        if self.token_threshold is not None:
            keep &= vals >= vals[:, :1] - self.token_threshold
        return [row[m].tolist() for row, m in zip(idx, keep)]

    def search(self, log_probs: torch.Tensor) -> list[tuple[list[int], float]]:
        """Search one utterance.

        Args:
            log_probs: ``(T, V)`` CTC log-probabilities (normalised here in float32).

        Returns:
            up to ``nbest`` ``(token ids, log-probability)`` pairs, best first; the
            log-probability sums over all CTC paths of the labelling that the beam kept.
        """
        if not isinstance(log_probs, torch.Tensor) or log_probs.dim() != 2:
            raise ValueError("search() takes one utterance: log_probs of shape (T, V); use decode() for a batch")
        lp, _ = _as_batch(log_probs, None, self.blank)
        return self._search(lp[0])

    def _search(self, lp: torch.Tensor) -> list[tuple[list[int], float]]:
        blank = self.blank
        frames = lp.tolist()
        cands = self._candidates(lp)
        # prefix -> [log P(paths ending in blank), log P(paths ending in last label)]
        beams: dict[tuple[int, ...], list[float]] = {(): [0.0, _NEG_INF]}
        for frame, tokens in zip(frames, cands):
            p_blank = frame[blank]
            nxt: dict[tuple[int, ...], list[float]] = {}
            for prefix, (pb, pnb) in beams.items():
                total = _logaddexp(pb, pnb)
                last = prefix[-1] if prefix else -1
                # stay: blank after anything, or the last label repeated (collapses)
                stay_b = total + p_blank
                stay_nb = pnb + frame[last] if last >= 0 else _NEG_INF
                e = nxt.get(prefix)
                if e is None:
                    nxt[prefix] = [stay_b, stay_nb]
                else:
                    e[0] = _logaddexp(e[0], stay_b)
                    e[1] = _logaddexp(e[1], stay_nb)
                for c in tokens:
                    # a repeated label needs a blank in between to start a new one
                    p = (pb if c == last else total) + frame[c]
                    if p == _NEG_INF:
                        continue
                    ext = prefix + (c,)
                    e = nxt.get(ext)
                    if e is None:
                        nxt[ext] = [_NEG_INF, p]
                    else:
                        e[1] = _logaddexp(e[1], p)
            if len(nxt) > self.beam:
                beams = dict(heapq.nlargest(self.beam, nxt.items(), key=lambda kv: _logaddexp(*kv[1])))
            else:
                beams = nxt
        ranked = sorted(((list(k), _logaddexp(*v)) for k, v in beams.items()), key=lambda kv: kv[1], reverse=True)
        return ranked[: self.nbest]

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> list[list[int]]:
        """Best labelling per utterance of ``(T, V)`` / ``(B, T, V)`` ``log_probs``."""
        lp, lens = _as_batch(log_probs, lengths, self.blank)
        return [self._search(lp[b, :n])[0][0] for b, n in enumerate(lens)]

    def __repr__(self) -> str:
        return (
            f"PrefixBeamSearch(beam={self.beam}, blank={self.blank}, token_topk={self.token_topk}, "
            f"token_threshold={self.token_threshold})"
        )


def prefix_beam_search(
    log_probs: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
    beam: int = 8,
    blank: int = 0,
    *,
    token_topk: int | None = 16,
    token_threshold: float | None = 12.0,
) -> list[list[int]]:
    """CTC prefix beam search (see :class:`PrefixBeamSearch`).

    Args:
        log_probs: ``(T, V)`` or ``(B, T, V)`` CTC outputs.
        lengths: ``(B,)`` valid frames; None = all frames.
        beam: prefixes kept per frame.
        blank: id of the CTC blank.
        token_topk, token_threshold: per-frame token pruning.

    Returns:
        ``B`` lists of token ids.
    """
    search = PrefixBeamSearch(beam, blank, token_topk=token_topk, token_threshold=token_threshold)
    return search.decode(log_probs, lengths)


# --------------------------------------------------------------------------- torchaudio / flashlight


@lru_cache(maxsize=1)
def flashlight_available() -> bool:
    """True when torchaudio's flashlight CTC decoder can be built (``flashlight-text`` installed)."""
    try:
        from torchaudio.models.decoder import ctc_decoder  # noqa: F401  (raises without flashlight-text)
    except (ImportError, RuntimeError):
        return False
    return True


# Name the word separator gets in flashlight's token dictionary and lexicon files,
# whose spellings are whitespace-separated (wav2letter's convention).
FLASHLIGHT_SEPARATOR = "|"


class TorchaudioBeamSearch:
    """Beam search with ``torchaudio.models.decoder.ctc_decoder`` (flashlight-text).

    Token ids are those of ``tokens`` (the tokenizer's ``tokens`` list). The word
    separator (``word_separator``, the character tokenizer's ``" "``) is flashlight's
    silence token; it is called ``|`` inside flashlight, so lexicon spellings write it
    as ``|``. Separators at the start and end of a result are removed (flashlight pads
    every path with silence). Without a separator token (e.g. SentencePiece pieces) the
    blank serves as silence, which is fine lexicon-free; a lexicon then cannot be used.

    Args:
        tokens: id -> symbol.
        blank: id of the CTC blank.
        beam: hypotheses kept per frame.
        lexicon: optional flashlight lexicon file, one word per line followed by its
            spelling in tokens, ending with ``|`` (e.g. ``cat c a t |``); restricts the
            output to its words.
        lm: optional KenLM model (ARPA or binary, at least a bigram): over words with a
            lexicon, over token symbols (``|`` for the separator) without one.
        lm_weight, word_score, unk_score, sil_score: flashlight scoring options.
        beam_size_token: tokens expanded per frame (None = all).
        beam_threshold: prune hypotheses this far below the best.
        log_add: merge equal hypotheses by log-add (sum over paths, like CTC) rather
            than max.
        word_separator: the separator symbol in ``tokens`` (default: the first of ``" "``, ``"|"``,
            ``"<space>"`` that ``tokens`` holds).
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        blank: int = 0,
        beam: int = 8,
        lexicon: str | Path | None = None,
        lm: str | Path | None = None,
        lm_weight: float = 2.0,
        word_score: float = 0.0,
        unk_score: float = _NEG_INF,
        sil_score: float = 0.0,
        beam_size_token: int | None = None,
        beam_threshold: float = 50.0,
        log_add: bool = True,
        word_separator: str | None = None,
    ) -> None:
        if not flashlight_available():
            raise RuntimeError(
                "TorchaudioBeamSearch needs the flashlight-text package (pip install flashlight-text); "
                "use PrefixBeamSearch without it"
            )
        from torchaudio.models.decoder import ctc_decoder

        tokens = list(tokens)
        if not 0 <= blank < len(tokens):
            raise ValueError(f"blank id {blank} is outside the {len(tokens)} tokens")
        if word_separator is None:
            word_separator = next((s for s in _SEPARATORS if s in tokens), " ")
        names = []
        for i, tok in enumerate(tokens):
            if tok == word_separator:
                name = FLASHLIGHT_SEPARATOR
            elif tok == FLASHLIGHT_SEPARATOR or not tok or any(ch.isspace() for ch in tok):
                raise ValueError(
                    f"token {i} ({tok!r}) cannot be named in flashlight's token dictionary: it is empty, "
                    f"holds whitespace or is {FLASHLIGHT_SEPARATOR!r} without being the word separator"
                )
            else:
                name = tok
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError("tokens must be unique")
        self.tokens = tokens
        self.blank = blank
        self.beam = beam
        self.separator_id = tokens.index(word_separator) if word_separator in tokens else None
        if self.separator_id is None and lexicon is not None:
            raise ValueError(f"a lexicon needs a word-separator token ({word_separator!r}) in tokens")
        sil_name = names[blank] if self.separator_id is None else FLASHLIGHT_SEPARATOR
        with tempfile.TemporaryDirectory(prefix="asrkd-lm-") as tmp:
            lm_dict = None
            if lm is not None and lexicon is None:
                # A token-level LM: torchaudio's default word dictionary for this case
                # is not in token-id order, which scrambles the id -> LM-word mapping;
                # an explicit dictionary in token order keeps them in step.
                lm_dict = str(Path(tmp) / "lm_dict.txt")
                entries = names + ([] if "<unk>" in names else ["<unk>"])
                Path(lm_dict).write_text("\n".join(entries) + "\n", encoding="utf-8")
            self._decoder = ctc_decoder(
                lexicon=str(lexicon) if lexicon is not None else None,
                tokens=names,
                lm=str(lm) if lm is not None else None,
                lm_dict=lm_dict,
                beam_size=beam,
                beam_size_token=beam_size_token,
                beam_threshold=beam_threshold,
                lm_weight=lm_weight,
                word_score=word_score,
                unk_score=unk_score,
                sil_score=sil_score,
                log_add=log_add,
                blank_token=names[blank],
                sil_token=sil_name,
            )

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor | Sequence[int] | None = None) -> list[list[int]]:
        """Best token ids per utterance of ``(T, V)`` / ``(B, T, V)`` ``log_probs``."""
        lp, lens = _as_batch(log_probs, lengths, self.blank)
        if lp.shape[-1] != len(self.tokens):
            raise ValueError(f"log_probs have {lp.shape[-1]} classes but the decoder has {len(self.tokens)} tokens")
        hyps = self._decoder(lp.contiguous(), torch.tensor(lens, dtype=torch.int32))
        out = []
        for nbest in hyps:
            if not nbest:  # flashlight found no complete hypothesis (e.g. lexicon words impossible)
                out.append([])
                continue
            ids = nbest[0].tokens.tolist()
            # flashlight pads the frame path with silence at both ends, and with a
            # lexicon ends every word with it: strip separators at the ends.
            if self.separator_id is not None:
                start, end = 0, len(ids)
                while start < end and ids[start] == self.separator_id:
                    start += 1
                while end > start and ids[end - 1] == self.separator_id:
                    end -= 1
                ids = ids[start:end]
            out.append(ids)
        return out

    def __repr__(self) -> str:
        return f"TorchaudioBeamSearch(beam={self.beam}, blank={self.blank}, vocab={len(self.tokens)})"


# --------------------------------------------------------------------------- factory


def beam_backend(backend: str = "auto", tokens: Sequence[str] | None = None) -> str:
    """The beam search ``backend`` means: ``"torchaudio"`` or ``"asrkd"`` as given; ``"auto"``:
    torchaudio when flashlight-text is importable and ``tokens`` are given, else asrkd."""
    if backend not in ("auto", "torchaudio", "asrkd"):
        raise ValueError(f"unknown beam-search backend {backend!r}; expected 'auto', 'torchaudio' or 'asrkd'")
    if backend == "auto":
        return "torchaudio" if tokens is not None and flashlight_available() else "asrkd"
    return backend


def build_decoder(
    kind: str = "greedy",
    tokens: Sequence[str] | None = None,
    *,
    blank: int = 0,
    beam: int = 8,
    lexicon: str | Path | None = None,
    lm: str | Path | None = None,
    backend: str = "auto",
    **options,
) -> GreedyDecoder | PrefixBeamSearch | TorchaudioBeamSearch:
    """A decoder with ``decode(log_probs, lengths) -> list[list[int]]``.

    Args:
        kind: ``"greedy"`` or ``"beam"``.
        tokens: id -> symbol (the tokenizer's ``tokens``); needed by the torchaudio backend.
        blank: id of the CTC blank.
        beam: beam size.
        lexicon, lm: lexicon file and KenLM model (torchaudio backend only).
        backend: for ``kind="beam"``: ``"torchaudio"`` (flashlight-text required),
            ``"asrkd"`` (:class:`PrefixBeamSearch`), or ``"auto"``: torchaudio when
            flashlight-text is importable and ``tokens`` are given, else asrkd.
        options: passed on to the chosen class (e.g. ``lm_weight``, ``word_score`` for
            torchaudio; ``token_topk``, ``token_threshold`` for asrkd).
    """
    if kind == "greedy":
        if lexicon is not None or lm is not None:
            raise ValueError("greedy decoding uses no lexicon or language model; use kind='beam'")
        if options:
            raise TypeError(f"greedy decoding takes no options, got {sorted(options)}")
        return GreedyDecoder(blank)
    if kind != "beam":
        raise ValueError(f"unknown decoder kind {kind!r}; expected 'greedy' or 'beam'")
    backend = beam_backend(backend, tokens)
    if backend == "torchaudio":
        if tokens is None:
            raise ValueError("the torchaudio beam search needs the token list (tokens=...)")
        return TorchaudioBeamSearch(tokens, blank=blank, beam=beam, lexicon=lexicon, lm=lm, **options)
    if lexicon is not None or lm is not None:
        raise ValueError(
            "a lexicon or language model needs the torchaudio beam search: pip install flashlight-text"
            + ("" if flashlight_available() else " (not importable here)")
        )
    return PrefixBeamSearch(beam, blank, **options)
