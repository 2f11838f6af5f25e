from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from asrkd.cli import main as cli
from asrkd.data.manifest import load_manifest
from asrkd.data.synth import (
    ACCENTS,
    DEV_VARIANTS,
    TEST_VARIANTS,
    TRAIN_VARIANTS,
    SynthConfig,
    SynthError,
    check_voices,
    load_words,
    plan,
    synthesize,
)
from asrkd.data.text import normalize_text
from asrkd.data.tokenizer import CharTokenizer
from asrkd.data.wordlist_build import DENY

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

TINY = SynthConfig(train_hours=12 / 3600, dev_minutes=0.1, test_minutes=0.1, seed=3)


def test_packaged_word_list():
    words = load_words()
    assert len(words) == len(set(words)) >= 5000
    assert all(w.isascii() and w.isalpha() and w.islower() for w in words)
    assert not set(words) & DENY
    assert words[:3] == ["a", "the", "an"]  # most frequent first


def test_plan_is_deterministic_and_holds_out_voices(tmp_path):
    cfg = SynthConfig(train_hours=0.05, dev_minutes=1.0, test_minutes=1.0, seed=11)
    jobs = plan(cfg, tmp_path)
    assert jobs == plan(cfg, tmp_path)
    other = plan(SynthConfig(train_hours=0.05, dev_minutes=1.0, test_minutes=1.0, seed=12), tmp_path)
    assert [j.text for j in jobs] != [j.text for j in other]
    tok = CharTokenizer.english()
    for j in jobs:
        assert 3 <= len(j.text.split()) <= 15
        assert normalize_text(j.text) == j.text and not tok.oov_chars(j.text)
        assert j.voice in ACCENTS
    variants = {s: {j.variant for j in jobs if j.split == s} for s in ("train", "dev", "test")}
    assert variants["train"] <= set(TRAIN_VARIANTS) and variants["dev"] <= set(DEV_VARIANTS)
    assert variants["test"] <= set(TEST_VARIANTS)
    assert not set(TRAIN_VARIANTS) & set(DEV_VARIANTS) and not set(TRAIN_VARIANTS) & set(TEST_VARIANTS)
    assert not set(DEV_VARIANTS) & set(TEST_VARIANTS)
    speakers = {s: {j.speaker for j in jobs if j.split == s} for s in ("train", "dev", "test")}
    assert not speakers["train"] & (speakers["dev"] | speakers["test"])


@needs_espeak
def test_espeak_voices_are_checked():
    check_voices(ACCENTS, TRAIN_VARIANTS + DEV_VARIANTS + TEST_VARIANTS)
    # espeak-ng itself would accept these silently and speak with its default voice
    with pytest.raises(SynthError, match="no-such-variant"):
        check_voices(["en-us"], ["no-such-variant"])
    with pytest.raises(SynthError, match="en-xx"):
        check_voices(["en-xx"], [])


def _corpus(out: Path):
    rows = {}
    for split in ("train", "dev", "test"):
        for u in load_manifest(out / f"{split}.jsonl"):
            d = u.to_dict()
            rel = Path(d.pop("audio")).relative_to(out.resolve())
            rows[u.id] = (split, d, str(rel), Path(u.audio).read_bytes())
    return rows


@needs_espeak
def test_synth_is_deterministic_16k_mono(tmp_path, capsys):
    a = synthesize(tmp_path / "a", TINY, jobs=2, progress=False)
    b = synthesize(tmp_path / "b", TINY, jobs=1, progress=False)
    assert not a["failed"] and a["utterances"] == b["utterances"]
    ca, cb = _corpus(tmp_path / "a"), _corpus(tmp_path / "b")
    assert ca == cb  # same texts, voices, durations and audio bytes, whatever the number of processes
    assert set(a["utterances"]) == {"train", "dev", "test"} and all(n >= 1 for n in a["utterances"].values())
    for _split, d, rel, _ in ca.values():
        info = sf.info(str(tmp_path / "a" / rel))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames / 16000 - d["duration"]) < 1e-3 and d["duration"] > 0.3
        assert d["speaker"] == d["synth"]["voice"] and d["text"]
    stamp = json.loads((tmp_path / "a" / "corpus.json").read_text())
    assert stamp["config"]["seed"] == 3 and stamp["stats"]["utterances"] == a["utterances"]
    # same settings again: nothing to do; the CLI prints the corpus size
    assert synthesize(tmp_path / "a", TINY, progress=False)["reused"]
    assert (
        cli(
            [
                "synth",
                str(tmp_path / "a"),
                "--hours",
                str(TINY.train_hours),
                "--dev-minutes",
                "0.1",
                "--test-minutes",
                "0.1",
                "--seed",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "already synthesized" in printed and "corpus: train" in printed
