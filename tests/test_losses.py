"""Teacher -> student alignment (asrkd.kd.align) and DistillationLoss on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from asrkd.kd.align import (
    TeacherOutput,
    VocabMap,
    blank_probability,
    blank_probability_topk,
    blank_weights,
    resample_frames,
    resample_topk,
    resampled_lengths,
    shift_topk,
)
from asrkd.kd.loss import DistillationLoss, ctc_loss
from asrkd.ops import reference as ref

WAV2VEC2 = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "\u2019", "1"]
STUDENT = ["<blank>", " ", "'", "a", "e", "t"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _close(a, b, atol=1e-6, rtol=1e-5):
    a, b = (torch.as_tensor(x, dtype=torch.float64) if not isinstance(x, torch.Tensor) else x.double() for x in (a, b))
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def _logprobs(*shape):
    return torch.randn(*shape, dtype=torch.float64).mul(2).log_softmax(-1)


# --------------------------------------------------------------------------- vocabulary map


def test_vocab_map_by_name_wav2vec2_to_characters():
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    #                    <pad> <s> </s> <unk>  |  E  T  A  ’  1
    assert vm._index.tolist() == [0, 0, -1, -1, 1, 4, 5, 3, 2, -1]
    assert vm.dropped == ["</s>", "<unk>", "1"]
    assert vm.unmapped == ["</s>", "<unk>", "1"]
    assert vm.merged == {"<blank>": ["<pad>", "<s>"]}
    assert vm.unreached == []
    assert not vm.is_identity
    assert "dropped" in vm.describe() and "'</s>'" in vm.describe()


def test_vocab_map_sums_merged_and_renormalises_dropped():
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    #                   <pad> <s>  </s> <unk>  |    E    T    A    ’    1
    p = torch.tensor([0.30, 0.10, 0.05, 0.05, 0.10, 0.20, 0.10, 0.05, 0.05, 0.0])
    logits = (p.log() + 3.0).view(1, 1, -1)  # unnormalised, and '1' has a -inf logit
    out = vm.map_logits(logits)
    kept = 0.9  # </s>, <unk> and 1 are dropped
    expected = torch.tensor([0.40, 0.10, 0.05, 0.05, 0.20, 0.10]) / kept  # blank, ' ', ', a, e, t
    assert out.shape == (1, 1, 6) and out.dtype == torch.float32
    _close(out.exp().flatten(), expected)


def test_vocab_map_group_logsumexp_is_exact_far_below_the_frame_max():
    # '<pad>' and '<s>' sit 1000 nats below 'a': a frame-max subtraction would underflow to -inf.
    vm = VocabMap.from_vocabs(["<pad>", "<s>", "a"], ["<blank>", "a"], teacher_blank_id=0)
    z = torch.tensor([[[-1000.0, -1001.0, 0.0]]], dtype=torch.float64)
    out = vm.map_logits(z)
    assert out.dtype == torch.float64
    _close(out[0, 0, 0], -1000.0 + math.log1p(math.exp(-1.0)), atol=1e-9, rtol=0)
    _close(out[0, 0, 1], 0.0, atol=1e-12, rtol=0)


def test_vocab_map_identity_and_unreached_symbols():
    vm = VocabMap.from_vocabs(STUDENT, STUDENT)
    assert vm.is_identity and vm.dropped == []
    x = torch.randn(2, 3, 6)
    _close(vm.map_logits(x), x.log_softmax(-1))
    # A teacher without an apostrophe: the student's "'" gets probability 0.
    vm = VocabMap.from_vocabs(["<blank>", "|", "A", "E", "T"], STUDENT, teacher_blank_id=0)
    assert vm.unreached == ["'"]
    out = vm.map_logits(torch.randn(1, 2, 5))
    assert torch.isneginf(out[..., 2]).all()
    _close(out.exp().sum(-1), torch.ones(1, 2))


def test_vocab_map_unmapped_to_a_fallback_symbol_and_overrides():
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0, unmapped="<blank>")
    assert vm.dropped == [] and vm.unmapped == ["</s>", "<unk>", "1"]
    assert vm.merged["<blank>"] == ["<pad>", "<s>", "</s>", "<unk>", "1"]
    p = torch.tensor([0.30, 0.10, 0.05, 0.05, 0.10, 0.20, 0.10, 0.05, 0.05, 0.0])
    out = vm.map_logits(p.log().view(1, 1, -1)).exp().flatten()
    _close(out, torch.tensor([0.50, 0.10, 0.05, 0.05, 0.20, 0.10]))

    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0, overrides={"1": "t", "<s>": None})
    assert vm._index.tolist()[1] == -1 and vm._index.tolist()[9] == 5
    with pytest.raises(ValueError, match="not a student symbol"):
        VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0, overrides={"1": "one"})
    with pytest.raises(ValueError, match="neither 'drop' nor a student symbol"):
        VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0, unmapped="<unk>")


def test_vocab_map_sentencepiece_space_and_upper_case_student():
    vm = VocabMap.from_vocabs(
        ["<blank>", "\u2581", "a", "B"], ["_", "|", "A", "B"], teacher_blank_id=0, student_blank_id=0
    )
    assert vm._index.tolist() == [0, 1, 2, 3]
    assert vm.is_identity


def test_vocab_map_matches_pieces_by_the_shared_symbol_rule():
    # asrkd.data.text.canonical_symbol: a piece's "▁" is a space, so "▁The" is " the".
    vm = VocabMap.from_vocabs(
        ["<pad>", "\u2581The", "\u2581a", "s"], ["<blank>", " the", "\u2581a", "s"], teacher_blank_id=0
    )
    assert vm._index.tolist() == [0, 1, 2, 3] and vm.unmapped == []


def test_vocab_map_bpe_teacher_is_refused_naming_the_pieces():
    bpe = ["<blank>", "<unk>", "\u2581the", "\u2581a", "ing", "ed", "s", "t", "er", "\u2581to", "tion", "e"]
    with pytest.raises(ValueError, match="subword") as err:
        VocabMap.from_vocabs(bpe, STUDENT, teacher_blank_id=0)
    for piece in ("'\u2581the'", "'ing'", "'tion'"):
        assert piece in str(err.value)
    with pytest.raises(ValueError, match="no sensible vocabulary mapping") as err:
        VocabMap.from_vocabs(["<blank>", "\u0430", "\u0431", "\u0432", "e"], STUDENT, teacher_blank_id=0)
    assert "'\u0430'" in str(err.value) and "subword" not in str(err.value)


def test_vocab_map_without_a_blank_is_refused():
    with pytest.raises(ValueError, match="student blank"):
        VocabMap.from_vocabs(["a", "e", "t"], STUDENT)
    # A blank by name is enough.
    assert VocabMap.from_vocabs(["<pad>", "a", "e", "t"], STUDENT)._index.tolist()[0] == 0


def test_map_topk_merges_duplicates_and_places_the_tail_exactly():
    # top-2 of 4: 'A' 0.5 and <blank> 0.3 stored, tail 0.2 over the unstored 'a' and 'b'.
    vm = VocabMap.from_vocabs(["<blank>", "A", "a", "b"], ["<blank>", "a", "b"], teacher_blank_id=0)
    idx = torch.tensor([[[1, 0]]])
    lp = torch.tensor([[[0.5, 0.3]]]).log()
    out_idx, out_lp = vm.map_topk(idx, lp)
    assert out_idx.shape == (1, 1, 2)
    dense = ref.topk_to_dense_logprobs(out_idx, out_lp, 3).exp().flatten()
    _close(dense, torch.tensor([0.3, 0.5 + 0.1, 0.1]))  # 'a' gets 'A' plus its unstored mate 'a'

    # A dropped token in the top-k: its mass and the tail's share of dropped tokens go.
    vm = VocabMap.from_vocabs(["<blank>", "a", "<unk>", "b"], ["<blank>", "a", "b"], teacher_blank_id=0)
    out_idx, out_lp = vm.map_topk(torch.tensor([[[1, 2]]]), torch.tensor([[[0.5, 0.3]]]).log())
    assert sorted(out_idx.flatten().tolist()) == [0, 1]  # 'a' and a filler id, distinct
    dense = ref.topk_to_dense_logprobs(out_idx, out_lp, 3).exp().flatten()
    _close(dense, torch.tensor([0.1, 0.5, 0.1]) / 0.7)


def test_map_topk_with_k_equal_v_matches_the_dense_map():
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    lp = _logprobs(3, 7, len(WAV2VEC2)).float()
    vals, idx = lp.topk(len(WAV2VEC2), dim=-1)
    out_idx, out_lp = vm.map_topk(idx, vals)
    assert out_idx.shape == (3, 7, 6)
    srt = out_idx.sort(-1).values
    assert (srt == torch.arange(6)).all()  # every student id once per frame
    _close(ref.topk_to_dense_logprobs(out_idx, out_lp, 6), vm.map_logits(lp), atol=1e-5)


def test_map_topk_keeps_the_topk_op_distribution_consistent():
    # k < V_t with merges and drops: what the top-k op sees is a proper distribution whose
    # stored entries carry their exact mapped mass.
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    lp = _logprobs(2, 5, len(WAV2VEC2)).float()
    vals, idx = lp.topk(4, dim=-1)
    out_idx, out_lp = vm.map_topk(idx, vals)
    assert out_idx.shape == (2, 5, 4)
    assert (out_idx.sort(-1).values[..., 1:] != out_idx.sort(-1).values[..., :-1]).all()
    dense = ref.topk_to_dense_logprobs(out_idx, out_lp, 6).exp()
    _close(dense.sum(-1), torch.ones(2, 5), atol=1e-5)


# --------------------------------------------------------------------------- resampling


def test_resample_50_to_25_averages_pairs_and_the_last_partial_frame():
    lp = _logprobs(2, 5, 4)
    p = lp.exp()
    out, valid = resample_frames(lp, torch.tensor([5, 3]), from_rate=50, to_rate=25)
    assert out.shape == (2, 3, 4) and out.dtype == torch.float64
    _close(out[0].exp(), torch.stack([(p[0, 0] + p[0, 1]) / 2, (p[0, 2] + p[0, 3]) / 2, p[0, 4]]), atol=1e-12)
    _close(out[1, :2].exp(), torch.stack([(p[1, 0] + p[1, 1]) / 2, p[1, 2]]), atol=1e-12)
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    assert resampled_lengths(torch.tensor([5, 3, 0, 4]), 50, 25).tolist() == [3, 2, 0, 2]


def test_resample_to_16_67_hz_overlap_weights():
    lp = _logprobs(1, 9, 3)
    p = lp.exp()[0]
    # Exactly 50/3 Hz (also as the float 16.666...): whole triples.
    for rate in (50 / 3, 16.666666666666668):
        out, valid = resample_frames(lp, from_rate=50, to_rate=rate)
        assert out.shape == (1, 3, 3) and valid.all()
        _close(out[0].exp(), torch.stack([p[0:3].mean(0), p[3:6].mean(0), p[6:9].mean(0)]), atol=1e-12)
    # 16.67 Hz literally: a student frame lasts 1/16.67 s = 2.9994 teacher frames.
    rho = 50 / 16.67
    out, _ = resample_frames(lp, from_rate=50, to_rate=16.67)
    assert out.shape[1] == math.ceil(9 / rho) == 4
    w0 = torch.tensor([1.0, 1.0, rho - 2], dtype=torch.float64)
    _close(out[0, 0].exp(), (w0[:, None] * p[0:3]).sum(0) / rho, atol=1e-9)
    w1 = torch.tensor([3 - rho, 1.0, 1.0, 2 * rho - 5], dtype=torch.float64)  # frames 2..5
    _close(out[0, 1].exp(), (w1[:, None] * p[2:6]).sum(0) / rho, atol=1e-9)
    # 50 -> 20 Hz: 2.5 teacher frames per student frame.
    out, _ = resample_frames(lp, from_rate=50, to_rate=20)
    _close(out[0, 0].exp(), 0.4 * p[0] + 0.4 * p[1] + 0.2 * p[2], atol=1e-12)
    _close(out[0, 1].exp(), 0.2 * p[2] + 0.4 * p[3] + 0.4 * p[4], atol=1e-12)


def test_resample_12_5_hz_upsampling_and_logits():
    lp = _logprobs(1, 8, 5)
    p = lp.exp()[0]
    out, _ = resample_frames(lp, from_rate=50, to_rate=12.5)
    _close(out[0].exp(), torch.stack([p[0:4].mean(0), p[4:8].mean(0)]), atol=1e-12)
    out, valid = resample_frames(lp, torch.tensor([3]), from_rate=25, to_rate=50)
    assert out.shape == (1, 16, 5)
    _close(out[0, :6], lp[0, [0, 0, 1, 1, 2, 2]], atol=1e-12)
    assert valid[0].tolist() == [True] * 6 + [False] * 10
    # Unnormalised logits are normalised on the way.
    z = torch.randn(2, 6, 5) * 4 + 7
    a, _ = resample_frames(z, from_rate=50, to_rate=25)
    b, _ = resample_frames(z.log_softmax(-1), from_rate=50, to_rate=25)
    _close(a, b, atol=1e-5)


def test_resample_ignores_padding_even_nan():
    lp = _logprobs(2, 6, 4).float()
    lp[1, 3:] = float("nan")
    out, valid = resample_frames(lp, torch.tensor([6, 3]), from_rate=50, to_rate=25)
    assert torch.isfinite(out).all()
    _close(out[1, 1].exp(), lp[1, 2].exp())
    _close(out[1, 2], torch.full((4,), -math.log(4)))  # the partial last frame: frame 2 alone
    assert valid[1].tolist() == [True, True, False]


def test_resample_topk_equals_dense_resample_when_k_is_v():
    lp = _logprobs(2, 7, 6).float()
    vals, idx = lp.topk(6, dim=-1)
    lens = torch.tensor([7, 4])
    a, va = resample_topk(idx, vals, 6, lens, from_rate=50, to_rate=50 / 3, num_frames=4, shift=1)
    b, vb = resample_frames(lp, lens, from_rate=50, to_rate=50 / 3, num_frames=4, shift=1)
    assert (va == vb).all()
    _close(a, b, atol=1e-5)
    # k < V: each frame is the top-k op's distribution (tail spread evenly).
    vals, idx = lp.topk(3, dim=-1)
    a, _ = resample_topk(idx, vals, 6, from_rate=50, to_rate=25)
    dense = ref.topk_to_dense_logprobs(idx, vals, 6).exp()
    _close(a[0, 0].exp(), (dense[0, 0] + dense[0, 1]) / 2, atol=1e-6)


# --------------------------------------------------------------------------- streaming shift


def test_shift_delays_the_teacher_and_masks_the_first_frames():
    x = _logprobs(2, 5, 3)
    out, valid = resample_frames(x, torch.tensor([5, 2]), from_rate=1, to_rate=1, shift=2)
    assert out.shape == x.shape
    _close(out[0, 2:], x[0, :3], atol=1e-12)  # student frame t <- teacher frame t - 2
    _close(out[1, 2:4], x[1, :2], atol=1e-12)
    assert valid.tolist() == [[False, False, True, True, True], [False, False, True, True, False]]
    _close(out[~valid], torch.full((5, 3), -math.log(3)), atol=1e-12)  # no target: uniform, finite
    out, valid = resample_frames(x, from_rate=1, to_rate=1)
    _close(out, x, atol=1e-12)
    assert valid.all()
    with pytest.raises(ValueError, match="shift"):
        resample_frames(x, from_rate=1, to_rate=1, shift=-1)


def test_shift_topk_gathers_the_delayed_frames_and_stays_finite_past_the_teacher():
    x = _logprobs(2, 4, 5)
    vals, idx = x.topk(5, dim=-1)
    lengths = torch.tensor([4, 2])
    s_idx, s_lp = shift_topk(idx, vals, lengths, num_frames=6, shift=1)
    assert s_idx.shape == s_lp.shape == (2, 6, 5)
    dense, valid = resample_frames(x, lengths, from_rate=1, to_rate=1, num_frames=6, shift=1)
    got = ref.topk_to_dense_logprobs(s_idx, s_lp, 5)
    _close(got[valid], dense[valid], atol=1e-12)  # k = V: the dense shift, frame for frame
    assert valid.tolist() == [[False, True, True, True, True, False], [False, True, True, False, False, False]]
    # Frames without a teacher frame repeat a valid one (never padding), so the op sees distinct ids.
    assert torch.equal(s_idx[1, 3:], idx[1, 1:2].expand(3, 5)) and torch.equal(s_idx[:, 0], idx[:, 0])
    same_idx, same_lp = shift_topk(idx, vals, lengths, num_frames=3)
    assert torch.equal(same_idx, idx[:, :3]) and torch.equal(same_lp, vals[:, :3])


def test_shift_combined_with_resampling_is_in_student_frames():
    lp = _logprobs(1, 8, 3)
    p = lp.exp()[0]
    out, valid = resample_frames(lp, from_rate=50, to_rate=25, shift=1)
    assert out.shape == (1, 4, 3)
    assert valid[0].tolist() == [False, True, True, True]
    _close(out[0, 1:].exp(), torch.stack([(p[0] + p[1]) / 2, (p[2] + p[3]) / 2, (p[4] + p[5]) / 2]), atol=1e-12)


# --------------------------------------------------------------------------- blank-aware KD

P_BLANK = torch.tensor([[0.9, 0.2, 0.95, 0.6, 0.1, 0.7], [0.99, 0.99, 0.99, 0.3, 0.9, 0.9]])
MASK = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])


def test_blank_weights_none_and_threshold():
    assert blank_weights(P_BLANK, "none", mask=MASK).tolist() == MASK.float().tolist()
    w = blank_weights(P_BLANK, "threshold", threshold=0.5, weight=0.25, mask=MASK)
    assert w.tolist() == [[0.25, 1, 0.25, 0.25, 1, 0.25], [0.25, 0.25, 0.25, 1, 0, 0]]
    w = blank_weights(P_BLANK, "threshold", threshold=0.92, weight=0.0, mask=MASK)
    assert w.tolist() == [[1, 1, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0]]


def test_blank_weights_select_is_symmetric_and_seeded():
    draws = []
    for seed in range(8):
        w = blank_weights(P_BLANK, "select", threshold=0.5, mask=MASK, generator=torch.Generator().manual_seed(seed))
        assert set(w.flatten().tolist()) <= {0.0, 1.0}
        # All non-blank frames, and as many blank frames (row 0: 2 of 4, row 1: 1 of 3).
        assert w[0, 1] == 1 and w[0, 4] == 1 and w[1, 3] == 1
        assert w[0, [0, 2, 3, 5]].sum() == 2 and w[1, [0, 1, 2]].sum() == 1
        assert w[1, 4:].sum() == 0  # masked frames are never picked
        again = blank_weights(P_BLANK, "select", mask=MASK, generator=torch.Generator().manual_seed(seed))
        assert (w == again).all()
        draws.append(tuple(w.flatten().tolist()))
    assert len(set(draws)) > 1
    # Fewer blank than non-blank frames: all of them; an all-blank utterance: nothing.
    w = blank_weights(
        torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.9, 0.9, 0.9, 0.9]]), "select", generator=torch.Generator().manual_seed(0)
    )
    assert w.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="blank_mode"):
        blank_weights(P_BLANK, "random")


def test_blank_probability_dense_and_topk():
    lp = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]]).log()
    _close(blank_probability(lp + 5.0, 0), torch.tensor([[0.7, 0.1]]))
    idx = torch.tensor([[[0, 1], [1, 2]]])
    vals = torch.tensor([[[0.7, 0.2], [0.6, 0.3]]]).log()
    # Frame 1 has no stored blank: it gets the even tail share 0.1 / 1.
    _close(blank_probability_topk(idx, vals, 0, 3), torch.tensor([[0.7, 0.1]]))


def test_topk_tail_spreads_the_missing_mass_evenly():
    p = torch.tensor([[0.5, 0.3], [0.6, 0.6], [0.9, 0.1]])  # tail 0.2; over-full (rounding); exactly full
    _close(ref.topk_tail(p, 6), torch.tensor([0.05, 0.0, 0.0]), atol=1e-7)
    _close(ref.topk_tail(p, 6, log=True)[0], math.log(0.2) - math.log(4), atol=1e-6)
    assert ref.topk_tail(p, 6, log=True)[1:].tolist() == [float("-inf")] * 2
    assert ref.topk_tail(p, 2).tolist() == [0.0] * 3 and ref.topk_tail(p, 2, log=True).isneginf().all()  # k = V


# --------------------------------------------------------------------------- DistillationLoss


def _batch(B=3, T_s=12, V=6, S=4):
    student = torch.randn(B, T_s, V, requires_grad=True)
    lengths = torch.tensor([T_s, T_s - 3, T_s - 5])[:B]
    targets = torch.randint(1, V, (B, S))
    target_lengths = torch.tensor([4, 3, 2])[:B]
    return student, lengths, targets, target_lengths


def _hand_ctc(student, lengths, targets, target_lengths, rows):
    lp = student.log_softmax(-1).transpose(0, 1)
    per = F.ctc_loss(lp[:, rows], targets[rows], lengths[rows], target_lengths[rows], reduction="none")
    return (per / target_lengths[rows]).mean()


def test_distillation_loss_equals_hand_composed_ctc_plus_kd():
    student, lengths, targets, target_lengths = _batch()
    teacher = torch.randn(3, 12, 6) * 3
    loss_fn = DistillationLoss(ctc_weight=0.3, kd_weight=0.7, temperature=2.0)
    out = loss_fn(student, lengths, targets, target_lengths, teacher_logits=teacher)
    ctc = _hand_ctc(student, lengths, targets, target_lengths, [0, 1, 2])
    kd = ref.kd_kl_div(student.double(), teacher.double(), lengths, temperature=2.0)
    _close(out.ctc, ctc, atol=1e-5)
    _close(out.kd, kd, atol=1e-5)
    _close(out.loss, 0.3 * ctc + 0.7 * kd, atol=1e-5)
    assert int(out.kd_frames) == int(lengths.sum()) and int(out.ctc_utterances) == 3
    assert set(out.to_dict()) == {"loss", "ctc", "kd", "ctc_utterances", "ctc_skipped", "kd_frames"}
    # torch's own "mean" reduction is the same normalisation.
    _close(out.ctc, F.ctc_loss(student.log_softmax(-1).transpose(0, 1), targets, lengths, target_lengths), atol=1e-5)


@pytest.mark.parametrize("resample", ["average", "ctc"])
def test_distillation_loss_full_alignment_against_a_hand_alignment(resample):
    # wav2vec2-like teacher at 50 Hz, character student at 25 Hz, shift 1, threshold weights.
    B, T_t, T_s = 2, 11, 7
    student = torch.randn(B, T_s, 6, requires_grad=True)
    s_len = torch.tensor([7, 5])
    t_len = torch.tensor([11, 8])
    teacher = torch.randn(B, T_t, len(WAV2VEC2)) * 2
    teacher[:, :, 0] += 2.0  # blank-heavy
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    loss_fn = DistillationLoss(
        ctc_weight=0.0,
        kd_weight=1.0,
        temperature=1.5,
        shift=1,
        blank_mode="threshold",
        blank_threshold=0.6,
        blank_weight=0.2,
        vocab_map=vm,
        student_frame_rate=25,
        teacher_frame_rate=50,
        resample=resample,
    )
    out = loss_fn(student, s_len, teacher_logits=teacher, teacher_lengths=t_len)

    # By hand, frame by frame.
    groups = {0: [0, 1], 1: [4], 2: [8], 3: [7], 4: [5], 5: [6]}  # student id -> teacher ids
    p = teacher.double().softmax(-1)
    mapped = torch.stack([p[..., g].sum(-1) for g in groups.values()], -1)
    mapped = mapped / mapped.sum(-1, keepdim=True)
    target = torch.full((B, T_s, 6), 1.0 / 6, dtype=torch.float64)
    weights = torch.zeros(B, T_s, dtype=torch.float64)
    for b in range(B):
        for j in range(1, T_s):
            frames = [i for i in (2 * (j - 1), 2 * (j - 1) + 1) if i < t_len[b]]
            if not frames or j >= s_len[b]:
                continue
            if resample == "average":
                target[b, j] = mapped[b, frames].mean(0)
            else:  # non-blank mass summed over the merged frames, capped at 1; blank the rest
                non_blank = mapped[b, frames, 1:].sum(0)
                non_blank = non_blank / max(1.0, float(non_blank.sum()))
                target[b, j] = torch.cat([1 - non_blank.sum(0, keepdim=True), non_blank])
            weights[b, j] = 0.2 if target[b, j, 0] > 0.6 else 1.0
    kd = ref.kd_kl_div(student.double(), target.log(), s_len, temperature=1.5, weights=weights)
    _close(out.kd, kd, atol=1e-4)
    _close(out.loss, kd, atol=1e-4)
    assert int(out.kd_frames) == int((weights > 0).sum()) == 6 + 4  # b=1: teacher covers frames 1..4


def test_distillation_loss_label_free_utterances_contribute_only_kd():
    student, lengths, targets, target_lengths = _batch()
    teacher = torch.randn(3, 12, 6)
    loss_fn = DistillationLoss(ctc_weight=1.0, kd_weight=0.5)
    has_text = torch.tensor([True, False, True])
    out = loss_fn(student, lengths, targets, target_lengths, teacher_logits=teacher, has_text=has_text)
    _close(out.ctc, _hand_ctc(student, lengths, targets, target_lengths, [0, 2]), atol=1e-5)
    _close(out.kd, ref.kd_kl_div(student.double(), teacher.double(), lengths), atol=1e-5)
    assert int(out.ctc_utterances) == 2
    # Empty targets mean no text too; a batch without any text is pure KD.
    out2 = loss_fn(student, lengths, targets, torch.tensor([4, 0, 2]), teacher_logits=teacher)
    _close(out2.loss, out.loss, atol=1e-6)
    out3 = loss_fn(student, lengths, teacher_logits=teacher)
    assert float(out3.ctc) == 0 and int(out3.ctc_utterances) == 0
    _close(out3.loss, 0.5 * out.kd, atol=1e-6)
    out3.loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_loss_ctc_only_baseline():
    student, lengths, targets, target_lengths = _batch()
    loss_fn = DistillationLoss(ctc_weight=1.0, kd_weight=1.0, blank_mode="select", shift=2)
    out = loss_fn(student, lengths, targets, target_lengths)
    assert float(out.kd) == 0 and int(out.kd_frames) == 0
    _close(out.loss, _hand_ctc(student, lengths, targets, target_lengths, [0, 1, 2]), atol=1e-5)
    with pytest.raises(ValueError, match="nothing to learn from"):
        loss_fn(student, lengths, targets, torch.zeros(3, dtype=torch.long))


def test_distillation_loss_counts_infeasible_transcripts():
    student = torch.randn(2, 4, 6, requires_grad=True)
    targets = torch.tensor([[1, 2, 0, 0, 0], [1, 1, 1, 2, 3]])  # the second needs 5 + 2 repeats > 4 frames
    out = DistillationLoss()(student, torch.tensor([4, 4]), targets, torch.tensor([2, 5]))
    assert int(out.ctc_skipped) == 1 and int(out.ctc_utterances) == 1
    _close(out.ctc, _hand_ctc(student, torch.tensor([4, 4]), targets, torch.tensor([2, 5]), [0]), atol=1e-5)
    loss, used, skipped = ctc_loss(student.log_softmax(-1), torch.tensor([1, 1]), targets, torch.tensor([2, 5]))
    assert int(used) == 0 and int(skipped) == 2 and float(loss.detach()) == 0
    out = DistillationLoss()(student, torch.tensor([1, 1]), targets, torch.tensor([2, 5]))
    out.loss.backward()  # a zero loss still attached to the graph
    assert (student.grad == 0).all()


@pytest.mark.parametrize("case", ["equal", "shift", "resample", "vocab", "vocab+resample"])
def test_topk_path_equals_dense_path_when_k_is_v(case):
    vocab = WAV2VEC2 if case.startswith("vocab") else STUDENT
    rates = {"student_frame_rate": 25, "teacher_frame_rate": 50} if "resample" in case else {}
    B, T_s = 2, 6
    T_t = 12 if rates else 7
    student = torch.randn(B, T_s, 6, requires_grad=True)
    s_len = torch.tensor([6, 4])
    t_len = torch.tensor([T_t, T_t - 3])
    teacher = (torch.randn(B, T_t, len(vocab)) * 3).log_softmax(-1)
    vals, idx = teacher.topk(len(vocab), dim=-1)
    vm = VocabMap.from_vocabs(vocab, STUDENT, teacher_blank_id=0) if vocab is WAV2VEC2 else None
    loss_fn = DistillationLoss(
        ctc_weight=0,
        temperature=2.0,
        shift=2 if case == "shift" else 0,
        vocab_map=vm,
        blank_mode="threshold",
        blank_threshold=0.2,
        **rates,
    )
    dense = loss_fn(student, s_len, teacher_logits=teacher, teacher_lengths=t_len)
    g_dense = torch.autograd.grad(dense.loss, student)[0]
    topk = loss_fn(student, s_len, teacher_topk=(idx.to(torch.int16), vals.half().float()), teacher_lengths=t_len)
    g_topk = torch.autograd.grad(topk.loss, student)[0]
    _close(topk.kd, dense.kd, atol=2e-3, rtol=2e-3)  # the top-k values went through fp16, as in a cache
    _close(g_topk, g_dense, atol=2e-4, rtol=2e-3)
    assert int(topk.kd_frames) == int(dense.kd_frames)


def test_topk_with_shift_matches_a_shifted_hand_target():
    B, T = 1, 5
    student = torch.randn(B, T, 6)
    teacher = (torch.randn(B, T, 6) * 2).log_softmax(-1)
    vals, idx = teacher.topk(3, dim=-1)
    out = DistillationLoss(ctc_weight=0, shift=1)(student, torch.tensor([5]), teacher_topk=(idx, vals))
    w = torch.tensor([[0.0, 1, 1, 1, 1]])
    shifted = (idx[:, [0, 0, 1, 2, 3]], vals[:, [0, 0, 1, 2, 3]])
    _close(out.kd, ref.kd_kl_div_topk(student, *shifted, weights=w), atol=1e-5)


@pytest.mark.parametrize("kind", ["dense", "topk"])
def test_teacher_output_argument_equals_the_separate_teacher_arguments(kind):
    student, lengths, targets, target_lengths = _batch()
    teacher = (torch.randn(3, 24, len(WAV2VEC2)) * 2).log_softmax(-1)
    t_len = 2 * lengths
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    kw = {"vocab_map": vm, "student_frame_rate": 25, "teacher_frame_rate": 50, "shift": 1, "blank_mode": "select"}
    if kind == "dense":
        separate, output = {"teacher_logits": teacher}, TeacherOutput(logits=teacher, lengths=t_len)
    else:
        vals, idx = teacher.topk(4, dim=-1)
        separate, output = {"teacher_topk": (idx, vals)}, TeacherOutput(topk_idx=idx, topk_logprob=vals, lengths=t_len)
    assert output.kind == kind
    a = DistillationLoss(seed=2, **kw)(student, lengths, targets, target_lengths, teacher_lengths=t_len, **separate)
    b = DistillationLoss(seed=2, **kw)(student, lengths, targets, target_lengths, teacher=output)
    assert a.to_dict() == b.to_dict()
    with pytest.raises(ValueError, match="not both"):
        DistillationLoss(**kw)(student, lengths, teacher=output, teacher_lengths=t_len)


def test_teacher_output_holds_one_kind():
    x = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="together"):
        TeacherOutput(topk_idx=x.topk(2)[1])
    with pytest.raises(ValueError, match="one of them"):
        TeacherOutput(logits=x, topk_idx=x.topk(2)[1], topk_logprob=x.topk(2)[0])
    with pytest.raises(ValueError, match="one of them"):
        TeacherOutput(lengths=torch.tensor([2]))
    moved = TeacherOutput(logits=x, lengths=torch.tensor([2])).to("cpu")
    assert moved.kind == "dense" and moved.topk_idx is None and torch.equal(moved.logits, x)


def test_gradients_reach_the_student_and_not_the_teacher():
    student, lengths, targets, target_lengths = _batch()
    teacher = torch.randn(3, 24, len(WAV2VEC2), requires_grad=True)
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    loss_fn = DistillationLoss(
        ctc_weight=0.5,
        kd_weight=0.5,
        vocab_map=vm,
        student_frame_rate=25,
        teacher_frame_rate=50,
        blank_mode="select",
        seed=3,
    )
    out = loss_fn(student, lengths, targets, target_lengths, teacher_logits=teacher, teacher_lengths=2 * lengths)
    assert out.loss.requires_grad and not out.kd.requires_grad and not out.ctc.requires_grad
    out.loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # The autograd gradient equals that of the hand-composed CTC + the KD term alone.
    s2 = student.detach().clone().requires_grad_()
    kd_only = DistillationLoss(
        ctc_weight=0, vocab_map=vm, student_frame_rate=25, teacher_frame_rate=50, blank_mode="select", seed=3
    )(s2, lengths, teacher_logits=teacher, teacher_lengths=2 * lengths)
    _close(kd_only.kd, out.kd)
    (0.5 * _hand_ctc(s2, lengths, targets, target_lengths, [0, 1, 2]) + 0.5 * kd_only.loss).backward()
    _close(student.grad, s2.grad, atol=1e-6)


def test_select_mode_is_deterministic_per_seed():
    student, lengths, _, _ = _batch()
    teacher = torch.randn(3, 12, 6)
    teacher[..., 0] += 3.0
    a = DistillationLoss(blank_mode="select", seed=1)(student, lengths, teacher_logits=teacher)
    b = DistillationLoss(blank_mode="select", seed=1)(student, lengths, teacher_logits=teacher)
    assert float(a.kd) == float(b.kd) and int(a.kd_frames) == int(b.kd_frames)
    assert int(a.kd_frames) < int(lengths.sum())


def test_distillation_loss_errors():
    student, lengths, targets, target_lengths = _batch()
    with pytest.raises(ValueError, match="VocabMap"):
        DistillationLoss()(student, lengths, teacher_logits=torch.randn(3, 12, 10))
    with pytest.raises(ValueError, match="frame_rate"):  # a 50 Hz teacher on a 25 Hz student, rates not given
        DistillationLoss()(student, lengths, teacher_logits=torch.randn(3, 24, 6))
    with pytest.raises(ValueError, match="not both"):
        t = torch.randn(3, 12, 6)
        DistillationLoss()(student, lengths, teacher_logits=t, teacher_topk=t.topk(2, -1)[::-1])
    with pytest.raises(ValueError, match="student_lengths"):
        DistillationLoss()(student, torch.tensor([13, 1, 1]), targets, target_lengths)
    with pytest.raises(ValueError, match="both"):
        DistillationLoss(student_frame_rate=25)
    with pytest.raises(ValueError, match="blank_mode"):
        DistillationLoss(blank_mode="blank")
    for bad in ({"blank_threshold": 1.5}, {"blank_weight": -0.1}):  # refused as blank_weights refuses it
        name, value = next(iter(bad.items()))
        with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\], got {value}"):
            DistillationLoss(**bad)
        with pytest.raises(ValueError, match=rf"{name} must lie in \[0, 1\], got {value}"):
            blank_weights(P_BLANK, "threshold", **{name.removeprefix("blank_"): value})
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT[:-1] + ["t", "x"], teacher_blank_id=0)
    with pytest.raises(ValueError, match="V_s=6"):
        DistillationLoss(vocab_map=vm)(student, lengths, teacher_logits=torch.randn(3, 12, len(WAV2VEC2)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_distillation_loss_on_cuda_matches_cpu():
    student, lengths, targets, target_lengths = _batch()
    teacher = torch.randn(3, 24, len(WAV2VEC2)) * 2
    vm = VocabMap.from_vocabs(WAV2VEC2, STUDENT, teacher_blank_id=0)
    kw = {"vocab_map": vm, "student_frame_rate": 25, "teacher_frame_rate": 50, "shift": 1, "blank_mode": "threshold"}
    cpu = DistillationLoss(**kw)(
        student, lengths, targets, target_lengths, teacher_logits=teacher, teacher_lengths=2 * lengths
    )
    s_cuda = student.detach().cuda().requires_grad_()
    gpu = DistillationLoss(**kw)(
        s_cuda,
        lengths.cuda(),
        targets.cuda(),
        target_lengths.cuda(),
        teacher_logits=teacher.cuda(),
        teacher_lengths=2 * lengths.cuda(),
    )
    _close(gpu.loss.cpu(), cpu.loss, atol=1e-5)
    vals, idx = teacher.log_softmax(-1).topk(len(WAV2VEC2), dim=-1)
    gpu_topk = DistillationLoss(**kw)(
        s_cuda,
        lengths.cuda(),
        targets.cuda(),
        target_lengths.cuda(),
        teacher_topk=(idx.cuda(), vals.cuda()),
        teacher_lengths=2 * lengths.cuda(),
    )
    _close(gpu_topk.loss.cpu(), cpu.loss, atol=1e-4)


def test_ctc_resampling_keeps_spikes():
    """50 -> 25 Hz: a spike next to a blank frame stays the argmax (the average would halve it)."""
    blank, a = 0, 1
    p = torch.tensor(
        [
            [
                [0.1, 0.9, 0.0],
                [1.0, 0.0, 0.0],  # spike 'a' then blank
                [0.6, 0.4, 0.0],
                [0.6, 0.0, 0.4],  # two weak, different tokens
                [0.0, 0.0, 1.0],
                [0.0, 0.0, 1.0],
            ]
        ]
    )  # 'b' held for two frames
    avg, _ = resample_frames(p.log(), from_rate=50, to_rate=25)
    ctc, _ = resample_frames(p.log(), from_rate=50, to_rate=25, method="ctc", blank_id=blank)
    torch.testing.assert_close(avg.exp(), torch.tensor([[[0.55, 0.45, 0.0], [0.6, 0.2, 0.2], [0.0, 0.0, 1.0]]]))
    torch.testing.assert_close(ctc.exp(), torch.tensor([[[0.1, 0.9, 0.0], [0.2, 0.4, 0.4], [0.0, 0.0, 1.0]]]))
    assert avg.exp()[0, 0].argmax() == blank and ctc.exp()[0, 0].argmax() == a
    # Raising the rate is the same for both methods; a bad method or a missing blank id is an error.
    up_avg, _ = resample_frames(p.log(), from_rate=25, to_rate=50)
    up_ctc, _ = resample_frames(p.log(), from_rate=25, to_rate=50, method="ctc", blank_id=blank)
    torch.testing.assert_close(up_avg, up_ctc)
    with pytest.raises(ValueError, match="method must be one of"):
        resample_frames(p.log(), from_rate=50, to_rate=25, method="max")
    with pytest.raises(ValueError, match="needs the blank_id"):
        resample_frames(p.log(), from_rate=50, to_rate=25, method="ctc")
    # The top-k path gives the same targets when k = V.
    idx = torch.arange(3).expand(1, 6, 3)
    topk, _ = resample_topk(idx, p.log(), 3, from_rate=50, to_rate=25, method="ctc", blank_id=blank)
    torch.testing.assert_close(topk.exp(), ctc.exp())


@pytest.mark.parametrize("temperature", [0.0, 1e-4, 200.0, 1e30, float("nan"), float("inf")])
def test_distillation_loss_refuses_a_temperature_the_op_refuses(temperature):
    """At construction (a config error), not at the first training step."""
    with pytest.raises(ValueError, match=r"temperature must be in \[0.001, 100\]"):
        DistillationLoss(temperature=temperature)
