"""The declared duration is checked where every command loads utterance audio.

A manifest ``duration`` that is wrong (a 2.75 s file declared 0.5 s) must not be used whole by
one command and rejected by another: the shared loader rejects it as ``duration_mismatch``,
and the dataset (train, cache), decode and the CMVN pass all count it alike.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asrkd.data.audio import AudioError, duration_tolerance, load_audio
from asrkd.data.dataset import ASRDataset
from asrkd.data.features import FeatureConfig, compute_cmvn
from asrkd.data.manifest import Utterance
from asrkd.data.rejects import RejectRecord, Rejects

sys.path.insert(0, str(Path(__file__).parent))

torch.set_num_threads(1)


def _wav(path, seconds, rate=16000, seed=0):
    sf.write(
        path,
        (0.1 * np.random.RandomState(seed).randn(round(seconds * rate))).astype(np.float32),
        rate,
        subtype="PCM_16",
    )
    return str(path)


def test_tolerance():
    assert duration_tolerance(0.5) == 0.1 and duration_tolerance(5.0) == 0.1
    assert duration_tolerance(20.0) == pytest.approx(0.4)


def test_load_audio_checks_the_declared_duration(tmp_path):
    path = _wav(tmp_path / "a.wav", 2.75)
    assert load_audio(path, declared_duration=2.75).numel() == 44000
    assert load_audio(path, declared_duration=2.70).numel() == 44000  # within 0.1 s
    for declared in (0.5, 2.6, 3.0):
        with pytest.raises(AudioError, match="2.75 s") as err:
            load_audio(path, declared_duration=declared)
        assert err.value.kind == "duration_mismatch" and f"{declared:.2f}" in str(err.value)
    # 8 kHz file: compared in seconds, whatever the rate
    assert load_audio(_wav(tmp_path / "b.wav", 2.0, rate=8000), declared_duration=2.0).numel() == 32000
    long = _wav(tmp_path / "long.wav", 20.0)
    load_audio(long, declared_duration=20.35)  # 2 % of 20 s
    with pytest.raises(AudioError, match="says 20.50 s"):
        load_audio(long, declared_duration=20.5)


def test_utterance_checks_whole_files_and_segments(tmp_path):
    path = _wav(tmp_path / "a.wav", 2.75)
    assert Utterance("ok", path, 2.75).load_audio().numel() == 44000
    for declared in (0.5, 5.0):
        with pytest.raises(AudioError) as err:
            Utterance("liar", path, declared).load_audio()
        assert err.value.kind == "duration_mismatch"
    # an entry with offset declares a segment: it must lie inside the file
    assert Utterance("seg", path, 0.5, offset=2.0).load_audio().numel() == 8000
    with pytest.raises(AudioError) as err:
        Utterance("past", path, 0.5, offset=2.5).load_audio()
    assert err.value.kind == "out_of_range"


def _liars(tmp_path):
    good = [Utterance(f"g{i}", _wav(tmp_path / f"g{i}.wav", 1.0, seed=i), 1.0) for i in range(3)]
    liar = Utterance("liar", _wav(tmp_path / "liar.wav", 2.75, seed=9), 0.5)
    return good + [liar]


def test_dataset_and_cmvn_reject_a_wrong_duration(tmp_path):
    utts = _liars(tmp_path)
    ds = ASRDataset(utts)
    rec = ds[3]
    assert isinstance(rec, RejectRecord) and rec.kind == "duration_mismatch" and "liar" in rec.reason
    rejects = Rejects()
    compute_cmvn(utts, FeatureConfig(n_mels=40), rejects=rejects)
    assert rejects.counts() == {"duration_mismatch": 1}


def test_cache_rejects_a_wrong_duration(tmp_path):
    from test_train import make_teacher

    from asrkd.kd.cache import build_cache
    from asrkd.models.teachers import load_teacher

    teacher = load_teacher(make_teacher(tmp_path / "t.pt"))
    build_cache(teacher, _liars(tmp_path), tmp_path / "c", num_workers=0, progress=False, log=lambda _: None)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    rejected = [r for s in index["shards"] for r in s["rejected"]]
    assert [(r["id"], r["kind"]) for r in rejected] == [("liar", "duration_mismatch")]


def test_decode_rejects_a_wrong_duration(tmp_path):
    from test_train import make_teacher

    from asrkd.eval.decode import decode_manifest

    make_teacher(tmp_path / "m.pt")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(u.to_dict()) + "\n" for u in _liars(tmp_path)))
    rejects = Rejects()
    hyps, _ = decode_manifest(tmp_path / "m.pt", manifest, rejects=rejects)
    assert rejects.counts() == {"duration_mismatch": 1} and hyps["liar"] == "" and len(hyps) == 4
