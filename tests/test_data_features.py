from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asrkd.data.audio import AudioError, audio_info, load_audio
from asrkd.data.features import (
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
from asrkd.data.manifest import Utterance
from asrkd.data.rejects import Rejects

torch.set_num_threads(1)


def _tone(seconds, rate=16000, freq=440.0, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    if channels > 1:
        x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    return x


# -- audio ---------------------------------------------------------------------------------------
def test_load_audio_mono_resample_segment(tmp_path):
    stereo = _tone(1.0, 8000, channels=2)
    sf.write(tmp_path / "s.flac", stereo, 8000)
    wave = load_audio(tmp_path / "s.flac")
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert wave.numel() == 16000
    # mono mix-down = channel mean (0.5x and 1x of the tone -> 0.75x); compare away from the edges
    ref = torch.from_numpy(_tone(1.0, 16000)) * 0.75
    assert torch.allclose(wave[2000:-2000], ref[2000:-2000], atol=2e-2)

    sf.write(tmp_path / "m.wav", _tone(3.0), 16000, subtype="PCM_16")
    seg = load_audio(tmp_path / "m.wav", offset=1.0, duration=0.5)
    assert seg.numel() == 8000
    full = load_audio(tmp_path / "m.wav")
    assert torch.allclose(seg, full[16000:24000])
    sf.write(tmp_path / "v.ogg", _tone(0.5), 16000, format="OGG", subtype="VORBIS")
    assert abs(load_audio(tmp_path / "v.ogg").numel() - 8000) < 400
    info = audio_info(tmp_path / "m.wav")
    assert (info.sample_rate, info.frames, info.channels) == (16000, 48000, 1) and info.duration == 3.0


def _bad_files(tmp_path):
    sf.write(tmp_path / "ok.wav", _tone(1.0), 16000, subtype="PCM_16")
    (tmp_path / "text.wav").write_text("this is not audio")
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "trunc.wav").write_bytes(data[: len(data) // 2])
    sf.write(tmp_path / "ok.flac", _tone(2.0), 16000)
    flac = (tmp_path / "ok.flac").read_bytes()
    (tmp_path / "trunc.flac").write_bytes(flac[: len(flac) // 2])
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    x = _tone(1.0)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    x = _tone(1.0)
    x[5] = np.inf
    sf.write(tmp_path / "inf.wav", x, 16000, subtype="FLOAT")


@pytest.mark.parametrize(
    "name,kind",
    [
        ("nope.wav", "missing_file"),
        ("text.wav", "unreadable"),
        ("trunc.flac", "truncated"),
        ("empty.wav", "empty_audio"),
        ("nan.wav", "nan_audio"),
        ("inf.wav", "nan_audio"),
    ],
)
def test_load_audio_errors(tmp_path, name, kind):
    _bad_files(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / name)
    assert err.value.kind == kind and name in str(err.value)
    assert isinstance(err.value, ValueError)


def test_audio_info_detects_truncation_from_headers(tmp_path):
    _bad_files(tmp_path)
    for name in ("trunc.wav", "trunc.flac"):
        with pytest.raises(AudioError) as err:
            audio_info(tmp_path / name)
        assert err.value.kind == "truncated"
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "ok.wav", offset=2.0, duration=1.0)
    assert err.value.kind == "out_of_range"
    with pytest.raises(AudioError) as err:
        load_audio(tmp_path / "ok.wav", offset=0.5, duration=1.0)
    assert err.value.kind == "out_of_range"


# -- features ------------------------------------------------------------------------------------
def test_logmel_shapes_lengths_and_batch_invariance():
    cfg = FeatureConfig()
    assert (cfg.win_length, cfg.hop_length, cfg.frame_rate) == (400, 160, 100.0)
    assert cfg.num_frames(399) == 0 and cfg.num_frames(400) == 1 and cfg.num_frames(16000) == 98
    lm = LogMel(cfg)
    lengths = torch.tensor([16000, 8000, 300])
    wave = torch.zeros(3, 16000)
    for i, n in enumerate(lengths):
        wave[i, :n] = torch.from_numpy(_tone(n.item() / 16000, freq=300 + 100 * i))
    feats, fl = lm(wave, lengths)
    assert feats.shape == (3, 98, 80) and feats.dtype == torch.float32
    assert fl.tolist() == [98, 48, 0]
    assert (feats[1, 48:] == 0).all() and (feats[2] == 0).all()
    single, n1 = lm(wave[1:2, :8000], lengths[1:2])
    assert n1.tolist() == [48]
    assert torch.allclose(single[0], feats[1, :48], atol=1e-5)
    # bf16 input is computed in fp32
    f16, _ = lm(wave.bfloat16(), lengths)
    assert f16.dtype == torch.float32
    tiny, tl = lm(torch.zeros(2, 100), torch.tensor([100, 50]))
    assert tiny.shape == (2, 0, 80) and tl.tolist() == [0, 0]
    with pytest.raises(ValueError):
        lm(torch.zeros(16000))


def test_feature_config_round_trip():
    cfg = FeatureConfig(n_mels=40, hop_ms=20.0)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        FeatureConfig.from_dict({"n_mel": 40})
    with pytest.raises(ValueError):
        FeatureConfig(win_ms=50.0, n_fft=512)


def test_cmvn_normalises_and_round_trips(tmp_path):
    utts = []
    for i in range(3):
        sf.write(
            tmp_path / f"{i}.wav",
            _tone(1.0, freq=200 + 150 * i) + 0.01 * np.random.RandomState(i).randn(16000).astype(np.float32),
            16000,
            subtype="PCM_16",
        )
        utts.append(Utterance(f"u{i}", str(tmp_path / f"{i}.wav"), 1.0))
    utts.append(Utterance("gone", str(tmp_path / "gone.wav"), 1.0))
    rejects = Rejects()
    cmvn = compute_cmvn(utts, FeatureConfig(), rejects=rejects)
    assert rejects.counts() == {"missing_file": 1}
    assert cmvn.mean.shape == (80,) and (cmvn.std > 0).all()
    pipe = FeaturePipeline(FeatureConfig(), cmvn).eval()
    feats = torch.cat([pipe(u.load_audio()[None])[0][0] for u in utts[:3]])
    assert feats.mean(0).abs().max() < 1e-3
    assert (feats.std(0, unbiased=False) - 1).abs().max() < 1e-2
    back = GlobalCMVN.from_dict(cmvn.to_dict())
    assert torch.equal(back.mean, cmvn.mean) and torch.equal(back.std, cmvn.std)
    with pytest.raises(AudioError):
        compute_cmvn(utts)  # without a Rejects a bad file is an error, not a silent skip
    with pytest.raises(ValueError):
        GlobalCMVN(torch.zeros(80), torch.zeros(80))


def test_specaugment_only_in_training_and_within_lengths():
    torch.manual_seed(0)
    sa = SpecAugment(freq_masks=2, freq_width=20, time_masks=2, time_width=30, max_time_ratio=0.5)
    x = torch.randn(2, 100, 80) + 10.0  # nothing is 0 before masking
    lengths = torch.tensor([100, 60])
    assert torch.equal(sa.eval()(x, lengths), x)
    sa.train()
    masked = 0
    for _ in range(5):
        y = sa(x, lengths)
        assert y.shape == x.shape
        assert torch.equal(y[1, 60:], x[1, 60:])  # padding untouched
        zeros = y == 0
        assert torch.equal(y[~zeros], x[~zeros])  # everything else untouched
        masked += int(zeros.sum())
        one = sa(x[0])
        assert one.shape == (100, 80)
    assert masked > 0


def test_pipeline_train_eval_and_speed_perturbation():
    wave = torch.from_numpy(_tone(1.0))[None]
    pipe = FeaturePipeline(FeatureConfig(), GlobalCMVN.identity(80), SpecAugment())
    ev, n = pipe.eval()(wave, torch.tensor([16000]))
    assert torch.equal(ev, pipe(wave, torch.tensor([16000]))[0])
    tr, n2 = pipe.train()(wave, torch.tensor([16000]))
    assert tr.shape == ev.shape and n.tolist() == n2.tolist() == [98]
    sp = speed_perturbation((1.1,))
    fast, fl = sp(wave, torch.tensor([16000]))
    assert abs(fast.shape[-1] - 16000 / 1.1) < 2 and int(fl[0]) == fast.shape[-1]
    with pytest.raises(ValueError):
        speed_perturbation((0.0,))


def test_ctc_length_rule():
    assert ctc_min_frames([]) == 0
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 5 + 3
    # 1 s at 10 ms hop, 25 ms window: 98 frames; 4x subsampling -> 24
    assert frames_after_subsampling(16000, subsampling=4) == 24
    assert frames_after_subsampling(16000, subsampling=2, hop_ms=20.0) == 49 // 2
    assert fits_ctc(16000, list(range(1, 25)), subsampling=4)
    assert not fits_ctc(16000, list(range(1, 26)), subsampling=4)
    assert not fits_ctc(16000, [1] * 13, subsampling=4)  # 13 labels + 12 repeats = 25 > 24
    assert fits_ctc(16000, [1] * 13, subsampling=2)


def test_librosa_is_the_fallback_for_formats_libsndfile_lacks(tmp_path, monkeypatch):
    import asrkd.data.audio as audio

    (tmp_path / "a.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A not really")
    (tmp_path / "b.wav").write_bytes(b"RIFX garbage")
    calls = []

    def fake_librosa(path, sr, offset, duration):
        calls.append(path)
        return _tone(0.5, 8000), 8000

    monkeypatch.setattr(audio, "_librosa_load", fake_librosa)
    wave = load_audio(tmp_path / "a.m4a")
    assert wave.numel() == 8000 and calls == [str(tmp_path / "a.m4a")]
    assert audio_info(tmp_path / "a.m4a").frames == 4000
    with pytest.raises(AudioError) as err:  # a .wav libsndfile cannot read is broken, not exotic
        load_audio(tmp_path / "b.wav")
    assert err.value.kind == "unreadable" and len(calls) == 2

    def failing(path, sr, offset, duration):
        raise RuntimeError("no backend")

    monkeypatch.setattr(audio, "_librosa_load", failing)
    with pytest.raises(AudioError, match="librosa") as err:
        load_audio(tmp_path / "a.m4a")
    assert err.value.kind == "unreadable"


def test_cmvn_counts_a_clip_without_a_feature_frame_as_too_short(tmp_path):
    """A readable 12.5 ms clip gives no 25 ms frame: it used to be skipped uncounted, so train said
    'none ... has readable audio' above 'rejected: none'."""
    sf.write(tmp_path / "s.wav", np.zeros(200, np.float32), 16000)
    sf.write(tmp_path / "ok.wav", _tone(0.5), 16000)
    short, ok = Utterance("s", str(tmp_path / "s.wav"), 200 / 16000), Utterance("ok", str(tmp_path / "ok.wav"), 0.5)
    rejects = Rejects()
    compute_cmvn([short, ok], FeatureConfig(), rejects=rejects)
    assert rejects.counts() == {"too_short": 1} and rejects.ids("too_short") == ["s"]
    assert "frame" in rejects.records[0].reason and "s.wav" in rejects.records[0].reason
    rejects = Rejects()
    with pytest.raises(ValueError):
        compute_cmvn([short], FeatureConfig(), rejects=rejects)
    assert rejects.counts() == {"too_short": 1}  # the summary under the error shows why
    with pytest.raises(AudioError) as err:
        compute_cmvn([short], FeatureConfig())  # without a Rejects: an error, not a silent skip
    assert err.value.kind == "too_short"
