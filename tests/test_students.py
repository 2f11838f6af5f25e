"""Streaming students: streaming == full forward, batching, latency, sizes, training step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN
from asrkd.models.acoustic import AcousticModel
from asrkd.models.students import SIZES, CausalConvSubsampling, build_student, count_parameters

ATOL = 1e-4
TEACHER_PARAMS = 7.63e6  # Whisper tiny.en encoder, the mini recipe's teacher (before its CTC head)

# Small models keep the many configurations fast; the named sizes are checked separately.
TINY = dict(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, frontend_channels=8, dropout=0.0)
CONFIGS = {
    "emformer-default": ("emformer", {}),
    "emformer-memory": ("emformer", dict(max_memory_size=3, left_context=5, chunk_size=4, right_context=2)),
    "emformer-no-lookahead": ("emformer", dict(right_context=0, chunk_size=5)),
    "emformer-8x": ("emformer", dict(subsampling=8, chunk_size=3)),
    "conformer-default": ("conformer", dict(kernel_size=5)),
    "conformer-no-lookahead": ("conformer", dict(right_context=0, kernel_size=4)),
    "conformer-long-lookahead": ("conformer", dict(chunk_size=4, right_context=3, left_chunks=1, kernel_size=7)),
    "conformer-unlimited-left": ("conformer", dict(left_chunks=-1, chunk_size=3, kernel_size=3)),
    "conformer-8x": ("conformer", dict(subsampling=8, chunk_size=3, kernel_size=3)),
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Small tensors: one thread is faster, and much faster on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, **extra):
    arch, kw = CONFIGS[name]
    torch.manual_seed(0)
    return build_student(arch, "xs", 30, **{**TINY, **kw, **extra}).eval()


def stream_all(model, feats, steps, lengths=None):
    """Stream feats (B, T, F) with the given step sizes (cycled), then flush."""
    state = model.init_state(feats.size(0))
    outs, t0, i = [], 0, 0
    while t0 < feats.size(1):
        step = steps[i % len(steps)]
        chunk = feats[:, t0 : t0 + step]
        chunk_lengths = None if lengths is None else (lengths - t0).clamp(0, chunk.size(1))
        out, state = model.stream_step(chunk, state, chunk_lengths)
        assert out.size(1) % model.chunk_size == 0
        outs.append(out)
        t0, i = t0 + step, i + 1
    outs.append(model.stream_flush(state))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@torch.no_grad()
def test_streaming_equals_full_forward(name):
    model = tiny(name)
    c4 = model.chunk_frames
    # Lengths: shorter than one output frame, shorter than a chunk, exact chunks, ragged ends.
    for frames in (2, 9, c4, c4 + model.lookahead_frames, 3 * c4 + 5, 7 * c4 - 1, 211):
        feats = torch.randn(1, frames, 80)
        full, out_lengths = model(feats, torch.tensor([frames]))
        assert full.shape == (1, frames // model.subsampling, 30)
        assert out_lengths.tolist() == [frames // model.subsampling]
        step_plans = [[c4], [c4 + model.lookahead_frames, c4], [7, 13], [frames]]
        if frames <= 80:
            step_plans.append([1])  # frame by frame
        for steps in step_plans:
            streamed = stream_all(model, feats, steps)
            assert streamed.shape == full.shape, (frames, steps)
            torch.testing.assert_close(streamed, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["emformer", "conformer"])
@torch.no_grad()
def test_named_size_streams_exactly(arch):
    torch.manual_seed(1)
    model = build_student(arch, "xs", 30).eval()
    feats = torch.randn(1, 397, 80)
    full, _ = model(feats, torch.tensor([397]))
    torch.testing.assert_close(stream_all(model, feats, [model.chunk_frames]), full, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "name", ["emformer-default", "emformer-memory", "conformer-default", "conformer-long-lookahead"]
)
@torch.no_grad()
def test_padded_batch_equals_single_utterances(name):
    model = tiny(name)
    lengths = torch.tensor([203, 57, 100, 3, 24, 96])
    feats = torch.randn(len(lengths), 215, 80)  # padded past the longest too
    full, out_lengths = model(feats, lengths)
    assert out_lengths.tolist() == (lengths // model.subsampling).tolist()
    assert full.size(1) == int(out_lengths.max())
    streamed = stream_all(model, feats, [model.chunk_frames], lengths)
    assert streamed.shape == full.shape
    for i, n in enumerate(lengths.tolist()):
        single, _ = model(feats[i : i + 1, :n], lengths[i : i + 1])
        k = int(out_lengths[i])
        torch.testing.assert_close(full[i, :k], single[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(streamed[i, :k], single[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@torch.no_grad()
def test_lookahead_is_chunk_plus_right_context(name):
    """Logits of chunk c depend on feature frames before (c+1)*chunk + right_context output
    frames and on nothing after: the algorithmic latency is what the model reports."""
    model = tiny(name)
    c, r, s = model.chunk_size, model.right_context, model.subsampling
    assert model.algorithmic_latency_ms == pytest.approx((c + r) * s * 10.0)
    assert model.frame_rate == pytest.approx(100.0 / s)
    frames = 8 * c * s
    feats = torch.randn(1, frames, 80)
    base, _ = model(feats, torch.tensor([frames]))
    chunk = 1
    horizon = ((chunk + 1) * c + r) * s  # the first feature frame chunk 1 must not see

    def change_per_frame(t):
        poked = feats.clone()
        poked[0, t] += 3.0
        out, _ = model(poked, torch.tensor([frames]))
        return (out - base).abs().amax(dim=(0, 2))

    after = change_per_frame(horizon)
    assert after[: (chunk + 1) * c].max() <= 1e-6  # chunks 0 and 1 do not see it
    assert after[(chunk + 1) * c :].max() > 1e-4
    last_seen = change_per_frame(horizon - 1)
    assert last_seen[: chunk * c].max() <= 1e-6
    assert last_seen[chunk * c : (chunk + 1) * c].max() > 1e-4  # chunk 1 sees it


def test_default_latency_within_target():
    for arch in SIZES:
        for size in SIZES[arch]:
            model = build_student(arch, size, 30)
            assert model.frame_rate == 25.0
            assert model.chunk_frames == model.chunk_size * 4
            assert model.algorithmic_latency_ms == (model.chunk_size + model.right_context) * 40.0
            assert model.algorithmic_latency_ms <= 320.0


def test_size_parameter_counts():
    counts = {(a, s): count_parameters(build_student(a, s, 30)) for a in SIZES for s in SIZES[a]}
    for arch in SIZES:
        xs, s, m = counts[arch, "xs"], counts[arch, "s"], counts[arch, "m"]
        assert 1.0e6 <= xs <= 1.5e6 and xs <= TEACHER_PARAMS / 5, (arch, xs)
        assert 2.0e6 <= s <= 4.0e6, (arch, s)
        assert 6.0e6 <= m <= 12.0e6, (arch, m)


@pytest.mark.parametrize("arch", ["emformer", "conformer"])
@torch.no_grad()
def test_audio_streaming_equals_offline_pipeline(arch):
    model = tiny(f"{arch}-default")
    torch.manual_seed(3)
    cmvn = GlobalCMVN(torch.randn(80), torch.rand(80) + 0.5)
    features = FeaturePipeline(FeatureConfig(), cmvn).eval()
    wave = 0.1 * torch.randn(1, 21_937)
    feats, feat_lengths = features(wave, torch.tensor([wave.size(1)]))
    full, _ = model(feats, feat_lengths)
    acoustic = AcousticModel(
        model,
        vocab=[str(i) for i in range(model.vocab_size)],
        blank_id=0,
        frame_rate=model.frame_rate,
        frontend=features,
    )
    assert acoustic.streaming_latency_ms() == pytest.approx(model.algorithmic_latency_ms + 15.0)
    streamer = acoustic.stream()
    outs, t0 = [], 0
    for size in (100, 1_999, 160, 3_333, 7, 5_000) * 3:
        outs.append(streamer.push(wave[:, t0 : t0 + size]))
        t0 += size
    assert t0 >= wave.size(1)
    outs.append(streamer.flush())
    streamed = torch.cat(outs, dim=1)
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, atol=ATOL, rtol=0)
    acoustic.frontend.train()  # SpecAugment on: a stream would differ from the offline pipeline
    with pytest.raises(ValueError, match="eval mode"):
        acoustic.stream()


@pytest.mark.parametrize("factor", [2, 4, 8])
@torch.no_grad()
def test_frontend_streams_exactly(factor):
    torch.manual_seed(0)
    fe = CausalConvSubsampling(80, 16, channels=4, factor=factor)
    feats = torch.randn(2, 53, 80)
    full, out_lengths = fe(feats, torch.tensor([53, 30]))
    assert full.shape == (2, 53 // factor, 16)
    assert out_lengths.tolist() == [53 // factor, 30 // factor]
    assert full[1, 30 // factor :].abs().max() == 0  # zero past the length
    state = fe.init_state(2, feats.device, feats.dtype)
    outs = []
    for t0, step in zip((0, 1, 4, 11, 12, 30), (1, 3, 7, 1, 18, 23)):
        out, state = fe.stream(feats[:, t0 : t0 + step], state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1)[0], full[0], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="subsampling factor"):
        CausalConvSubsampling(80, 16, factor=6)


@torch.no_grad()
def test_stream_step_rejects_bad_input():
    model = tiny("conformer-default")
    state = model.init_state(2)
    with pytest.raises(ValueError, match="expected features"):
        model.stream_step(torch.randn(2, 8, 40), state)
    with pytest.raises(ValueError, match="batch size"):
        model.stream_step(torch.randn(3, 8, 80), state)
    with pytest.raises(ValueError, match="lengths"):
        model.stream_step(torch.randn(2, 8, 80), state, torch.tensor([9, 8]))
    _, state = model.stream_step(torch.randn(2, 8, 80), state, torch.tensor([8, 5]))
    with pytest.raises(ValueError, match="after a short"):
        model.stream_step(torch.randn(2, 8, 80), state, torch.tensor([8, 1]))
    with pytest.raises(ValueError, match="expected features"):
        model(torch.randn(1, 8, 81), torch.tensor([8]))


def test_build_student_errors():
    with pytest.raises(ValueError, match="unknown student arch"):
        build_student("lstm", "xs", 30)
    with pytest.raises(ValueError, match="unknown student size"):
        build_student("conformer", "xl", 30)
    with pytest.raises(ValueError, match="bad override"):
        build_student("emformer", "xs", 30, kernel_size=5)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_student("conformer", "xs", 30, d_model=30)
    model = build_student("conformer_ctc", "s", 30, chunk_size=8, right_context=0)
    assert model.model_kwargs["chunk_size"] == 8 and model.model_kwargs["d_model"] == SIZES["conformer"]["s"]["d_model"]
    assert model.vocab_size == 30


@pytest.mark.parametrize("arch", ["emformer", "conformer"])
def test_training_step_learns(arch):
    """forward is differentiable and trainable with CTC: a tiny model overfits one batch."""
    torch.manual_seed(0)
    model = build_student(arch, "xs", 12, **{**TINY, "dropout": 0.1})
    model.train()
    feats, lengths = torch.randn(2, 160, 80), torch.tensor([160, 121])
    targets, target_lengths = torch.randint(1, 12, (2, 8)), torch.tensor([8, 6])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits, out_lengths = model(feats, lengths)
        loss = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), targets, out_lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]
