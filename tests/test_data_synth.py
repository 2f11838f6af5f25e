from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from asrkd.cli import main as cli
from asrkd.data.manifest import load_manifest
from asrkd.data.sentences import WORDNET_DIR, clean_sentences, load_sentences, unseen_rate, wordnet_examples
from asrkd.data.synth import (
    ACCENTS,
    DEV_VARIANTS,
    FESTIVAL_HELD_OUT,
    FESTIVAL_TRAIN,
    POOL_VARIANTS,
    TEST_VARIANTS,
    TRAIN_VARIANTS,
    Job,
    SynthConfig,
    SynthError,
    check_festival,
    check_voices,
    festival_script,
    load_words,
    plan,
    synthesize,
    synthesize_festival,
    work_units,
)
from asrkd.data.text import normalize_text
from asrkd.data.tokenizer import CharTokenizer
from asrkd.data.wordlist_build import DENY

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
needs_wordnet = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="wordnet-base not installed")
needs_festival = pytest.mark.skipif(shutil.which("festival") is None, reason="festival not installed")

TINY = SynthConfig(train_hours=12 / 3600, dev_minutes=0.1, test_minutes=0.1, seed=3, festival_share=0.0, text="words")


def test_packaged_word_list():
    words = load_words()
    assert len(words) == len(set(words)) >= 5000
    assert all(w.isascii() and w.isalpha() and w.islower() for w in words)
    assert not set(words) & DENY
    assert words[:3] == ["a", "the", "an"]  # most frequent first


@pytest.mark.parametrize("text", ["words", pytest.param("wordnet", marks=needs_wordnet)])
def test_plan_is_deterministic_and_holds_out_voices(tmp_path, text):
    cfg = SynthConfig(train_hours=0.1, dev_minutes=2.0, test_minutes=2.0, pool_hours=0.05, seed=11, text=text)
    jobs = plan(cfg, tmp_path)
    assert jobs == plan(cfg, tmp_path)
    other = plan(SynthConfig(train_hours=0.1, dev_minutes=2.0, test_minutes=2.0, seed=12, text=text), tmp_path)
    assert [j.text for j in jobs if j.split == "train"] != [j.text for j in other if j.split == "train"]
    tok = CharTokenizer.english()
    for j in jobs:
        assert 3 <= len(j.text.split()) <= 15
        assert normalize_text(j.text) == j.text and not tok.oov_chars(j.text)
        assert j.voice in ACCENTS if j.engine == "espeak" else j.voice in FESTIVAL_TRAIN + FESTIVAL_HELD_OUT
    esp = [j for j in jobs if j.engine == "espeak"]
    variants = {s: {j.variant for j in esp if j.split == s} for s in ("train", "dev", "test", "pool")}
    assert variants["train"] <= set(TRAIN_VARIANTS) and variants["dev"] <= set(DEV_VARIANTS)
    assert variants["test"] <= set(TEST_VARIANTS) and variants["pool"] <= set(POOL_VARIANTS)
    groups = [TRAIN_VARIANTS, DEV_VARIANTS, TEST_VARIANTS, POOL_VARIANTS]
    assert sum(map(len, groups)) == len(set().union(*groups))  # pairwise disjoint
    speakers = {s: {j.speaker for j in jobs if j.split == s} for s in ("train", "dev", "test", "pool")}
    assert not speakers["train"] & (speakers["dev"] | speakers["test"])
    assert not speakers["pool"] & (speakers["dev"] | speakers["test"])
    # both engines in every split (a quarter festival by default), festival test voices held out
    fest = {s: {j.voice for j in jobs if j.split == s and j.engine == "festival"} for s in speakers}
    assert all(fest.values()) and all(esp_s for esp_s in variants.values())
    assert fest["train"] <= set(FESTIVAL_TRAIN) and fest["test"] <= set(FESTIVAL_HELD_OUT)
    assert not set(FESTIVAL_TRAIN) & set(FESTIVAL_HELD_OUT)
    if text == "wordnet":  # every sentence once in the whole corpus: test sentences are never trained on
        assert len({j.text for j in jobs}) == len(jobs)


def test_festival_off_and_bad_settings(tmp_path):
    jobs = plan(
        SynthConfig(train_hours=0.05, dev_minutes=1, test_minutes=1, festival_share=0.0, text="words"), tmp_path
    )
    assert {j.engine for j in jobs} == {"espeak"}
    with pytest.raises(SynthError, match="festival_share"):
        SynthConfig(festival_share=1.5)
    with pytest.raises(SynthError, match="text source"):
        SynthConfig(text="shakespeare")


def test_work_units_group_festival_by_voice(tmp_path):
    jobs = plan(SynthConfig(train_hours=0.2, dev_minutes=1, test_minutes=1, text="words"), tmp_path)
    units = work_units(jobs)
    assert sorted(j.id for u in units for j in u) == sorted(j.id for j in jobs)  # each job once
    for u in units:
        assert len({(j.engine, j.voice if j.engine == "festival" else "") for j in u}) == 1
        assert len(u) <= (12 if u[0].engine == "festival" else 8)


def test_festival_script_refuses_unnormalised_text(tmp_path):
    ok = Job("a", "train", "don't stop", "festival", "kal_diphone", "", 110, 0, str(tmp_path / "a.wav"))
    script = festival_script([ok], tmp_path)
    assert script.startswith("(voice_kal_diphone)\n")
    assert "Duration_Stretch 1.10" in script and '"don\'t stop"' in script
    bad = Job("b", "train", 'x") (system "rm', "festival", "kal_diphone", "", 100, 0, str(tmp_path / "b.wav"))
    with pytest.raises(SynthError, match="normalised"):
        festival_script([bad], tmp_path)


def test_sentence_cleaning_and_unseen_rate():
    raw = [
        "He poured a stiff drink!",
        "he poured a stiff drink",
        "an A-bomb test",
        "the 3 bears ate",
        "ok",
        "café au lait",
    ]
    kept, dropped = clean_sentences(raw, 3, 15)
    assert kept == ["he poured a stiff drink", "an a bomb test", "the three bears ate", "cafe au lait"]
    assert dropped == {"duplicate": 1, "length": 1}
    rate = unseen_rate(["a b c"], ["a d", "d e"])
    assert rate == {"types": round(2 / 3, 4), "tokens": 0.75}
    assert unseen_rate(["a"], []) == {"types": 0.0, "tokens": 0.0}


@needs_wordnet
def test_wordnet_sentences():
    raw = wordnet_examples()
    sentences = load_sentences(3, 15)
    assert len(raw) > 40_000 and len(sentences) > 35_000 and len(set(sentences)) == len(sentences)
    assert "the oceans are teeming with life" in sentences
    assert all(3 <= len(s.split()) <= 15 and normalize_text(s) == s for s in sentences)


def test_wordnet_missing_is_a_clear_error(tmp_path, monkeypatch):
    import asrkd.data.sentences as sentences

    with pytest.raises(sentences.TextSourceError, match="apt-get install wordnet-base"):
        wordnet_examples(tmp_path)
    monkeypatch.setattr(sentences, "WORDNET_DIR", tmp_path)
    sentences.load_sentences.cache_clear()
    with pytest.raises(SynthError, match="wordnet-base"):
        plan(SynthConfig(train_hours=0.01), tmp_path)
    sentences.load_sentences.cache_clear()


@needs_espeak
def test_espeak_voices_are_checked():
    check_voices(ACCENTS, TRAIN_VARIANTS + DEV_VARIANTS + TEST_VARIANTS)
    # espeak-ng itself would accept these silently and speak with its default voice
    with pytest.raises(SynthError, match="no-such-variant"):
        check_voices(["en-us"], ["no-such-variant"])
    with pytest.raises(SynthError, match="en-xx"):
        check_voices(["en-xx"], [])


@needs_festival
def test_festival_voices_are_checked(tmp_path):
    check_festival(FESTIVAL_TRAIN + FESTIVAL_HELD_OUT)
    with pytest.raises(SynthError, match="no_such_voice"):
        check_festival(["no_such_voice"])
    # festival itself would speak with its default voice: the script stops it
    job = Job("x", "train", "hello there", "festival", "no_such_voice", "", 100, 0, str(tmp_path / "x.wav"))
    assert synthesize_festival([job]) == [("x", None, "festival has no voice 'no_such_voice'")]
    good = [
        Job(v, "train", "hello there", "festival", v, "", 100, 0, str(tmp_path / f"{v}.wav")) for v in FESTIVAL_TRAIN
    ]
    results = [r for j in good for r in synthesize_festival([j])]
    assert all(err is None and secs > 0.3 for _, secs, err in results)
    a, b = (sf.read(j.path)[0] for j in good)
    assert len(a) != len(b)  # two different voices, not one default voice twice


@needs_espeak
@needs_festival
@needs_wordnet
def test_synth_two_engines_pool_and_unseen_vocabulary(tmp_path):
    cfg = SynthConfig(train_hours=30 / 3600, dev_minutes=0.2, test_minutes=0.2, pool_hours=10 / 3600, seed=5)
    cfg.festival_share = 0.5
    stats = synthesize(tmp_path / "c", cfg, jobs=2, progress=False)
    assert not stats["failed"]
    out = tmp_path / "c"
    train, pool = load_manifest(out / "train.jsonl"), load_manifest(out / "pool.jsonl")
    assert pool and all(u.text is None for u in pool) and all(u.text for u in train)
    both = load_manifest(out / "train_pool.jsonl")
    assert [u.id for u in both] == [u.id for u in train] + [u.id for u in pool]
    engines = {u.extra["synth"]["engine"] for u in train}
    assert engines == {"espeak", "festival"} and stats["festival_utterances"]["train"] >= 1
    for u in train + pool:
        info = sf.info(u.audio)
        assert (info.samplerate, info.channels) == (16000, 1) and abs(info.frames / 16000 - u.duration) < 1e-3
        assert u.duration > 0.3
    fest = [u for u in train if u.extra["synth"]["engine"] == "festival"]
    assert all(u.speaker.startswith("festival-") for u in fest)
    unseen = stats["unseen_in_train"]["test"]
    assert 0 < unseen["tokens"] <= unseen["types"] <= 1


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
                "--festival-share",
                "0",
                "--text",
                "words",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "already synthesized" in printed and "corpus: train" in printed
