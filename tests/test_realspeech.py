"""The real-speech out-of-domain dev set: sources, archive safety, transcripts, idempotence."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrkd.cli import main as cli
from asrkd.data import realspeech as rs
from asrkd.data.manifest import load_manifest

FAKE_JS = """function setUpConsoleAndAudioVar()
{
\tconsoleVar = [
\t\t{"audio": "tut1.ogg", "clear": false, "message": _("Build 2 trucks, then left click"), "state": 0, "wait": 1},
\t\t{"audio": "tut2.ogg", "clear": false, "message": _("Wait for the new unit(s)"), "state": 0, "wait": 3},
\t\t{"audio": "tut3.ogg", "clear": false, "message": undefined, "state": 2, "wait": 2},
\t\t{"audio": "tut4.ogg", "clear": false, "message": _("You\\'ll see the oil pool"), "state": 1, "wait": 1},
\t\t{"audio": "tut7.ogg", "clear": true, "message": _("Left click the flashing build icon"), "state": 2, "wait": 4},
\t];
}
"""


def _ogg(seconds: float, rate: int = 11025) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def _wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.full(int(seconds * rate), 0.1, dtype=np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture
def warzone(tmp_path, monkeypatch) -> Path:
    """A base.wz in the real file's layout whose script is accepted as the checked one."""
    path = tmp_path / "base.wz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("script/tutorial.js", FAKE_JS)
        for name, seconds in (("tut1", 0.5), ("tut2", 0.4), ("tut3", 0.3), ("tut4", 0.3), ("tut7", 0.6)):
            z.writestr(f"audio/tutorial/{name}.ogg", _ogg(seconds))
    monkeypatch.setattr(rs, "WARZONE_SCRIPT_SHA256", hashlib.sha256(FAKE_JS.encode()).hexdigest())
    return path


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_transcript_spells_out_simple_numbers_and_drops_ambiguous_ones():
    assert rs.transcript("The delivery point is number 1.") == (
        "the delivery point is number one",
        "spelled out: 1",
    )
    assert rs.transcript("Don't stop, Commander!") == ("don't stop commander", "")
    for text in ("Back in 1999", "It costs 3.5 units", "The 21st mission", "the new unit(s)", "!!!"):
        norm, reason = rs.transcript(text)
        assert norm is None and reason, text


def test_parse_tutorial_js_pairs_files_with_lines():
    pairs = rs.parse_tutorial_js(FAKE_JS)
    assert pairs[0] == ("tut1.ogg", "Build 2 trucks, then left click")
    assert pairs[2] == ("tut3.ogg", None)
    assert pairs[3] == ("tut4.ogg", "You'll see the oil pool")
    assert [p[0] for p in pairs] == ["tut1.ogg", "tut2.ogg", "tut3.ogg", "tut4.ogg", "tut7.ogg"]


def test_parse_stm():
    segs = rs.parse_stm(
        ";; comment\nsample 1 Diane 6.68 7.16 Hello?\n\nsample 1 Sheila 7.634 8.155 <o,f0,female> Oh, hi.\n"
    )
    assert segs == [
        {"file": "sample", "speaker": "Diane", "begin": 6.68, "end": 7.16, "text": "Hello?"},
        {"file": "sample", "speaker": "Sheila", "begin": 7.634, "end": 8.155, "text": "Oh, hi."},
    ]
    with pytest.raises(ValueError, match="line 1"):
        rs.parse_stm("sample 1 Diane 7.0 6.0 backwards")


def test_build_from_fake_warzone(tmp_path, warzone):
    summary = rs.build_realspeech(tmp_path / "ood", tmp_path / "cache", fetch=False, warzone=warzone)
    utts = load_manifest(tmp_path / "ood" / "ood.jsonl")
    assert [u.id for u in utts] == ["warzone-tut1", "warzone-tut7"]
    assert utts[0].text == "build two trucks then left click"  # the "2" spelled out, and counted
    assert summary["spelled_out"] == {"warzone-tut1": "spelled out: 2"}
    assert utts[1].text == "left click the flashing build icon" and utts[1].speaker == "warzone-narrator"
    info = sf.info(utts[0].audio)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert utts[0].duration == pytest.approx(0.5, abs=0.01)
    reasons = {d["id"]: d["reason"] for d in summary["dropped"]}
    assert "parentheses" in reasons["warzone-tut2"]
    assert "undefined" in reasons["warzone-tut3"]
    assert "narration" in reasons["warzone-tut4"]  # listed in WARZONE_NARRATION_DIFFERS
    wz = summary["sources"]["warzone2100"]
    assert (wz["utterances"], wz["words"], wz["dropped"]) == (2, 12, 3)
    assert wz["chars"] == len(utts[0].text) + len(utts[1].text)


def test_missing_sources_are_skipped_with_a_message_and_counted(tmp_path, capsys):
    summary = rs.build_realspeech(tmp_path / "ood", tmp_path / "cache", fetch=False, warzone=tmp_path / "no.wz")
    assert summary["total"]["skipped_sources"] == 5 and summary["total"]["utterances"] == 0
    assert "apt-get install warzone2100-data" in summary["skipped"]["warzone2100"]
    assert "pysptk-1.0.1.tar.gz" in summary["skipped"]["pysptk"]
    assert summary["sources"]["pysptk"]["status"] == "skipped"
    table = rs.format_table(summary)
    assert "skipped pyannote-audio:" in table and "5 sources skipped" in table


def test_another_tutorial_script_is_not_trusted(tmp_path, warzone, monkeypatch):
    monkeypatch.setattr(rs, "WARZONE_SCRIPT_SHA256", "0" * 64)
    summary = rs.build_realspeech(tmp_path / "ood", tmp_path / "cache", fetch=False, warzone=warzone)
    assert "not the checked" in summary["skipped"]["warzone2100"]


def test_rebuild_with_the_same_inputs_is_a_no_op(tmp_path, warzone):
    out = tmp_path / "ood"
    first = rs.build_realspeech(out, tmp_path / "cache", fetch=False, warzone=warzone)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    second = rs.build_realspeech(out, tmp_path / "cache", fetch=False, warzone=warzone)
    assert not first["unchanged"] and second["unchanged"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    (out / "wavs" / "warzone-tut1.wav").unlink()  # a damaged output is rebuilt, not trusted
    assert not rs.build_realspeech(out, tmp_path / "cache", fetch=False, warzone=warzone)["unchanged"]
    assert (out / "wavs" / "warzone-tut1.wav").is_file()


def test_output_that_is_an_input_is_refused(tmp_path, warzone):
    with pytest.raises(ValueError, match="input"):
        rs.build_realspeech(tmp_path / "cache", tmp_path / "cache", fetch=False, warzone=warzone)


def test_read_members_extracts_only_the_named_wav(tmp_path):
    archive = _tar(tmp_path / "pkg-1.0.tar.gz", {"pkg-1.0/data/a.wav": _wav(0.2), "pkg-1.0/setup.py": b"x"})
    got = rs.read_members(archive, ["pkg-1.0/data/a.wav"])
    assert list(got) == ["pkg-1.0/data/a.wav"] and sf.info(io.BytesIO(got["pkg-1.0/data/a.wav"])).frames == 3200
    assert not list(tmp_path.glob("pkg-1.0*/"))  # nothing was written to disk
    with pytest.raises(rs.SourceError, match="no regular file"):
        rs.read_members(archive, ["pkg-1.0/data/b.wav"])


@pytest.mark.parametrize("bad", ["../evil.wav", "pkg/../../evil.wav", "/etc/evil.wav"])
def test_archives_with_unsafe_member_names_are_refused(tmp_path, bad):
    archive = _tar(tmp_path / "evil.tar.gz", {"pkg/a.wav": _wav(0.1), bad: b"x"})
    with pytest.raises(rs.SourceError, match="unsafe"):
        rs.read_members(archive, ["pkg/a.wav"])
    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkg/a.wav", _wav(0.1))
        z.writestr(bad, b"x")
    with pytest.raises(rs.SourceError, match="unsafe"):
        rs.read_members(wheel, ["pkg/a.wav"])


def _fake_index(monkeypatch, payload: bytes, pin: rs.Pinned):
    """One pinned file served by a fake simple index: ``(requested URLs, opener)``."""
    monkeypatch.setattr(rs, "PINNED", {"fake": pin})
    monkeypatch.setattr(rs, "index_urls", lambda: ["https://index.invalid/simple"])
    calls: list[str] = []
    page = f'<html><body><a href="../../files/{pin.filename}#sha256={pin.sha256}">{pin.filename}</a></body></html>'

    def opener(url: str) -> bytes:
        calls.append(url)
        return page.encode() if url.endswith("/fake-pkg/") else payload

    return calls, opener


def test_fetch_verifies_size_and_sha256_and_reuses_the_cache(tmp_path, monkeypatch):
    data = b"pretend this is an sdist"
    pin = rs.Pinned("fake_pkg", "1.0", "fake_pkg-1.0.tar.gz", len(data), hashlib.sha256(data).hexdigest())
    calls, opener = _fake_index(monkeypatch, data, pin)
    assert rs.fetch_sources(tmp_path, opener=opener)["fake"]["status"] == "fetched"
    assert calls[-1] == "https://index.invalid/files/fake_pkg-1.0.tar.gz"
    n = len(calls)
    assert rs.fetch_sources(tmp_path, opener=opener)["fake"]["status"] == "cached" and len(calls) == n
    (tmp_path / pin.filename).write_bytes(b"X" * len(data))  # same size, other bytes: refetched
    assert rs.fetch_sources(tmp_path, opener=opener)["fake"]["status"] == "fetched"
    assert (tmp_path / pin.filename).read_bytes() == data


def test_fetch_refuses_a_sha256_mismatch(tmp_path, monkeypatch):
    data = b"the real bytes"
    pin = rs.Pinned("fake_pkg", "1.0", "fake_pkg-1.0.tar.gz", len(data), hashlib.sha256(data).hexdigest())
    _, opener = _fake_index(monkeypatch, b"the evil bytes", pin)
    state = rs.fetch_sources(tmp_path, opener=opener)["fake"]
    assert state["status"] == "failed" and "sha256" in state["reason"]
    assert not (tmp_path / pin.filename).exists()
    (tmp_path / pin.filename).write_bytes(b"the evil bytes")
    state = rs.fetch_sources(tmp_path, download=False)["fake"]
    assert state["status"] == "missing" and "sha256" in state["reason"]


def test_pyannote_segments_are_cut_by_stm_time(tmp_path):
    wheel = tmp_path / "pyannote.whl"
    stm = "sample 1 Diane 0.5 1.0 Hello?\nsample 1 Sheila 1.25 2.0 Oh, hi.\n"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(rs.PYANNOTE_WAV, _wav(3.0))
        z.writestr(rs.PYANNOTE_STM, stm)
    items = rs.pyannote_items(wheel)
    assert [(i.id, i.speaker, len(i.wave)) for i in items] == [
        ("pyannote-sample-01", "pyannote-diane", 8000),
        ("pyannote-sample-02", "pyannote-sheila", 12000),
    ]


def test_cli_realspeech(tmp_path, warzone, monkeypatch, capsys):
    monkeypatch.setattr(rs, "WARZONE_PATH", warzone)
    out, cache = tmp_path / "ood", tmp_path / "cache"
    assert cli(["prepare", "realspeech", str(out), "--cache", str(cache), "--no-fetch"]) == 0
    printed = capsys.readouterr().out
    assert "warzone2100" in printed and "skipped pysptk" in printed and (out / "ood.json").is_file()
    assert cli(["prepare", "realspeech", str(out), "--cache", str(cache), "--no-fetch"]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert cli(["prepare", "realspeech", str(out), str(tmp_path / "x.jsonl"), "--no-fetch"]) == 2
    assert cli(["prepare", "folder", str(tmp_path)]) == 2
    assert cli(["prepare", "realspeech", str(cache), "--cache", str(cache), "--no-fetch"]) == 1
    assert "input" in capsys.readouterr().err


@pytest.mark.skipif(not rs.WARZONE_PATH.exists(), reason="Debian package warzone2100-data not installed")
def test_installed_warzone_package(tmp_path):
    with zipfile.ZipFile(rs.WARZONE_PATH) as z:
        pairs = rs.parse_tutorial_js(z.read(rs.WARZONE_SCRIPT).decode())
        lined = [name for name, line in pairs if line is not None]
        seconds = sum(sf.info(io.BytesIO(z.read(rs.WARZONE_AUDIO_DIR + n))).duration for n in lined)
    assert len(pairs) == 47 and len(lined) == 42 and seconds == pytest.approx(117, abs=2)
    summary = rs.build_realspeech(tmp_path / "ood", tmp_path / "cache", fetch=False)
    wz = summary["sources"]["warzone2100"]
    assert wz["status"] == "ok" and wz["utterances"] == 42 - len(rs.WARZONE_NARRATION_DIFFERS) == 20
    assert wz["seconds"] == pytest.approx(59.2, abs=0.5)
