from __future__ import annotations

import json
import pickle

import pytest

from asrkd.data.manifest import (
    ManifestError,
    Utterance,
    filter_by_duration,
    load_manifest,
    manifest_stats,
    merge_manifests,
    save_manifest,
    split_manifest,
)
from asrkd.data.rejects import KINDS, Rejects


def _utt(i, **kw):
    d = {"id": f"u{i}", "audio": f"/a/{i}.wav", "duration": 1.0 + i}
    d.update(kw)
    return Utterance(**d)


def test_round_trip_keeps_every_field(tmp_path):
    utts = [_utt(0, text="hello world", speaker="s1"), _utt(1), _utt(2, offset=3.25, text="x", extra={"lang": "en"})]
    path = tmp_path / "m.jsonl"
    save_manifest(path, utts)
    back = load_manifest(path)
    assert back == utts
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert "text" not in lines[1] and "offset" not in lines[1]  # unlabelled whole-file entry
    assert lines[2]["lang"] == "en" and lines[2]["offset"] == 3.25
    assert not back[1].has_text and back[0].has_text


def test_relative_audio_paths_are_relative_to_the_manifest(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "audio": "wavs/a.wav", "duration": 1}) + "\n")
    (u,) = load_manifest(path)
    assert u.audio == str(tmp_path / "sub" / "wavs" / "a.wav")
    save_manifest(tmp_path / "sub" / "rel.jsonl", [u], relative_to=tmp_path / "sub")
    assert json.loads((tmp_path / "sub" / "rel.jsonl").read_text())["audio"] == "wavs/a.wav"


def test_bad_lines_are_counted_with_reasons(tmp_path):
    good = {"id": "ok", "audio": "/x.wav", "duration": 1.5, "text": "fine"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": "nodur", "audio": "/x.wav"}),
        json.dumps({"id": "strdur", "audio": "/x.wav", "duration": "long"}),
        json.dumps({"id": "zero", "audio": "/x.wav", "duration": 0}),
        json.dumps({"id": "nan", "audio": "/x.wav", "duration": float("nan")}),
        json.dumps({"id": "empty", "audio": "/x.wav", "duration": 1, "text": ""}),
        json.dumps({"id": "blank", "audio": "/x.wav", "duration": 1, "text": " \t "}),
        json.dumps({"id": "has space", "audio": "/x.wav", "duration": 1}),
        json.dumps({"id": "neg", "audio": "/x.wav", "duration": 1, "offset": -1}),
        "",
        json.dumps(good),  # duplicate id
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rejects = Rejects()
    utts = load_manifest(path, rejects)
    assert [u.id for u in utts] == ["ok"]
    assert rejects.counts() == {
        "malformed_line": 2,
        "bad_field": 5,
        "duplicate_id": 1,
        "empty_audio": 1,
        "empty_text": 2,
    }
    reasons = {r.id: r.reason for r in rejects}
    assert reasons[f"{path}:2"].endswith(
        "m.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    assert "expected a JSON object" in reasons[f"{path}:3"]
    assert "missing field(s) duration" in reasons["nodur"]
    assert "whitespace-only" in reasons["blank"]
    assert "duplicate id ok" in reasons["ok"]
    # Without a Rejects the first bad line raises, naming file and line.
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not valid JSON"):
        load_manifest(path)


def test_filter_split_merge(tmp_path):
    utts = [_utt(i, speaker=f"s{i % 5}") for i in range(40)]
    rejects = Rejects()
    kept = filter_by_duration(utts, min_duration=3.0, max_duration=30.0, rejects=rejects)
    assert [u.id for u in kept] == [f"u{i}" for i in range(2, 30)]
    assert rejects.counts() == {"too_short": 2, "too_long": 10}

    parts = split_manifest(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    assert sorted(u.id for p in parts.values() for u in p) == sorted(u.id for u in utts)
    assert [len(parts[k]) for k in ("train", "dev", "test")] == [32, 4, 4]
    assert parts == split_manifest(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    assert parts != split_manifest(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=4)

    by_spk = split_manifest(utts, {"train": 0.6, "test": 0.4}, seed=0, by_speaker=True)
    train_spk = {u.speaker for u in by_spk["train"]}
    test_spk = {u.speaker for u in by_spk["test"]}
    assert train_spk and test_spk and not train_spk & test_spk
    assert len(by_spk["train"]) + len(by_spk["test"]) == 40
    with pytest.raises(ValueError):
        split_manifest(utts, {"train": 0.5})

    merged_rejects = Rejects()
    merged = merge_manifests(utts[:10], utts[5:15], rejects=merged_rejects)
    assert [u.id for u in merged] == [f"u{i}" for i in range(15)]
    assert merged_rejects.counts() == {"duplicate_id": 5}
    with pytest.raises(ManifestError):
        merge_manifests(utts[:2], utts[:1])
    stats = manifest_stats(utts[:3] + [_utt(9, text="a b")])
    assert stats["utterances"] == 4 and stats["labelled"] == 1 and stats["unlabelled"] == 3


def test_rejects_counter(tmp_path):
    r = Rejects()
    assert r.add("a", "missing_file", "a: gone")
    assert not r.add("a", "missing_file", "a: gone again")  # the same item skipped every epoch counts once
    r.add("b", "missing_file", "b: gone")
    r.add("c", "nan_audio", "c: NaN")
    with pytest.raises(ValueError):
        r.add("d", "no_such_kind", "?")
    assert r.counts() == {"missing_file": 2, "nan_audio": 1} and len(r) == 3
    table = r.summary(max_ids=1)
    assert "missing_file" in table and "a, ..." in table and "total" in table
    assert Rejects().summary() == "rejected: none"
    r.write_report(tmp_path / "rep.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "rep.jsonl").read_text().splitlines()]
    assert rows[0] == {"id": "a", "kind": "missing_file", "reason": "a: gone"}
    clone = pickle.loads(pickle.dumps(r))
    assert clone.counts() == r.counts()
    other = Rejects()
    other.add("z", "oov_chars", "z: ß")
    assert r.merge(other) == 1 and r.counts()["oov_chars"] == 1
    assert set(KINDS) >= set(r.counts())


def test_a_non_utf8_line_is_a_counted_malformed_line(tmp_path):
    rows = [json.dumps({"id": f"u{i}", "audio": "/x.wav", "duration": 1.0, "text": "fine"}).encode() for i in range(3)]
    rows[1] = rows[1].replace(b"fine", b"caf\xe9")  # Latin-1, not UTF-8
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(rows) + b"\n")  # a BOM before the first line is no error
    rejects = Rejects()
    assert [u.id for u in load_manifest(path, rejects)] == ["u0", "u2"]
    assert rejects.counts() == {"malformed_line": 1}
    (rec,) = rejects.records
    assert rec.id == f"{path}:2" and "not UTF-8" in rec.reason and "0xe9 at column 62" in rec.reason, rec
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not UTF-8"):
        load_manifest(path)


@pytest.mark.parametrize("field, value", [("duration", 1e308), ("duration", 86400.5), ("offset", 1e308)])
def test_an_absurd_duration_or_offset_is_a_bad_field_naming_the_id(tmp_path, field, value):
    """A duration of 1e308 used to pass validation and crash training with 'cannot convert float
    infinity to integer' when the dataset turned it into samples."""
    row = {"id": "huge", "audio": "/a/x.wav", "duration": 2.0, field: value}
    with pytest.raises(ManifestError, match="huge") as err:
        Utterance.from_dict(row)
    assert err.value.kind == "bad_field" and field in str(err.value)
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"id": "ok", "audio": "/a/y.wav", "duration": 86400}) + "\n")
    rejects = Rejects()
    assert [u.id for u in load_manifest(path, rejects)] == ["ok"]  # exactly 24 h is still allowed
    assert rejects.counts() == {"bad_field": 1} and rejects.ids("bad_field") == ["huge"]
    assert f"{path}:1" in rejects.records[0].reason
