"""CTC search: greedy, the project's prefix beam search, torchaudio's flashlight decoder."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from asrkd.eval.search import (
    GreedyDecoder,
    PrefixBeamSearch,
    TorchaudioBeamSearch,
    build_decoder,
    flashlight_available,
    greedy_decode,
    prefix_beam_search,
)

needs_flashlight = pytest.mark.skipif(
    not flashlight_available(),
    reason="flashlight-text is not installed (pip install flashlight-text): torchaudio's ctc_decoder is unavailable",
)


def _peaked(path: list[int], vocab: int, p: float = 0.97) -> torch.Tensor:
    """(T, V) log-probs putting ``p`` on ``path[t]`` at frame t."""
    probs = torch.full((len(path), vocab), (1 - p) / (vocab - 1))
    probs[torch.arange(len(path)), torch.tensor(path)] = p
    return probs.log()


def _ctc_logprob(log_probs: torch.Tensor, labellings: list[list[int]], blank: int = 0) -> torch.Tensor:
    """log P(labelling | log_probs) for each labelling, by torch's CTC loss. log_probs: (T, V)."""
    n = len(labellings)
    T = log_probs.shape[0]
    lp = log_probs.double().unsqueeze(1).expand(T, n, -1)
    targets = torch.tensor([t for lab in labellings for t in lab], dtype=torch.long)
    target_lengths = torch.tensor([len(lab) for lab in labellings], dtype=torch.long)
    loss = F.ctc_loss(lp, targets, torch.full((n,), T, dtype=torch.long), target_lengths, blank=blank, reduction="none")
    return -loss


def _all_labellings(labels: list[int], max_len: int) -> list[list[int]]:
    return [list(s) for n in range(max_len + 1) for s in itertools.product(labels, repeat=n)]


# --------------------------------------------------------------------------- greedy


def test_greedy_hand_made():
    # path: a a - a b b - - c  ->  a a b c  (the blank separates the two a's)
    V = 4
    lp = _peaked([1, 1, 0, 1, 2, 2, 0, 0, 3], V)
    assert greedy_decode(lp) == [[1, 1, 2, 3]]
    assert greedy_decode(lp.unsqueeze(0), torch.tensor([9])) == [[1, 1, 2, 3]]
    # lengths cut the batch rows; a non-zero blank id
    batch = torch.stack([lp, _peaked([2, 2, 2, 3, 3, 0, 1, 1, 1], V)])
    assert greedy_decode(batch, torch.tensor([9, 5])) == [[1, 1, 2, 3], [2, 3]]
    assert greedy_decode(batch, [3, 0]) == [[1], []]
    assert greedy_decode(_peaked([3, 1, 3, 3, 2], V), blank=3) == [[1, 2]]
    assert GreedyDecoder(blank=0).decode(batch, [9, 9]) == greedy_decode(batch)


def test_greedy_accepts_low_precision_and_logits():
    lp = _peaked([1, 0, 2, 2], 3)
    assert greedy_decode(lp.bfloat16()) == [[1, 2]]
    assert greedy_decode(lp * 5 + 3) == [[1, 2]]  # unnormalised scores: same argmax


@pytest.mark.parametrize(
    "bad, match",
    [
        ((torch.zeros(2, 3, 4, 5),), "shape"),
        ((torch.zeros(2, 3, 4), [3]), "entries"),
        ((torch.zeros(2, 3, 4), [3, 4]), r"lengths\[1\]"),
        ((torch.zeros(3, 4), None, 4), "blank"),
    ],
)
def test_bad_inputs_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        greedy_decode(*bad)
    with pytest.raises(ValueError, match=match):
        prefix_beam_search(*bad[:2], blank=bad[2] if len(bad) > 2 else 0)


# --------------------------------------------------------------------------- prefix beam search


def test_beam1_equals_greedy_on_peaked_inputs():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        T, V = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(2, 8, (1,), generator=g))
        path = torch.randint(0, V, (T,), generator=g).tolist()
        lp = _peaked(path, V, p=0.9)
        assert prefix_beam_search(lp, beam=1) == greedy_decode(lp)
        assert prefix_beam_search(lp, beam=8) == greedy_decode(lp)


def test_repeated_labels_need_a_blank():
    V = 3
    assert prefix_beam_search(_peaked([1, 0, 1], V)) == [[1, 1]]
    assert prefix_beam_search(_peaked([1, 1, 1], V)) == [[1]]
    assert prefix_beam_search(_peaked([0, 1, 1, 0, 0, 1, 2, 2], V)) == [[1, 1, 2]]


def test_beam_sums_paths_where_greedy_takes_one():
    # Two frames, P(blank) = 0.6, P(a) = 0.4: the best path is "- -" (0.36, empty) but
    # "a" collects a a + a - + - a = 0.64.
    lp = torch.tensor([[0.6, 0.4], [0.6, 0.4]]).log()
    assert greedy_decode(lp) == [[]]
    ((best, logp),) = PrefixBeamSearch(beam=4).search(lp)
    assert best == [1]
    assert logp == pytest.approx(math.log(0.64), abs=1e-6)  # float32 inputs


def test_exact_search_matches_brute_force():
    """With no pruning and a large beam the result has the highest CTC probability of all
    labellings (scored by torch's ctc_loss), and its reported log-probability is exact."""
    g = torch.Generator().manual_seed(1234)
    for case in range(25):
        T = int(torch.randint(1, 7, (1,), generator=g))
        V = int(torch.randint(2, 5, (1,), generator=g))
        blank = int(torch.randint(0, V, (1,), generator=g))
        scale = [0.5, 1.5, 3.0][case % 3]
        lp = (torch.randn(T, V, generator=g) * scale).log_softmax(-1)
        labels = [v for v in range(V) if v != blank]
        cands = _all_labellings(labels, T)
        scores = _ctc_logprob(lp, cands, blank=blank)
        best_score = scores.max().item()

        exact = PrefixBeamSearch(beam=100_000, blank=blank, token_topk=None, token_threshold=None, nbest=5)
        nbest = exact.search(lp)
        labelling, logp = nbest[0]
        assert logp == pytest.approx(best_score, abs=1e-6), (case, labelling)
        assert _ctc_logprob(lp, [labelling], blank=blank).item() == pytest.approx(logp, abs=1e-6)
        # the n-best list is sorted and every score is exact
        got = [s for _, s in nbest]
        assert got == sorted(got, reverse=True)
        ref = _ctc_logprob(lp, [lab for lab, _ in nbest], blank=blank).tolist()
        assert got == pytest.approx(ref, abs=1e-6)
        # a moderate pruned beam finds the best labelling on these small cases
        pruned = prefix_beam_search(lp, beam=16, blank=blank)[0]
        assert _ctc_logprob(lp, [pruned], blank=blank).item() == pytest.approx(best_score, abs=1e-6)


def test_beam_batch_and_lengths():
    g = torch.Generator().manual_seed(5)
    lp = (torch.randn(3, 12, 6, generator=g) * 2).log_softmax(-1)
    lengths = torch.tensor([12, 7, 0])
    batched = prefix_beam_search(lp, lengths, beam=8)
    single = [prefix_beam_search(lp[b, :n], beam=8)[0] for b, n in enumerate(lengths.tolist())]
    assert batched == single
    assert batched[2] == []
    # padded frames beyond the length do not matter
    lp2 = lp.clone()
    lp2[1, 7:] = torch.randn(5, 6).log_softmax(-1)
    assert prefix_beam_search(lp2, lengths, beam=8) == batched
    with pytest.raises(ValueError, match="one utterance"):
        PrefixBeamSearch().search(lp)


def test_token_pruning_keeps_results_on_peaked_outputs():
    g = torch.Generator().manual_seed(7)
    path = torch.randint(0, 30, (200,), generator=g).tolist()
    lp = _peaked(path, 30, p=0.8)
    assert prefix_beam_search(lp, beam=8, token_topk=4, token_threshold=5.0) == greedy_decode(lp)


# --------------------------------------------------------------------------- factory


def test_build_decoder():
    lp = _peaked([1, 0, 1, 2, 2], 3).unsqueeze(0)
    greedy = build_decoder("greedy")
    assert isinstance(greedy, GreedyDecoder)
    assert greedy.decode(lp, torch.tensor([5])) == [[1, 1, 2]]
    own = build_decoder("beam", ["<blank>", "a", "b"], beam=4, backend="asrkd", token_topk=2)
    assert isinstance(own, PrefixBeamSearch) and own.beam == 4 and own.token_topk == 2
    assert own.decode(lp, torch.tensor([5])) == [[1, 1, 2]]
    # without tokens "auto" cannot use torchaudio
    assert isinstance(build_decoder("beam", beam=3), PrefixBeamSearch)
    auto = build_decoder("beam", ["<blank>", "a", "b"], beam=4)
    assert isinstance(auto, TorchaudioBeamSearch if flashlight_available() else PrefixBeamSearch)
    assert auto.decode(lp, torch.tensor([5])) == [[1, 1, 2]]
    with pytest.raises(ValueError, match="kind"):
        build_decoder("viterbi")
    with pytest.raises(ValueError, match="lexicon or language model"):
        build_decoder("greedy", lm="lm.arpa")
    with pytest.raises(ValueError, match="flashlight-text"):
        build_decoder("beam", ["<blank>", "a"], backend="asrkd", lexicon="lexicon.txt")
    with pytest.raises(ValueError, match="backend"):
        build_decoder("beam", ["<blank>", "a"], backend="nemo")


def test_without_flashlight_beam_falls_back_or_says_why(monkeypatch):
    import asrkd.eval.search as search

    monkeypatch.setattr(search, "flashlight_available", lambda: False)
    assert isinstance(build_decoder("beam", ["<blank>", "a"]), PrefixBeamSearch)
    with pytest.raises(ValueError, match="pip install flashlight-text .not importable here."):
        build_decoder("beam", ["<blank>", "a"], lm="lm.arpa")
    with pytest.raises(RuntimeError, match="flashlight-text"):
        build_decoder("beam", ["<blank>", "a"], backend="torchaudio")


# --------------------------------------------------------------------------- torchaudio / flashlight

TOKENS = ["<blank>", " ", "c", "a", "t", "p", "o"]


def _frame(**probs: float) -> torch.Tensor:
    v = torch.full((len(TOKENS),), 1e-4)
    for sym, p in probs.items():
        v[0 if sym == "blank" else TOKENS.index(" " if sym == "sep" else sym)] = p
    return (v / v.sum()).log()


def _strip_sep(ids: list[int], sep: int = 1) -> list[int]:
    while ids and ids[0] == sep:
        ids = ids[1:]
    while ids and ids[-1] == sep:
        ids = ids[:-1]
    return ids


@needs_flashlight
def test_torchaudio_equals_greedy_on_peaked_inputs():
    g = torch.Generator().manual_seed(3)
    dec = TorchaudioBeamSearch(TOKENS, beam=8)
    batch, lengths = [], []
    for _ in range(6):
        T = int(torch.randint(1, 25, (1,), generator=g))
        path = torch.randint(0, len(TOKENS), (T,), generator=g).tolist()
        batch.append(torch.nn.functional.pad(_peaked(path, len(TOKENS), 0.9), (0, 0, 0, 25 - T)))
        lengths.append(T)
    lp = torch.stack(batch)
    got = dec.decode(lp, torch.tensor(lengths))
    want = [_strip_sep(h) for h in greedy_decode(lp, lengths)]
    assert got == want


@needs_flashlight
def test_torchaudio_exact_search_matches_brute_force():
    g = torch.Generator().manual_seed(11)
    toks = ["<blank>", " ", "a", "b"]
    dec = TorchaudioBeamSearch(toks, beam=5000, beam_threshold=1e9, log_add=True)
    for _ in range(10):
        T = int(torch.randint(1, 6, (1,), generator=g))
        lp = (torch.randn(T, 4, generator=g) * 1.5).log_softmax(-1)
        scores = _ctc_logprob(lp, _all_labellings([1, 2, 3], T))
        got = dec.decode(lp)[0]
        # flashlight drops separators at the ends: compare with the best labelling that
        # strips to the same ids
        best = max(s for lab, s in zip(_all_labellings([1, 2, 3], T), scores.tolist()) if _strip_sep(lab) == got)
        assert best == pytest.approx(scores.max().item(), abs=1e-4)


@needs_flashlight
def test_torchaudio_lexicon_and_kenlm(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("cat c a t |\ncap c a p |\ncot c o t |\n", encoding="utf-8")
    arpa = tmp_path / "words.arpa"
    arpa.write_text(
        "\\data\\\nngram 1=6\nngram 2=2\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t-0.5\n-0.05\tcat\t-0.3\n"
        "-3.0\tcap\t-0.3\n-3.0\tcot\t-0.3\n-2.0\t<unk>\n\n\\2-grams:\n-0.05\t<s> cat\n-3.0\t<s> cap\n\n\\end\\\n",
        encoding="utf-8",
    )
    # "c a {p .53 | t .45} -": acoustically "cap", the LM prefers "cat"
    lp = torch.stack([_frame(c=0.98), _frame(a=0.98), _frame(t=0.45, p=0.53), _frame(blank=0.98)])

    def text(ids: list[int]) -> str:
        return "".join(TOKENS[i] for i in ids)

    assert text(TorchaudioBeamSearch(TOKENS, beam=10).decode(lp)[0]) == "cap"
    assert text(TorchaudioBeamSearch(TOKENS, beam=10, lexicon=lexicon).decode(lp)[0]) == "cap"
    assert text(TorchaudioBeamSearch(TOKENS, beam=10, lexicon=lexicon, lm=arpa).decode(lp)[0]) == "cat"
    via_factory = build_decoder("beam", TOKENS, beam=10, lexicon=lexicon, lm=arpa, lm_weight=2.0)
    assert text(via_factory.decode(lp)[0]) == "cat"

    # a lexicon restricts the output to its words: "c a x t" (x unknown) -> a lexicon word
    noisy = torch.stack(
        [
            _frame(c=0.9),
            _frame(a=0.5, o=0.4),
            _frame(t=0.9),
            _frame(sep=0.9),
            _frame(c=0.9),
            _frame(o=0.9),
            _frame(p=0.6, t=0.35),
        ]
    )
    words = text(TorchaudioBeamSearch(TOKENS, beam=20, lexicon=lexicon).decode(noisy)[0]).split()
    assert words and all(w in {"cat", "cap", "cot"} for w in words)


@needs_flashlight
def test_torchaudio_token_level_kenlm(tmp_path):
    # without a lexicon the LM is over token symbols ("|" = the separator)
    arpa = tmp_path / "tokens.arpa"
    arpa.write_text(
        "\\data\\\nngram 1=9\nngram 2=1\n\n\\1-grams:\n-1.0\t</s>\n-99\t<s>\t0\n-0.5\tc\t0\n-0.5\ta\t0\n"
        "-0.1\tt\t0\n-4.0\tp\t0\n-1.0\to\t0\n-1.0\t|\t0\n-2.0\t<unk>\n\n\\2-grams:\n-0.1\ta t\n\n\\end\\\n",
        encoding="utf-8",
    )
    lp = torch.stack([_frame(c=0.98), _frame(a=0.98), _frame(t=0.45, p=0.53), _frame(blank=0.98)])
    assert TorchaudioBeamSearch(TOKENS, beam=10, lm=arpa, lm_weight=0.0).decode(lp) == [[2, 3, 5]]
    assert TorchaudioBeamSearch(TOKENS, beam=10, lm=arpa, lm_weight=2.0).decode(lp) == [[2, 3, 4]]


@needs_flashlight
def test_torchaudio_without_separator_and_bad_tokens():
    # SentencePiece-like pieces: no separator, the blank serves as silence
    pieces = ["<blank>", "\u2581ca", "t", "\u2581do", "g"]
    lp = _peaked([1, 0, 2, 3, 3, 4, 0], len(pieces))
    assert TorchaudioBeamSearch(pieces, beam=4).decode(lp) == greedy_decode(lp) == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="word-separator"):
        TorchaudioBeamSearch(pieces, lexicon="lexicon.txt")
    with pytest.raises(ValueError, match="token 2"):
        TorchaudioBeamSearch(["<blank>", " ", "a b"])
    with pytest.raises(ValueError, match="classes"):
        TorchaudioBeamSearch(pieces).decode(torch.zeros(3, 7))
