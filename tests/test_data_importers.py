from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkd.cli import main as cli
from asrkd.data.importers import CheckOptions, import_folder, import_kaldi, import_librispeech
from asrkd.data.manifest import load_manifest
from asrkd.data.rejects import Rejects
from asrkd.data.tokenizer import CharTokenizer


def _audio(path, seconds, rate=16000, fmt=None, subtype=None, nan=False, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (0.1 * np.random.RandomState(seed).randn(int(seconds * rate))).astype(np.float32)
    if nan:
        x[3] = np.nan
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _options():
    return CheckOptions(tokenizer=CharTokenizer.english(), subsampling=4, hop_ms=10.0)


# -- Kaldi ----------------------------------------------------------------------------------------
def _kaldi_dir(tmp_path):
    a = tmp_path / "audio"
    _audio(a / "rec1.wav", 6.0, subtype="PCM_16")
    _audio(a / "rec2.flac", 3.0, rate=8000)
    _audio(a / "whole.wav", 2.0, subtype="PCM_16")
    _audio(a / "nan.wav", 1.0, subtype="FLOAT", nan=True)
    _truncate(_audio(a / "trunc.flac", 2.0))
    _audio(a / "empty.wav", 0.0, subtype="PCM_16")
    (a / "notaudio.wav").write_text("hello")
    d = tmp_path / "data"
    d.mkdir()
    (d / "wav.scp").write_text(
        "\n".join(
            [
                f"rec1 {a}/rec1.wav",
                f"rec2 {a}/rec2.flac",
                f"recpipe cat {a}/whole.wav |",
                "recbadpipe false |",
                f"recnan {a}/nan.wav",
                f"rectrunc {a}/trunc.flac",
                f"recempty {a}/empty.wav",
                f"recjunk {a}/notaudio.wav",
                f"recmissing {a}/missing.wav",
                "recark raw.ark:1234",
                "lonely",
            ]
        )
        + "\n"
    )
    (d / "segments").write_text(
        "\n".join(
            [
                "s1 rec1 0.00 2.50",
                "s2 rec1 2.50 5.90",
                "s3 rec2 0 -1",  # -1: to the end of the recording
                "s4 rec1 5.00 9.00",  # past the end
                "s5 recpipe 0.5 1.5",
                "s6 recbadpipe 0 1",
                "s7 recnan 0 1",
                "s8 rectrunc 0 1",
                "s9 recempty 0 1",
                "s10 recjunk 0 1",
                "s11 recmissing 0 1",
                "s12 nosuchrec 0 1",
                "s13 rec1 two three",
                "s14 rec1 3.0 2.0",
                "s15 rec1 0 0.3",  # too short for its text
                "s16 rec1 0 1",  # OOV text
                "s17 rec1 1 2",  # empty text
                "s18 rec1 2 3",  # no text line: unlabelled
            ]
        )
        + "\n"
    )
    (d / "text").write_text(
        "\n".join(
            [
                "s1 HELLO, WORLD!",
                "s2 it's 42 o'clock",
                "s3 the third one",
                "s4 out of range",
                "s5 from a pipe",
                "s6 x",
                "s7 x",
                "s8 x",
                "s9 x",
                "s10 x",
                "s11 x",
                "s15 this transcript is much too long for a third of a second",
                "s16 stra\u00dfe",
                "s17",
                "s2 a second line for s2",
                "ghost text without audio",
            ]
        )
        + "\n"
    )
    (d / "utt2spk").write_text("s1 spkA\ns2 spkA\ns3 spkB\n")
    return d


def test_kaldi_with_segments(tmp_path):
    d = _kaldi_dir(tmp_path)
    rejects = Rejects()
    utts = import_kaldi(
        d, rejects, _options(), jobs=2, pipe_dir=tmp_path / "piped", progress=False, allow_commands=True
    )
    by_id = {u.id: u for u in utts}
    assert sorted(by_id) == ["s1", "s18", "s2", "s3", "s5"]
    s1, s2, s3, s5 = by_id["s1"], by_id["s2"], by_id["s3"], by_id["s5"]
    assert (s1.offset, s1.duration, s1.text, s1.speaker) == (0.0, 2.5, "hello world", "spkA")
    assert (s2.offset, s2.duration, s2.text) == (2.5, 3.4, "it's forty two o'clock")
    assert (s3.offset, s3.duration, s3.speaker) == (0.0, 3.0, "spkB")
    assert s1.audio == str(tmp_path / "audio" / "rec1.wav")
    assert by_id["s18"].text is None
    assert s5.audio == str(tmp_path / "piped" / "recpipe.flac") and (s5.offset, s5.duration) == (0.5, 1.0)
    assert sf.info(s5.audio).frames == 32000
    assert rejects.counts() == {
        "malformed_line": 3,  # wav.scp "lonely", segments s13 (not numbers) and s14 (end < start)
        "duplicate_id": 1,  # second text line for s2 (the first is kept)
        "missing_file": 2,  # s11 file missing, s12 recording not in wav.scp
        "unreadable": 1,
        "truncated": 1,
        "empty_audio": 1,
        "nan_audio": 1,
        "out_of_range": 1,
        "unsupported": 1,
        "pipe_failed": 1,
        "orphan_text": 1,
        "empty_text": 1,
        "oov_chars": 1,
        "too_short_for_ctc": 1,
    }
    kinds = {r.id: r.kind for r in rejects}
    assert kinds["s4"] == "out_of_range" and kinds["s6"] == "pipe_failed" and kinds["s7"] == "nan_audio"
    assert kinds["s8"] == "truncated" and kinds["s9"] == "empty_audio" and kinds["s10"] == "unreadable"
    assert kinds["s11"] == "missing_file" and kinds["s15"] == "too_short_for_ctc" and kinds["s16"] == "oov_chars"
    assert kinds["s17"] == "empty_text" and kinds["ghost"] == "orphan_text" and kinds["recark"] == "unsupported"
    reasons = {r.id: r.reason for r in rejects}
    assert "ark" in reasons["recark"] and "false" in reasons["s6"] and "missing.wav" in reasons["s11"]


def test_kaldi_without_segments_and_missing_wav_scp(tmp_path):
    a = tmp_path / "a"
    _audio(a / "u1.wav", 1.5, subtype="PCM_16")
    _audio(a / "u2.wav", 1.0, subtype="PCM_16")
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text(f"u1 {a}/u1.wav\nu2 {a}/u2.wav\n")
    (d / "text").write_text("u1 one two\n")
    rejects = Rejects()
    utts = import_kaldi(d, rejects, _options(), progress=False)
    assert [(u.id, u.offset, u.duration, u.text) for u in utts] == [
        ("u1", None, 1.5, "one two"),
        ("u2", None, 1.0, None),
    ]
    assert len(rejects) == 0
    assert cli(["prepare", "kaldi", str(tmp_path / "nothing"), str(tmp_path / "o.jsonl"), "--quiet"]) == 1


# -- LibriSpeech ----------------------------------------------------------------------------------
def test_librispeech_tree(tmp_path):
    root = tmp_path / "LibriSpeech" / "dev-clean"
    for spk, chap, n in (("84", "121123", 3), ("174", "50561", 2)):
        folder = root / spk / chap
        lines = []
        for k in range(n):
            uid = f"{spk}-{chap}-{k:04d}"
            _audio(folder / f"{uid}.flac", 1.0 + k, seed=k)
            lines.append(f"{uid} SOME WORDS NUMBER {k}")
        if spk == "84":
            lines.append(f"{spk}-{chap}-0099 THIS ONE HAS NO AUDIO")
            _audio(folder / f"{spk}-{chap}-0050.flac", 1.0)  # audio without a line: unlabelled
        (folder / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    rejects = Rejects()
    utts = import_librispeech(tmp_path / "LibriSpeech", rejects, _options(), progress=False)
    by_id = {u.id: u for u in utts}
    assert sorted(by_id) == [
        "174-50561-0000",
        "174-50561-0001",
        "84-121123-0000",
        "84-121123-0001",
        "84-121123-0002",
        "84-121123-0050",
    ]
    u = by_id["84-121123-0002"]
    assert (u.text, u.speaker, u.duration, u.offset) == ("some words number two", "84", 3.0, None)
    assert by_id["84-121123-0050"].text is None
    assert rejects.counts() == {"missing_file": 1} and rejects.ids("missing_file") == ["84-121123-0099"]


# -- folder + the CLI -----------------------------------------------------------------------------
def _folder(tmp_path):
    src = tmp_path / "src"
    _audio(src / "a.wav", 1.0, subtype="PCM_16")
    (src / "a.txt").write_text("Alpha beta.\n")
    _audio(src / "spk1" / "b.flac", 1.5)
    (src / "spk1" / "b.txt").write_text("gamma\ndelta\n")
    _audio(src / "spk1" / "c d.ogg", 0.8, fmt="OGG", subtype="VORBIS")  # no .txt: unlabelled
    _truncate(_audio(src / "spk2" / "t.flac", 2.0))
    (src / "spk2" / "t.txt").write_text("truncated")
    (src / "spk2" / "junk.wav").write_text("not audio at all")
    _audio(src / "spk2" / "n.wav", 1.0, subtype="FLOAT", nan=True)
    _audio(src / "spk2" / "e.wav", 1.0, subtype="PCM_16")
    (src / "spk2" / "e.txt").write_text("  \n")
    _audio(src / "spk2" / "dup.wav", 1.0, subtype="PCM_16")
    _audio(src / "spk2" / "dup.flac", 1.0)
    (src / "notes.txt").write_text("a transcript nobody speaks")
    return src


# whitespace in a name is replaced, so the id gets a hash of the exact relative path (sha1, 10 hex digits)
C_D = "spk1/c_d-" + hashlib.sha1(b"spk1/c d").hexdigest()[:10]


def test_folder_layout(tmp_path):
    rejects = Rejects()
    utts = import_folder(_folder(tmp_path), rejects, _options(), progress=False)
    by_id = {u.id: u for u in utts}
    assert sorted(by_id) == ["a", "spk1/b", C_D, "spk2/dup"]
    assert (by_id["a"].text, by_id["a"].speaker) == ("alpha beta", None)
    assert (by_id["spk1/b"].text, by_id["spk1/b"].speaker, by_id["spk1/b"].duration) == ("gamma delta", "spk1", 1.5)
    assert by_id[C_D].text is None
    assert by_id["spk2/dup"].audio.endswith("dup.flac")  # sorted: .flac before .wav, the .wav is the duplicate
    assert rejects.counts() == {
        "duplicate_id": 1,
        "unreadable": 1,
        "truncated": 1,
        "nan_audio": 1,
        "orphan_text": 1,
        "empty_text": 1,
    }


def test_prepare_cli_report_summary_and_strict(tmp_path, capsys):
    src = _folder(tmp_path)
    out, report = tmp_path / "out" / "m.jsonl", tmp_path / "out" / "rejected.jsonl"
    assert cli(["prepare", "folder", str(src), str(out), "--report", str(report), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 utterances" in printed and "2 labelled, 2 unlabelled" in printed
    assert "truncated" in printed and "spk2/t" in printed and "total" in printed
    assert [u.id for u in load_manifest(out)] == ["a", "spk1/b", C_D, "spk2/dup"]
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rows) == 6 and all(r["id"] and r["reason"] and r["kind"] for r in rows)
    assert {r["id"]: r["kind"] for r in rows}["spk2/n"] == "nan_audio"
    assert cli(["prepare", "folder", str(src), str(out), "--strict", "--quiet"]) == 1
    # a clean source passes --strict
    clean = tmp_path / "clean"
    _audio(clean / "x.wav", 1.0, subtype="PCM_16")
    (clean / "x.txt").write_text("fine")
    assert cli(["prepare", "folder", str(clean), str(tmp_path / "c.jsonl"), "--strict", "--quiet"]) == 0
    assert "rejected: none" in capsys.readouterr().out


def test_prepare_cli_vocabulary_options(tmp_path):
    src = tmp_path / "s"
    _audio(src / "x.wav", 2.0, subtype="PCM_16")
    (src / "x.txt").write_text("stra\u00dfe")
    out = tmp_path / "o.jsonl"
    assert cli(["prepare", "folder", str(src), str(out), "--quiet"]) == 0
    assert load_manifest(out) == []
    assert cli(["prepare", "folder", str(src), str(out), "--quiet", "--no-vocab-check"]) == 0
    assert [u.text for u in load_manifest(out)] == ["stra\u00dfe"]
    tok = tmp_path / "tok.json"
    CharTokenizer.build(["stra\u00dfe"]).save(tok)
    assert cli(["prepare", "folder", str(src), str(out), "--quiet", "--tokenizer", str(tok), "--strict"]) == 0


@pytest.mark.parametrize("layout", ["librispeech", "folder"])
def test_prepare_cli_rejects_a_source_of_the_wrong_shape(tmp_path, layout, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(["prepare", layout, str(tmp_path / "empty"), str(tmp_path / "o.jsonl"), "--quiet"]) == 1
    assert "error" in capsys.readouterr().err


def test_kaldi_piped_recordings_get_one_audio_file_each(tmp_path):
    """Ids that sanitise alike (a/b, a_b), differ only in case (A, a), are dot names or very
    long: every piped recording keeps its own audio file, named case-insensitively uniquely."""
    a = tmp_path / "audio"
    long_id = "x" * 300
    ids = ["a/b", "a_b", "A", "a", ".", "..", long_id, "plain"]
    seconds = {uid: 1.0 + 0.25 * i for i, uid in enumerate(ids)}
    d = tmp_path / "d"
    d.mkdir()
    lines = []
    for i, uid in enumerate(ids):
        _audio(a / f"src{i}.wav", seconds[uid], subtype="PCM_16", seed=i)
        lines.append(f"{uid} cat {a}/src{i}.wav |")
    (d / "wav.scp").write_text("\n".join(lines) + "\n")
    rejects = Rejects()
    utts = import_kaldi(d, rejects, _options(), pipe_dir=tmp_path / "piped", progress=False, allow_commands=True)
    assert len(rejects) == 0 and sorted(u.id for u in utts) == sorted(ids)
    names = [Path(u.audio).name for u in utts]
    assert len({n.lower() for n in names}) == len(ids), names
    assert all(len(n.encode()) <= 255 and not n.startswith(".") for n in names), names
    for u in utts:  # each transcript's entry points at its own recording's audio
        assert u.duration == seconds[u.id] and sf.info(u.audio).duration == seconds[u.id], u.id
    assert Path(next(u.audio for u in utts if u.id == "plain")).name == "plain.flac"


def test_pipe_file_names_are_one_to_one_or_refused():
    from asrkd.data.importers import PrepareError, pipe_file_stems

    stems = pipe_file_stems(["a/b", "a_b"])
    assert stems["a_b"] == "a_b" and stems["a/b"].startswith("a_b-")
    # an id spelled like another's hashed name is disambiguated too
    tricky = pipe_file_stems(["a/b", stems["a/b"]])
    assert len({s.lower() for s in tricky.values()}) == 2
    with pytest.raises(PrepareError, match="'X' and 'x'"):  # only if hashing cannot separate them
        pipe_file_stems(["X", "x"], digest=lambda _: "same")


# -- attack round: ids, outputs over inputs, shell commands, encodings ----------------------------
def test_folder_files_whose_ids_sanitise_alike_keep_distinct_ids(tmp_path):
    """'a b.wav' and 'a_b.wav' both became id a_b: one was dropped as a duplicate with exit 0."""
    src = tmp_path / "f"
    _audio(src / "a b.wav", 1.0, subtype="PCM_16", seed=1)
    _audio(src / "a_b.wav", 1.5, subtype="PCM_16", seed=2)
    (src / "a b.txt").write_text("abc")
    (src / "a_b.txt").write_text("bad")
    out = tmp_path / "f.jsonl"
    assert cli(["prepare", "folder", str(src), str(out), "--quiet", "--no-vocab-check", "--strict"]) == 0
    by_audio = {Path(u.audio).name: u for u in load_manifest(out)}
    assert set(by_audio) == {"a b.wav", "a_b.wav"}
    assert (by_audio["a_b.wav"].id, by_audio["a_b.wav"].text, by_audio["a_b.wav"].duration) == ("a_b", "bad", 1.5)
    spaced = by_audio["a b.wav"]
    assert spaced.id.startswith("a_b-") and (spaced.text, spaced.duration) == ("abc", 1.0)
    # the id does not depend on which other files are there (a teacher cache keyed by id stays valid)
    (src / "a_b.wav").unlink()
    (src / "a_b.txt").unlink()
    assert [u.id for u in import_folder(src, Rejects(), _options(), progress=False)] == [spaced.id]


def test_folder_id_collision_that_hashing_cannot_separate_is_refused(tmp_path, monkeypatch):
    from asrkd.data import importers

    src = tmp_path / "f"
    _audio(src / "a b.wav", 1.0, subtype="PCM_16")
    _audio(src / "a\tb.wav", 1.0, subtype="PCM_16")
    monkeypatch.setattr(importers, "_id_digest", lambda _: "same")
    with pytest.raises(importers.PrepareError, match="a b.wav.*a\tb.wav|a\tb.wav.*a b.wav"):
        import_folder(src, Rejects(), _options(), progress=False)


def _scp(tmp_path, lines, name="k"):
    d = tmp_path / name
    d.mkdir()
    (d / "wav.scp").write_text("".join(line + "\n" for line in lines))
    return d


def test_prepare_refuses_outputs_over_audio_listed_outside_the_source(tmp_path, capsys):
    audio = _audio(tmp_path / "audio" / "x.wav", 1.0, subtype="PCM_16")
    other = _audio(tmp_path / "audio" / "y.wav", 1.0, subtype="PCM_16", seed=3)
    before = audio.read_bytes()
    k = _scp(tmp_path, [f"a {audio}", f"b {other}"])
    (k / "text").write_text("a one\n")
    assert cli(["prepare", "kaldi", str(k), str(audio), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "OUT" in err and str(audio) in err and "recording a" in err, err
    assert audio.read_bytes() == before
    assert cli(["prepare", "kaldi", str(k), str(tmp_path / "m.jsonl"), "--report", str(other), "--quiet"]) != 0
    assert "--report" in capsys.readouterr().err and sf.info(other).frames == 16000
    assert not (tmp_path / "m.jsonl").exists()  # refused before anything was written
    # the same for a folder's transcript and a LibriSpeech audio file, reached through a link
    (tmp_path / "link").symlink_to(tmp_path / "audio")
    (tmp_path / "audio" / "x.txt").write_text("one\n")
    with pytest.raises(ValueError, match="x.txt"):
        import_folder(
            tmp_path / "audio", Rejects(), _options(), progress=False, outputs={"OUT": tmp_path / "link" / "x.txt"}
        )


def test_prepare_refuses_a_pipe_output_that_another_entry_lists_as_its_audio(tmp_path, capsys):
    pd = tmp_path / "pd"
    listed = _audio(pd / "b.flac", 1.0, seed=4)
    before = listed.read_bytes()
    src = _audio(tmp_path / "src.wav", 2.0, subtype="PCM_16")
    k = _scp(tmp_path, [f"a {listed}", f"b cat {src} |"])
    out = tmp_path / "k.jsonl"
    assert cli(["prepare", "kaldi", str(k), str(out), "--pipe-dir", str(pd), "--allow-commands", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "recording b" in err and "recording a" in err and str(listed) in err, err
    assert listed.read_bytes() == before and not out.exists()
    # also when the listed file does not exist yet: both ids would end up on the piped audio
    listed.unlink()
    with pytest.raises(ValueError, match="recording a"):
        import_kaldi(k, Rejects(), _options(), pipe_dir=pd, allow_commands=True, progress=False)
    assert not listed.exists()
    # a pipe dir elsewhere is fine
    assert (
        cli(["prepare", "kaldi", str(k), str(out), "--pipe-dir", str(tmp_path / "pd2"), "--allow-commands", "--quiet"])
        == 0
    )
    assert {u.id for u in load_manifest(out)} == {"b"}  # a: missing_file


def test_kaldi_piped_entries_run_only_with_allow_commands(tmp_path, capsys):
    src = _audio(tmp_path / "src.wav", 1.0, subtype="PCM_16")
    plain = _audio(tmp_path / "plain.wav", 1.0, subtype="PCM_16", seed=5)
    marker = tmp_path / "ran"
    k = _scp(tmp_path, [f"p touch {marker}; cat {src} |", f"q {plain}"])
    rejects = Rejects()
    utts = import_kaldi(k, rejects, _options(), pipe_dir=tmp_path / "pd", progress=False)
    assert [u.id for u in utts] == ["q"] and not marker.exists()
    assert rejects.counts() == {"unsupported": 1} and "--allow-commands" in rejects.records[0].reason
    assert "wav.scp:1" in rejects.records[0].reason
    utts = import_kaldi(k, Rejects(), _options(), pipe_dir=tmp_path / "pd", allow_commands=True, progress=False)
    assert sorted(u.id for u in utts) == ["p", "q"] and marker.exists()
    # with segments: every segment of a refused recording is counted, none is imported
    (k / "segments").write_text("s1 p 0 0.5\ns2 p 0.5 1\ns3 q 0 1\n")
    rejects = Rejects()
    assert [u.id for u in import_kaldi(k, rejects, _options(), pipe_dir=tmp_path / "pd2", progress=False)] == ["s3"]
    assert {r.id: r.kind for r in rejects} == {"p": "unsupported", "s1": "unsupported", "s2": "unsupported"}
    # only commands: an error that says what to pass
    only = _scp(tmp_path, [f"p cat {src} |"], name="only")
    assert cli(["prepare", "kaldi", str(only), str(tmp_path / "o.jsonl"), "--quiet"]) == 1
    assert "--allow-commands" in capsys.readouterr().err
    assert cli(["prepare", "kaldi", str(only), str(tmp_path / "o.jsonl"), "--quiet", "--allow-commands"]) == 0


def test_kaldi_non_utf8_lines_are_counted_with_file_and_line(tmp_path):
    """One byte 0xff in `text` aborted the whole import with no line number."""
    u1 = _audio(tmp_path / "u1.wav", 1.0, subtype="PCM_16")
    u2 = _audio(tmp_path / "u2.wav", 1.0, subtype="PCM_16", seed=1)
    u3 = _audio(tmp_path / "u3.wav", 1.0, subtype="PCM_16", seed=2)
    k = tmp_path / "k"
    k.mkdir()
    (k / "wav.scp").write_bytes(f"u1 {u1}\nu2 {u2}\nu3 {u3}\n".encode() + b"u4 /x/\xff.wav\n")
    (k / "text").write_bytes(b"u1 a\xffb\nu2 fine words\n\xfe\xff junk\nu3 ok\n")
    (k / "utt2spk").write_bytes(b"u1 s1\nu2 s2\nu3 sp\xe9aker\n")
    rejects = Rejects()
    utts = import_kaldi(k, rejects, _options(), progress=False)
    assert [(u.id, u.text) for u in utts] == [("u2", "fine words")]  # u1 is not kept as unlabelled audio
    reasons = {r.id: r.reason for r in rejects}
    assert rejects.counts() == {"malformed_line": 4}, reasons
    assert f"{k / 'text'}:1" in reasons["u1"] and "0xff" in reasons["u1"]
    assert f"{k / 'text'}:3" in reasons["text:3"]
    assert f"{k / 'utt2spk'}:3" in reasons["u3"] and f"{k / 'wav.scp'}:4" in reasons["u4"]
    assert cli(["prepare", "kaldi", str(k), str(tmp_path / "k.jsonl"), "--quiet"]) == 0


def test_kaldi_non_finite_times_and_overlong_audio_are_rejects_not_crashes(tmp_path, monkeypatch):
    """A NaN/inf time in `segments` used to pass the checks and crash building the Utterance; a
    file over the manifest's 24 h bound would have too."""
    from asrkd.data import importers

    rec = _audio(tmp_path / "rec.wav", 1.5, subtype="PCM_16")
    k = _scp(tmp_path, [f"rec {rec}"])
    (k / "segments").write_text("s1 rec 0 nan\ns2 rec nan 1\ns3 rec 0 inf\ns4 rec 0 1\n")
    rejects = Rejects()
    assert [u.id for u in import_kaldi(k, rejects, _options(), progress=False)] == ["s4"]
    assert rejects.counts() == {"malformed_line": 3}
    (k / "segments").unlink()
    monkeypatch.setattr(importers, "MAX_DURATION_S", 1.0)
    rejects = Rejects()
    assert import_kaldi(k, rejects, _options(), progress=False) == []
    assert rejects.counts() == {"too_long": 1} and "segments" in rejects.records[0].reason
