"""NeMo manifests, Lhotse CutSets and Hugging Face datasets in and out, with the real lhotse and
datasets packages on fixtures made here; bad items counted like the other importers'."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from asrkd.cli import main
from asrkd.data import Rejects, load_manifest
from asrkd.data.importers import IMPORTERS, PrepareError


def _wav(path, seconds=2.0, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype("float32"), rate)
    return path


def test_nemo_manifest(tmp_path):
    _wav(tmp_path / "audio" / "a.wav")
    _wav(tmp_path / "audio" / "long.wav", seconds=6.0)
    b = _wav(tmp_path / "elsewhere" / "b.wav", rate=8000)
    rows = [
        {"audio_filepath": "audio/a.wav", "duration": 2.0, "text": "Hello World"},
        {"audio_filepath": str(b), "duration": 2.0},  # absolute path, no text: unlabelled
        {"audio_filepath": "audio/long.wav", "duration": 2.5, "offset": 1.5, "text": "a segment"},
        {"audio_filepath": "audio/missing.wav", "duration": 1.0, "text": "gone"},
        {"audio_filepath": "audio/a.wav", "duration": -1, "text": "bad"},
    ]
    m = tmp_path / "manifest.json"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    rejects = Rejects()
    utts = IMPORTERS["nemo"](m, rejects, progress=False)
    by = {u.id: u for u in utts}
    assert sorted(by) == ["a", "b", "long-00001500"]
    assert by["a"].text == "hello world" and by["b"].text is None
    assert by["long-00001500"].offset == 1.5 and by["long-00001500"].duration == pytest.approx(2.5)
    assert by["long-00001500"].load_audio(16000).numel() == 40000
    assert rejects.counts() == {"malformed_line": 1, "bad_field": 1, "missing_file": 1}


def _lhotse_cuts(tmp_path):
    lhotse = pytest.importorskip("lhotse")
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    rec = Recording.from_file(str(_wav(tmp_path / "rec1.wav", seconds=5.0)), recording_id="rec1")
    rec2 = Recording.from_file(str(_wav(tmp_path / "rec2.wav", seconds=3.0)), recording_id="rec2")
    sups = [
        SupervisionSegment("s1", "rec1", start=0.5, duration=1.5, text="first one", speaker="spk1"),
        SupervisionSegment("s2", "rec1", start=2.5, duration=2.0, text="second one", speaker="spk2"),
    ]
    cuts = CutSet.from_manifests(RecordingSet.from_recordings([rec, rec2]), SupervisionSet.from_segments(sups))
    return lhotse, cuts.trim_to_supervisions(keep_overlapping=False), cuts


def test_lhotse_cutset_import(tmp_path):
    lhotse, trimmed, whole = _lhotse_cuts(tmp_path)
    path = tmp_path / "cuts.jsonl.gz"
    trimmed.to_file(str(path))
    rejects = Rejects()
    utts = {u.id: u for u in IMPORTERS["lhotse"](path, rejects, progress=False)}
    assert set(utts) == {"s1", "s2"}
    assert utts["s1"].offset == pytest.approx(0.5) and utts["s1"].duration == pytest.approx(1.5)
    assert utts["s2"].text == "second one" and utts["s2"].speaker == "spk2"
    assert utts["s2"].load_audio(16000).numel() == 32000
    # the untrimmed set: rec2 has no supervision (one unlabelled entry); a URL source is refused
    plain = tmp_path / "whole.jsonl"
    whole.to_file(str(plain))
    lines = plain.read_text().splitlines()
    bad = json.loads(lines[0])
    bad["id"] = "remote"
    bad["recording"]["sources"] = [{"type": "url", "channels": [0], "source": "https://example.org/x.wav"}]
    plain.write_text("\n".join([*lines, json.dumps(bad)]) + "\n")
    rejects = Rejects()
    got = {u.id: u for u in IMPORTERS["lhotse"](plain, rejects, progress=False)}
    assert {"s1", "s2"} <= set(got) and any(u.text is None and u.duration == pytest.approx(3.0) for u in got.values())
    assert rejects.counts() == {"unsupported": 1}


def test_manifest_to_lhotse_and_back(tmp_path):
    lhotse = pytest.importorskip("lhotse")
    _wav(tmp_path / "a.wav", seconds=2.0)
    _wav(tmp_path / "b.wav", seconds=4.0)
    m = tmp_path / "m.jsonl"
    rows = [
        {"id": "a", "audio": "a.wav", "duration": 2.0, "text": "hello there", "speaker": "x"},
        {"id": "b-seg", "audio": "b.wav", "duration": 1.0, "offset": 2.5},
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "cuts.jsonl.gz"
    assert main(["prepare", "lhotse-export", str(m), str(out)]) == 0
    cuts = lhotse.CutSet.from_file(str(out))
    by = {c.id: c for c in cuts}
    assert set(by) == {"a", "b-seg"}
    assert by["a"].supervisions[0].text == "hello there" and by["a"].supervisions[0].speaker == "x"
    assert by["b-seg"].start == 2.5 and by["b-seg"].duration == 1.0 and not by["b-seg"].supervisions
    assert by["a"].recording.sampling_rate == 16000 and by["a"].recording.num_samples == 32000
    back = {u.id: u for u in IMPORTERS["lhotse"](out, Rejects(), progress=False)}
    assert back["a"].text == "hello there" and back["b-seg"].offset == 2.5


def test_hf_saved_dataset_and_audiofolder(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    a, b = _wav(tmp_path / "wavs" / "a.wav"), _wav(tmp_path / "wavs" / "b.wav", rate=22050)
    raw = _wav(tmp_path / "c.wav").read_bytes()
    ds = datasets.Dataset.from_dict(
        {
            "audio": [
                {"path": str(a), "bytes": None},
                {"path": str(b), "bytes": None},
                {"path": "c.wav", "bytes": raw},
            ],
            "sentence": ["Hello There", "second example", "in bytes"],
            "id": ["utt a", "utt-b", "utt-c"],
        }
    ).cast_column("audio", datasets.Audio(decode=False))
    saved = tmp_path / "saved"
    ds.save_to_disk(str(saved))
    (tmp_path / "c.wav").unlink()  # only the bytes are left
    out = tmp_path / "out" / "hf.jsonl"
    assert main(["prepare", "hf", str(saved), str(out), "--quiet"]) == 0
    utts = {u.id: u for u in load_manifest(out)}
    assert set(utts) == {"utt_a", "utt-b", "utt-c"}
    assert utts["utt_a"].text == "hello there" and utts["utt-b"].duration == pytest.approx(2.0, abs=0.01)
    assert utts["utt-c"].load_audio(16000).numel() == 32000  # written out from the bytes
    assert (tmp_path / "out" / "hf.audio").is_dir()
    # an audio folder with metadata.csv
    folder = tmp_path / "af"
    _wav(folder / "x.wav")
    _wav(folder / "y.wav", seconds=1.0)
    (folder / "metadata.csv").write_text("file_name,transcription\nx.wav,the x file\ny.wav,the y file\n")
    rejects = Rejects()
    got = IMPORTERS["hf"](folder, rejects, progress=False)
    assert sorted(u.text for u in got) == ["the x file", "the y file"]
    with pytest.raises(PrepareError, match="not a folder"):
        IMPORTERS["hf"](tmp_path / "nope", Rejects())
