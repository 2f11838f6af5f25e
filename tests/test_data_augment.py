"""Waveform augmentation (asrkd.data.augment): lengths and timing kept, the DSP measured, seeded,
configured with errors naming the key, applied by ASRDataset in training only, accepted by the
trainer config with a teacher cache, and the augmented copies of ``teacher-adapt``."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from asrkd.data import ASRDataset, AugmentConfig, CharTokenizer, FeatureConfig, FeaturePipeline, WaveAugment
from asrkd.data.augment import (
    COLOURS,
    GainConfig,
    NoiseConfig,
    add_noise,
    apply_gain,
    coloured_noise,
    mu_law,
    reverberate,
    synthetic_rir,
    telephone,
)
from asrkd.data.manifest import Utterance
from asrkd.train.state import SeededItems

torch.set_num_threads(1)
SR = 16000
ALL_ON = {name: {"prob": 1.0} for name in ("reverb", "telephone", "noise", "gain")}


def _speechlike(n: int, seed: int = 0) -> torch.Tensor:
    """Noise bursts under a syllable-rate envelope, with silent gaps: loud, quiet and silent parts."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    envelope = torch.sin(2 * math.pi * 4.0 * t).clamp(min=0.0)
    return 0.3 * envelope * torch.randn(n, generator=g)


def _power_db(x: torch.Tensor) -> float:
    return 10 * math.log10(float(x.double().pow(2).mean()))


def _band_energy(x: torch.Tensor, lo_hz: float, hi_hz: float = math.inf) -> float:
    power = torch.fft.rfft(x.double()).abs() ** 2
    f = torch.fft.rfftfreq(x.numel(), 1 / SR)
    return float(power[(f > lo_hz) & (f <= hi_hz)].sum())


def _single(name: str, **settings) -> WaveAugment:
    return WaveAugment(AugmentConfig.from_dict({name: {"prob": 1.0, **settings}}))


# ----------------------------------------------------------------------- lengths and frames
@pytest.mark.parametrize("name", ["reverb", "telephone", "noise", "gain", "all"])
@pytest.mark.parametrize("n", [1, 2, 399, 400, 401, 16000, 16001, 23457])
def test_every_augmentation_keeps_the_sample_and_frame_count(name, n):
    aug = WaveAugment(AugmentConfig.from_dict(ALL_ON)) if name == "all" else _single(name)
    wave = _speechlike(n, seed=n)
    torch.manual_seed(n)
    out, applied = aug.apply(wave)
    assert out.shape == wave.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert set(applied) == ({"reverb", "telephone", "noise", "gain"} if name == "all" else {name})
    front = FeaturePipeline(FeatureConfig())
    feats, frames = front(out[None])
    clean_feats, clean_frames = front(wave[None])
    assert frames.tolist() == clean_frames.tolist() == [FeatureConfig().num_frames(n)]
    assert feats.shape == clean_feats.shape


def test_silent_and_empty_input_give_no_nan():
    aug = WaveAugment(AugmentConfig.from_dict(ALL_ON))
    for n in (0, 5, 16000):
        torch.manual_seed(0)
        out = aug(torch.zeros(n))
        assert out.shape == (n,) and torch.isfinite(out).all()
        assert out.abs().max().item() < 1e-3 if n else True  # silence stays (nearly: μ-law has no 0 level) silent
    assert torch.equal(add_noise(torch.zeros(100), torch.randn(100), 10.0), torch.zeros(100))
    assert torch.isfinite(coloured_noise(1, "brown")).all() and coloured_noise(0, "pink").shape == (0,)


# ----------------------------------------------------------------------- noise
@pytest.mark.parametrize("colour", COLOURS)
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 30.0])
def test_add_noise_hits_the_requested_snr(colour, snr_db):
    wave = _speechlike(SR * 2, seed=3)
    noise = coloured_noise(wave.numel(), colour, torch.Generator().manual_seed(4))
    assert abs(_power_db(noise)) < 1e-3  # unit RMS
    out = add_noise(wave, noise, snr_db)
    measured = _power_db(wave) - _power_db(out - wave)
    assert measured == pytest.approx(snr_db, abs=0.05)


def test_noise_colours_have_their_spectral_slopes():
    g = torch.Generator().manual_seed(0)
    # power per octave: white +3 dB per octave up, pink flat, brown -3 dB
    for colour, per_octave in (("white", 3.0), ("pink", 0.0), ("brown", -3.0)):
        x = coloured_noise(SR * 8, colour, g)
        slope = 10 * math.log10(_band_energy(x, 1000, 2000) / _band_energy(x, 500, 1000))
        assert slope == pytest.approx(per_octave, abs=0.5), colour
    hum = coloured_noise(SR * 2, "hum", g)
    assert _band_energy(hum, 0, 500) > 0.99 * _band_energy(hum, 0)  # mains harmonics, low
    with pytest.raises(ValueError, match="unknown noise colour 'blue'"):
        coloured_noise(10, "blue")


# ----------------------------------------------------------------------- reverb
@pytest.mark.parametrize("rt60", [0.2, 0.5, 0.8])
def test_rir_decays_60_db_in_rt60_with_the_direct_path_first(rt60):
    rir = synthetic_rir(rt60, SR, torch.Generator().manual_seed(1), drr_db=4.0)
    assert rir.numel() == round(rt60 * SR) and rir[0] == 1.0
    assert rir[1:].abs().max() < 0.5  # the direct path dominates every reflection
    tail = rir[1:].double()
    assert 10 * math.log10(1.0 / float(tail.pow(2).sum())) == pytest.approx(4.0, abs=1e-3)  # the DRR
    # log energy of 10 ms windows over the tail, fitted by a line: its fall over rt60 is 60 dB
    win = SR // 100
    windows = tail[: tail.numel() // win * win].reshape(-1, win).pow(2).mean(1)
    t = (torch.arange(windows.numel(), dtype=torch.float64) + 0.5) * win / SR
    level = 10 * torch.log10(windows)
    slope = float(((t - t.mean()) * (level - level.mean())).sum() / (t - t.mean()).pow(2).sum())
    assert slope * rt60 == pytest.approx(-60.0, abs=3.0)


def test_reverberate_keeps_length_and_direct_path_alignment():
    x = torch.randn(SR, generator=torch.Generator().manual_seed(2))
    rir = synthetic_rir(0.6, SR, torch.Generator().manual_seed(3), drr_db=0.0)
    y = reverberate(x, rir)
    assert y.shape == x.shape
    xcorr = AF.fftconvolve(y, x.flip(0))  # index N - 1 is lag 0
    assert int(xcorr.argmax()) - (x.numel() - 1) == 0
    assert not torch.allclose(y, x)  # it did reverberate
    # the first samples are the direct path plus at most the few reflections so far
    torch.testing.assert_close(y[:1], x[:1])


# ----------------------------------------------------------------------- telephone
@pytest.mark.parametrize("band_pass", [True, False])
def test_telephone_removes_the_band_above_4khz_and_keeps_timing(band_pass):
    x = 0.1 * torch.randn(SR * 2, generator=torch.Generator().manual_seed(5))
    y = telephone(x, SR, band_pass=band_pass)
    assert y.shape == x.shape
    assert 10 * math.log10(_band_energy(x, 4000) / _band_energy(y, 4000)) >= 30.0
    # the speech band is kept
    assert _band_energy(y, 500, 3000) > 0.5 * _band_energy(x, 500, 3000)
    xcorr = AF.fftconvolve(y, x.flip(0))
    assert abs(int(xcorr.argmax()) - (x.numel() - 1)) <= 2  # biquads: a sample or so (< 0.2 ms)
    if band_pass:  # 300-3400 Hz: little below 200 Hz is left
        assert _band_energy(y, 0, 150) < 0.1 * _band_energy(x, 0, 150)


def test_mu_law_is_8_bit_and_telephone_applies_it():
    x = torch.linspace(-1.2, 1.2, 20001)
    q = mu_law(x)
    assert q.shape == x.shape and torch.unique(q).numel() <= 256
    assert (q - x.clamp(-1, 1)).abs().max() < 0.04  # companding: coarse steps only near ±1
    # near 0 the steps are fine (μ-law keeps quiet speech): far below a linear 8-bit step of 1/128
    small = torch.linspace(-0.01, 0.01, 101)
    assert (mu_law(small) - small).abs().max() < 1e-3
    x = 0.1 * torch.randn(SR, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(telephone(x, SR), telephone(x, SR, mu_law_codec=False), atol=1e-4)


# ----------------------------------------------------------------------- gain
def test_gain_stays_in_range_and_never_clips():
    quiet = 0.01 * torch.randn(SR, generator=torch.Generator().manual_seed(7))
    aug = _single("gain", db=[-12, 6])
    lo, hi = 10 ** (-12 / 20), 10 ** (6 / 20)
    ratios = []
    for seed in range(40):
        torch.manual_seed(seed)
        out, applied = aug.apply(quiet)
        ratio = float(out.abs().max() / quiet.abs().max())
        assert lo - 1e-6 <= ratio <= hi + 1e-6
        assert ratio == pytest.approx(10 ** (applied["gain"]["db"] / 20), rel=1e-5)
        ratios.append(ratio)
    assert max(ratios) > 1.5 and min(ratios) < 0.5  # the range is used
    loud = quiet / quiet.abs().max() * 0.9
    out = apply_gain(loud, 6.0)
    assert out.abs().max() == pytest.approx(1.0) and out.abs().max() <= 1.0
    torch.testing.assert_close(out / out.abs().max(), loud / loud.abs().max())  # scaled, not clipped
    assert apply_gain(loud, -6.0).abs().max() == pytest.approx(0.9 * 10 ** (-6 / 20))


# ----------------------------------------------------------------------- randomness
def test_seeded_and_reproducible():
    aug = WaveAugment(AugmentConfig.from_dict({k: {"prob": 0.5} for k in ALL_ON}))
    wave = _speechlike(SR, seed=8)
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        outs.append(aug.apply(wave))
    assert torch.equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]
    torch.manual_seed(12)
    assert not torch.equal(aug(wave), outs[0][0])
    # an explicit generator: the same for the same seed, and the global RNG is not touched
    state = torch.get_rng_state()
    a = aug(wave, torch.Generator().manual_seed(5))
    b = aug(wave, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    # each probability is honoured: over many draws about half the items get each one
    counts = dict.fromkeys(ALL_ON, 0)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        for name in aug.apply(wave[:800], g)[1]:
            counts[name] += 1
    assert all(150 < c < 250 for c in counts.values()), counts


# ----------------------------------------------------------------------- configuration
def test_config_defaults_and_round_trip():
    assert not AugmentConfig.from_dict(None).enabled and not AugmentConfig.from_dict({}).enabled
    cfg = AugmentConfig.from_dict({"noise": {}, "gain": True, "reverb": None, "telephone": False})
    assert cfg.noise == NoiseConfig() and cfg.gain == GainConfig() and cfg.reverb is None and cfg.telephone is None
    full = AugmentConfig.default()
    assert AugmentConfig.from_dict(full.to_dict()) == full
    assert json.loads(json.dumps(full.to_dict()))["noise"]["snr_db"] == [5.0, 30.0]
    assert AugmentConfig.from_dict({"noise": {"snr_db": [10, 10], "colours": ["pink"]}}).noise.snr_db == (10.0, 10.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"nosie": {}}, "unknown augment key 'nosie'"),
        ({"noise": {"snr": [1, 2]}}, "unknown augment key 'noise.snr'"),
        ({"noise": {"prob": 1.5}}, "'noise.prob' must be a number in \\[0, 1\\], got 1.5"),
        ({"noise": {"prob": True}}, "'noise.prob'"),
        ({"noise": {"snr_db": [30, 5]}}, "'noise.snr_db' must be a list \\[low, high\\].*got \\[30, 5\\]"),
        ({"noise": {"snr_db": [5, float("nan")]}}, "'noise.snr_db'"),
        ({"noise": {"snr_db": 10}}, "'noise.snr_db'"),
        ({"noise": {"colours": ["blue"]}}, "'noise.colours' must be a non-empty list of white, pink, brown, hum"),
        ({"noise": {"colours": []}}, "'noise.colours'"),
        ({"reverb": {"rt60": [0, 0.5]}}, "'reverb.rt60' must lie in \\(0, 5\\]"),
        ({"reverb": {"rt60": [-1, 0.5]}}, "'reverb.rt60' must be a list"),
        ({"reverb": {"drr_db": [3]}}, "'reverb.drr_db'"),
        ({"telephone": {"band_pass": "yes"}}, "'telephone.band_pass' must be true or false"),
        ({"gain": {"db": "loud"}}, "'gain.db'"),
        ({"gain": 3}, "'gain' must be a mapping, true or null"),
        ([1, 2], "'augment' must be a mapping"),
    ],
)
def test_config_errors_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig.from_dict(settings)


def test_config_error_prefix():
    with pytest.raises(ValueError, match="'data.augment.gain.db'"):
        AugmentConfig.from_dict({"gain": {"db": [1]}}, prefix="data.augment.")


# ----------------------------------------------------------------------- the dataset
@pytest.fixture
def utts(tmp_path):
    rows = []
    for i, seconds in enumerate((1.0, 1.37)):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, _speechlike(int(seconds * SR), seed=i).numpy().astype(np.float32), SR, subtype="FLOAT")
        rows.append(Utterance(f"u{i}", str(path), seconds, "hello world"))
    return rows


def test_dataset_augments_training_items_only(utts):
    tok = CharTokenizer.english()
    front = FeaturePipeline(FeatureConfig(n_mels=40))
    aug = WaveAugment(AugmentConfig.from_dict({"noise": {"prob": 1.0}, "reverb": {"prob": 1.0}}))
    clean = ASRDataset(utts, tok, front, train=False)
    train = ASRDataset(utts, tok, front, train=True, augment=aug)
    dev = ASRDataset(utts, tok, front, train=False, augment=aug)
    for i in range(len(utts)):
        ref = clean[i]
        torch.manual_seed(i)
        item = train[i]
        assert item["wave"].shape == ref["wave"].shape and not torch.allclose(item["wave"], ref["wave"])
        assert item["feats"].shape == ref["feats"].shape  # the frames a teacher cache holds
        assert not torch.allclose(item["feats"], ref["feats"])  # the features are of the augmented wave
        assert torch.equal(dev[i]["wave"], ref["wave"]) and torch.equal(dev[i]["feats"], ref["feats"])
    # as the training loop loads items: the same (seed, epoch, index), the same augmented audio
    items = SeededItems(train, seed=3)
    first = items[1]["wave"]
    assert torch.equal(items[1]["wave"], first)
    items.epoch = 1
    assert not torch.equal(items[1]["wave"], first)


def test_trainer_builds_the_augment_for_training_only(utts, tmp_path):
    from asrkd.data import GlobalCMVN, Rejects
    from asrkd.train.build import Data, build_train_loader
    from asrkd.train.config import load_config
    from asrkd.train.distributed import DistInfo

    cfg = load_config(None, ["data.train=t.jsonl", "data.num_workers=0", "data.augment={noise: {prob: 1.0}}"])
    features = FeatureConfig(n_mels=40)
    data = Data(utts, CharTokenizer.english(), features, GlobalCMVN(torch.zeros(40), torch.ones(40)), Rejects())
    model = SimpleNamespace(subsampling=4)
    train_ds, _, _, _ = build_train_loader(cfg, data, model, DistInfo())
    assert isinstance(train_ds.augment, WaveAugment) and train_ds.augment.config.noise == NoiseConfig(prob=1.0)
    cfg["data"]["augment"] = None
    assert build_train_loader(cfg, data, model, DistInfo())[0].augment is None


# ----------------------------------------------------------------------- the trainer config
@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("exp_dir: x\ndata:\n  train: t.jsonl\n")
    return path


def test_trainer_config_accepts_augment_with_a_teacher_cache(conf):
    from asrkd.train.config import ConfigError, load_config, validate

    cache = ["teacher.cache=c/train", "loss.kd_weight=1"]
    cfg = load_config(conf, ["data.augment={noise: {prob: 0.5}, reverb: {}}", "data.augment.gain=true", *cache])
    validate(cfg)  # length-preserving: unlike data.speed_perturb, allowed with a teacher cache
    assert cfg["data"]["augment"] == {"noise": {"prob": 0.5}, "reverb": {}, "gain": True}
    assert load_config(conf)["data"]["augment"] is None  # off by default
    with pytest.raises(ConfigError, match="data.speed_perturb changes the audio"):
        validate(load_config(conf, ["data.speed_perturb=[0.9,1.1]", *cache]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.augment.noise.prob=2", "config key 'data.augment.noise.prob' must be a number in \\[0, 1\\], got 2"),
        ("data.augment.nois={}", "unknown config key 'data.augment.nois'"),
        ("data.augment.reverb.rt60=[0.5,0.2]", "config key 'data.augment.reverb.rt60'"),
        ("data.augment.noise.snr_db=[1,.nan]", "config key 'data.augment.noise.snr_db\\[1\\]' must be a finite"),
        ("data.augment=3", "config key 'data.augment' must be a mapping"),
    ],
)
def test_trainer_config_errors_name_the_augment_key(conf, override, message):
    from asrkd.train.config import ConfigError, load_config, validate

    with pytest.raises(ConfigError, match=message):
        validate(load_config(conf, [override]))


# ----------------------------------------------------------------------- teacher-adapt copies
def _tiny_whisper(vocab_size: int):
    from asrkd.models.teachers.whisper import WhisperCTC

    torch.manual_seed(0)
    return WhisperCTC(vocab_size, n_state=32, n_head=2, n_layer=1, head_layers=0)


def test_adapt_augmented_copies_multiply_the_training_items(utts, tmp_path, monkeypatch):
    from asrkd.train import adapt

    rows = [{"id": u.id, "audio": u.audio, "duration": u.duration, "text": u.text} for u in utts]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tmp_path / "tok.json"
    CharTokenizer.english().save(tok)
    monkeypatch.setattr(adapt, "load_adaptable", lambda cfg, v: (_tiny_whisper(v), "tiny-test"))

    def run(**kw):
        cfg = adapt.AdaptConfig(str(manifest), str(tok), dev=str(manifest), epochs=1, progress=False, **kw)
        return adapt.adapt_teacher(cfg, log=lambda _: None)[2]

    summary = run(augment_copies=3)
    assert summary["train_utterances"] == 2 and summary["train_items"] == 2 * 4
    assert summary["augment_copies"] == 3 and summary["augment"] == AugmentConfig.default().to_dict()
    assert summary["dev_utterances"] == 2  # the dev set stays clean: not multiplied
    assert run()["train_items"] == 2 and run()["augment"] is None

    settings = tmp_path / "aug.json"
    settings.write_text(json.dumps({"noise": {"prob": 1.0, "snr_db": [0, 5]}}))
    assert run(augment_copies=1, augment=str(settings))["augment"]["noise"]["snr_db"] == [0, 5]
    settings.write_text("noise: {prob: 3}\n")
    with pytest.raises(ValueError, match="--augment .*aug.json: augment key 'noise.prob'"):
        run(augment_copies=1, augment=str(settings))
    with pytest.raises(ValueError, match="--augment needs --augment-copies"):
        run(augment=str(settings))
    with pytest.raises(ValueError, match="--augment-copies must be an int >= 0"):
        run(augment_copies=-1)


def test_adapt_copies_are_augmented_seeded_and_aligned(utts):
    from asrkd.data import Rejects
    from asrkd.train import adapt

    tok = CharTokenizer.english()
    top = adapt.TopOfWhisper(_tiny_whisper(len(tok)), 0)
    cfg = adapt.AdaptConfig("unused", "unused", augment_copies=2, progress=False)
    augment = AugmentConfig.from_dict({"noise": {"prob": 1.0, "snr_db": [0, 5]}})
    clean = adapt.encode(top, utts, tok, 60.0, Rejects(), "clean", False)
    both = [adapt.add_augmented_copies(top, clean, utts, tok, cfg, augment) for _ in range(2)]
    out = both[0]
    assert out.ids == ["u0", "u1", "u0~aug1", "u1~aug1", "u0~aug2", "u1~aug2"]
    for uid in ("u0", "u1"):
        copies = [out.outputs[f"{uid}~aug{c}"] for c in (1, 2)]
        assert all(c.shape == out.outputs[uid].shape for c in copies)  # the same frames: length kept
        assert not torch.equal(copies[0], out.outputs[uid]) and not torch.equal(copies[0], copies[1])
        assert out.targets[f"{uid}~aug2"] == out.targets[uid] and out.samples[f"{uid}~aug1"] == out.samples[uid]
    assert all(torch.equal(both[0].outputs[k], both[1].outputs[k]) for k in out.ids)  # deterministic
