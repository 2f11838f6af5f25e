"""WER/CER scoring (asrkd.eval.scoring, ``asrkd wer``), checked against NIST sclite."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import rapidfuzz

from asrkd.cli import main as asrkd_main
from asrkd.eval.scoring import (
    Counts,
    TextNormalizer,
    align,
    error_rate,
    read_kaldi_text,
    read_manifest_texts,
    read_texts,
    score,
)


def _sclite_command() -> list[str] | None:
    """sclite on PATH, or through Debian's ``sctk`` wrapper (package sctk), or its libexec path."""
    if shutil.which("sclite"):
        return ["sclite"]
    if shutil.which("sctk"):
        return ["sctk", "sclite"]
    libexec = Path("/usr/lib/sctk/bin/sclite")
    return [str(libexec)] if libexec.exists() else None


SCLITE = _sclite_command()
needs_sclite = pytest.mark.skipif(
    SCLITE is None,
    reason="NIST sclite not found (neither `sclite` nor Debian's `sctk` wrapper on PATH): apt-get install sctk",
)


# --------------------------------------------------------------------------- sclite comparison


def _random_pairs(seed: int, n: int) -> dict[str, tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    vocab = ["a", "b", "c", "the", "The", "cat", "cats", "sat", "on", "mat"]
    pairs: dict[str, tuple[list[str], list[str]]] = {}

    def words(k: int, v: list[str]) -> list[str]:
        return [rng.choice(v) for _ in range(k)]

    for i in range(n):
        v = vocab[: rng.randint(1, len(vocab))]  # small vocabularies -> many repeated words and ties
        ref = words(rng.randint(0, 15), v)
        kind = i % 6
        if kind == 0:
            hyp = []  # empty hypothesis
        elif kind == 1:
            hyp = list(ref)  # insertion-only: the reference with words added
            for _ in range(rng.randint(1, 4)):
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(v))
        elif kind == 2:
            hyp = [w for w in ref if rng.random() < 0.6]  # deletion-only
        elif kind == 3:
            hyp = [w if rng.random() < 0.7 else rng.choice(v) for w in ref]  # mostly right
        else:
            hyp = words(rng.randint(0, 15), v)
        pairs[f"spk-u{i:05d}"] = (ref, hyp)
    # hand-picked cases: empty reference with and without output, both empty, a shifted
    # run where sclite's costs and Levenshtein's disagree on the error count
    pairs["spk-x0001"] = ([], ["a", "b"])
    pairs["spk-x0002"] = ([], [])
    pairs["spk-x0003"] = (["a", "a", "a"], ["a"])
    pairs["spk-x0004"] = ("a b c d p q r".split(), "p q r w x y z".split())
    pairs["spk-x0005"] = ("a b c d p q".split(), "p q w x y z".split())
    return pairs


def _run_sclite(tmp_path: Path, pairs: dict[str, tuple[list[str], list[str]]]) -> tuple[dict, dict]:
    ref_trn, hyp_trn = tmp_path / "ref.trn", tmp_path / "hyp.trn"
    ref_trn.write_text("".join(f"{' '.join(r)} ({u})\n" for u, (r, _) in pairs.items()), encoding="ascii")
    hyp_trn.write_text("".join(f"{' '.join(h)} ({u})\n" for u, (_, h) in pairs.items()), encoding="ascii")
    cmd = SCLITE + ["-s", "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn", "-i", "rm"]
    cmd += ["-o", "sum", "pralign", "stdout", "-f", "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    per_utt = {
        m.group(1): tuple(int(x) for x in m.groups()[1:])
        for m in re.finditer(r"id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)", out)
    }
    summary = re.search(
        r"\| Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out
    )
    assert summary, out[-2000:]
    sents, words, corr, sub, dele, ins, err = summary.groups()
    return per_utt, {"utterances": int(sents), "words": int(words), "err_pct": float(err)}


@needs_sclite
def test_counts_equal_sclite_on_random_pairs(tmp_path):
    pairs = _random_pairs(seed=2024, n=1500)
    per_utt, total = _run_sclite(tmp_path, pairs)
    assert len(per_utt) == len(pairs)

    refs = {u: " ".join(r) for u, (r, _) in pairs.items()}
    hyps = {u: " ".join(h) for u, (_, h) in pairs.items()}
    result = score(refs, hyps, details=True)
    assert result["utterances"] == total["utterances"]
    assert result["words"] == total["words"]
    assert round(result["wer"], 1) == pytest.approx(total["err_pct"], abs=0.051)
    # totals exactly: errors and, since the alignment reproduces sclite's tie-breaking
    # too, each utterance's correct / sub / del / ins
    sc_c, sc_s, sc_d, sc_i = (sum(v[k] for v in per_utt.values()) for k in range(4))
    assert result["errors"] == sc_s + sc_d + sc_i
    assert result["words"] == sc_c + sc_s + sc_d
    assert (result["substitutions"], result["deletions"], result["insertions"]) == (sc_s, sc_d, sc_i)
    for u in result["utts"]:
        c = u["counts"]
        assert (c["correct"], c["substitutions"], c["deletions"], c["insertions"]) == per_utt[u["id"]], u


@needs_sclite
def test_levenshtein_method_never_counts_more_than_sclite(tmp_path):
    pairs = _random_pairs(seed=7, n=400)
    per_utt, _ = _run_sclite(tmp_path, pairs)
    for u, (r, h) in pairs.items():
        lev = Counts.of(align(r, h, method="levenshtein"))
        assert lev.errors == rapidfuzz.distance.Levenshtein.distance(r, h)
        assert lev.errors <= sum(per_utt[u][1:]), u
        assert lev.ref == len(r)


def test_sclite_and_levenshtein_differ_on_a_shifted_run():
    # sclite (sub 4, ins/del 3) deletes and inserts around the shared "p q r" (cost 24)
    # rather than substituting all 7 words (cost 28): 8 errors against Levenshtein's 7.
    ref, hyp = "a b c d p q r".split(), "p q r w x y z".split()
    sc = Counts.of(align(ref, hyp))
    lev = Counts.of(align(ref, hyp, method="levenshtein"))
    assert (sc.correct, sc.substitutions, sc.deletions, sc.insertions) == (3, 0, 4, 4)
    assert (lev.correct, lev.substitutions, lev.deletions, lev.insertions) == (0, 7, 0, 0)
    assert score({"u": " ".join(ref)}, {"u": " ".join(hyp)}, method="levenshtein")["errors"] == 7


def test_alignment_content():
    ali = align("the cat sat on the mat".split(), "the cat sit on mat today".split())
    assert ali == [
        ("C", "the", "the"),
        ("C", "cat", "cat"),
        ("S", "sat", "sit"),
        ("C", "on", "on"),
        ("D", "the", None),
        ("C", "mat", "mat"),
        ("I", None, "today"),
    ]
    assert align([], []) == []
    assert align([], ["x"]) == [("I", None, "x")]
    assert align(["x"], [], method="levenshtein") == [("D", "x", None)]
    with pytest.raises(ValueError, match="method"):
        align(["a"], ["a"], method="dtw")


# --------------------------------------------------------------------------- scoring rules


def test_missing_and_extra_hypotheses():
    refs = {"u1": "a b c", "u2": "d e", "u3": "f"}
    hyps = {"u1": "a b c", "u3": "g", "u9": "stray words"}
    r = score(refs, hyps)
    assert r["utterances"] == 3
    assert r["words"] == 6
    assert (r["deletions"], r["substitutions"], r["insertions"]) == (2, 1, 0)  # u2 all deleted
    assert r["errors"] == 3 and r["wer"] == pytest.approx(50.0)
    assert r["missing_hyp"] == 1 and r["missing_hyp_ids"] == ["u2"]
    assert r["extra_hyp"] == 1 and r["extra_hyp_ids"] == ["u9"]
    assert r["sentence_errors"] == 2 and r["ser"] == pytest.approx(200 / 3)
    # a hypothesis present but None (e.g. an unlabelled manifest entry) counts as missing
    assert score(refs, {**hyps, "u2": None})["missing_hyp_ids"] == ["u2"]


def test_unlabelled_references_are_skipped_and_counted():
    r = score({"u1": "a b", "u2": None}, {"u1": "a b", "u2": "x"})
    assert r["utterances"] == 1 and r["words"] == 2 and r["errors"] == 0
    assert r["unlabelled_ref"] == 1 and r["unlabelled_ref_ids"] == ["u2"]
    assert r["extra_hyp"] == 0


def test_empty_reference_set_does_not_divide_by_zero():
    assert score({}, {})["wer"] == 0.0
    r = score({"u1": "", "u2": ""}, {"u1": "", "u2": ""})
    assert (r["words"], r["errors"], r["wer"], r["cer"]) == (0, 0, 0.0, 0.0)
    r = score({"u1": "", "u2": ""}, {"u1": "hello there"})
    assert (r["words"], r["errors"], r["insertions"], r["wer"]) == (0, 2, 2, 100.0)
    assert error_rate(0, 0) == 0.0 and error_rate(3, 0) == 100.0 and error_rate(1, 4) == 25.0


def test_cer_counts_characters_with_word_spaces():
    r = score({"u": "ab cd"}, {"u": "abcd"})
    cd = r["cer_details"]
    assert (cd["chars"], cd["errors"], cd["deletions"]) == (5, 1, 1)
    assert r["cer"] == pytest.approx(20.0)
    assert r["wer"] == pytest.approx(100.0)  # 1 sub + 1 del over 2 words


def test_normalisation_options():
    n = TextNormalizer()
    assert n.words("  Hello,   World!  ") == ["Hello,", "World!"]
    n = TextNormalizer(lowercase=True, strip_punct=True)
    assert n("Don't STOP—well-known, \u201cquoted\u201d words.") == "dont stop well known quoted words"
    n = TextNormalizer(lowercase=True, strip_punct=True, keep_apostrophes=True)
    assert n("Don\u2019t stop: it's O'Brien's") == "don't stop it's o'brien's"
    n = TextNormalizer(ignore={"<unk>", "[noise]"})
    assert n("a <unk> b [noise]") == "a b"
    assert TextNormalizer(unicode="NFKC")("\ufb01ne") == "fine"
    with pytest.raises(ValueError, match="normal form"):
        TextNormalizer(unicode="NFD")
    refs, hyps = {"u": "The cat, sat."}, {"u": "the cat sat"}
    assert score(refs, hyps)["errors"] == 3
    assert score(refs, hyps, normalizer=TextNormalizer(lowercase=True, strip_punct=True))["errors"] == 0


# --------------------------------------------------------------------------- readers


def test_read_kaldi_text(tmp_path):
    p = tmp_path / "text"
    p.write_text("u1 hello  world\n\nu2\nu3\tTab separated \r\n", encoding="utf-8")
    assert read_kaldi_text(p) == {"u1": "hello  world", "u2": "", "u3": "Tab separated"}
    p.write_text("u1 a\nu2 b\nu1 c\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"text:3: duplicate utterance id 'u1' \(first on line 1\)"):
        read_kaldi_text(p)


def test_read_manifest_texts(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"id": "u1", "audio": "a.wav", "duration": 1.0, "text": "hi there"}\n'
        '{"id": "u2", "audio": "b.wav", "duration": 2.0}\n',
        encoding="utf-8",
    )
    assert read_manifest_texts(p) == {"u1": "hi there", "u2": None}
    assert read_texts(p) == {"u1": "hi there", "u2": None}
    # detected by content whatever the name
    q = tmp_path / "hyp.txt"
    q.write_text('{"id": "u1", "text": "hi"}\n', encoding="utf-8")
    assert read_texts(q) == {"u1": "hi"}
    for line, match in [
        ("{not json\n", r"m.jsonl:1: invalid JSON"),
        ('{"text": "x"}\n', "missing or non-string 'id'"),
        ('{"id": "u1", "text": 5}\n', "'text' of 'u1' is int"),
        ('{"id": "u1"}\n{"id": "u1"}\n', r"m.jsonl:2: duplicate utterance id"),
        ("[1]\n", "expected a JSON object"),
    ]:
        p.write_text(line, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            read_manifest_texts(p)


# --------------------------------------------------------------------------- CLI


def test_cli_output_json_and_details(tmp_path, capsys):
    ref = tmp_path / "ref.txt"
    hyp = tmp_path / "hyp.txt"
    ref.write_text("u1 The cat, sat!\nu2 hello world\nu3 a b c d\nu4\n", encoding="utf-8")
    hyp.write_text("u1 the cat sit\nu3 a x c d e\nu4 oops\nu9 extra\n", encoding="utf-8")
    out_json, details = tmp_path / "wer.json", tmp_path / "details.txt"
    rc = asrkd_main(
        [
            "wer",
            "--ref",
            str(ref),
            "--hyp",
            str(hyp),
            "--json",
            str(out_json),
            "--details",
            str(details),
            "--lowercase",
            "--strip-punct",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "%WER 66.67 [ 6 / 9, 2 ins, 2 del, 2 sub ]"
    assert re.fullmatch(r"%CER \d+\.\d\d \[ \d+ / 29, \d+ ins, \d+ del, \d+ sub \]", lines[1])
    assert lines[2] == "%SER 100.00 [ 4 / 4 ]"
    assert lines[3] == "Scored 4 sentences, 1 not present in hyp (scored as deletions): u2."
    assert lines[4] == "1 hypothesis has no reference and was ignored: u9."

    data = json.loads(out_json.read_text())
    for key in [
        "wer",
        "cer",
        "words",
        "errors",
        "insertions",
        "deletions",
        "substitutions",
        "utterances",
        "missing_hyp",
        "missing_hyp_ids",
        "extra_hyp",
        "extra_hyp_ids",
        "cer_details",
    ]:
        assert key in data, key
    assert (data["words"], data["errors"], data["utterances"], data["missing_hyp"]) == (9, 6, 4, 1)
    assert data["wer"] == pytest.approx(600 / 9)
    assert data["normalization"]["lowercase"] is True

    text = details.read_text(encoding="utf-8").splitlines()
    assert "u1 ref  the cat sat" in text
    assert "u1 hyp  the cat sit" in text
    assert "u1 op   C   C   S" in text
    assert "u1 #csid 2 1 0 0" in text
    assert "u2 hyp  ***   ***" in text and "u2 #csid 0 0 0 2" in text
    assert any(line.startswith("u2 missing") for line in text)
    assert "u3 op   C S C C I" in text


def test_cli_manifest_inputs_and_errors(tmp_path, capsys):
    ref = tmp_path / "test.jsonl"
    ref.write_text(
        '{"id": "a", "audio": "a.wav", "duration": 1, "text": "one two"}\n'
        '{"id": "b", "audio": "b.wav", "duration": 1}\n',
        encoding="utf-8",
    )
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a one too\nb whatever\n", encoding="utf-8")
    assert asrkd_main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("%WER 50.00 [ 1 / 2, 0 ins, 0 del, 1 sub ]\n")
    assert "1 reference has no text and was skipped: b." in out

    assert asrkd_main(["wer", "--ref", str(tmp_path / "nope.txt"), "--hyp", str(hyp)]) == 1
    assert "nope.txt" in capsys.readouterr().err
    assert asrkd_main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--keep-apostrophes"]) == 2
    assert "--strip-punct" in capsys.readouterr().err


# --------------------------------------------------------------------------- degenerate and hostile input


def _wer(tmp_path, capsys, ref_text: bytes | str, hyp_text: bytes | str, *extra: str):
    """Run ``asrkd wer`` on two files; (exit code, stdout, stderr)."""
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    for p, t in ((ref, ref_text), (hyp, hyp_text)):
        p.write_bytes(t if isinstance(t, bytes) else t.encode("utf-8"))
    rc = asrkd_main(["wer", "--ref", str(ref), "--hyp", str(hyp), *extra])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_utf8_bom_is_not_part_of_the_first_id(tmp_path, capsys):
    bom = b"\xef\xbb\xbf"
    for ref_bom, hyp_bom in ((bom, b""), (b"", bom)):
        rc, out, _ = _wer(tmp_path, capsys, ref_bom + b"u1 a b\nu2 c\n", hyp_bom + b"u1 a b\nu2 c\n")
        assert rc == 0 and out.startswith("%WER 0.00 [ 0 / 3,"), out
    p = tmp_path / "text"
    # files joined with `cat` keep each part's BOM at the start of a later line
    p.write_bytes(bom + b"u1 a\n" + bom + b"u2 b\n")
    assert read_kaldi_text(p) == {"u1": "a", "u2": "b"}
    p.write_bytes(bom + b'{"id": "u1", "text": "hi"}\n')
    assert read_texts(p) == {"u1": "hi"}  # detected as a manifest despite the BOM and the name
    assert read_manifest_texts(p) == {"u1": "hi"}


def test_reference_without_utterances_or_words_is_an_error(tmp_path, capsys):
    for ref_text in ("", "\n  \n"):
        rc, _, err = _wer(tmp_path, capsys, ref_text, "u1 a b\n")
        assert rc == 1 and f"no reference utterances in {tmp_path / 'ref.txt'}" in err, err
    rc, _, err = _wer(tmp_path, capsys, "u1\nu2\n", "u1 a\n")
    assert rc == 1 and "no reference words in" in err and "ref.txt" in err, err
    # every word dropped by the normalisation is the same degenerate case
    rc, _, err = _wer(tmp_path, capsys, "u1 <unk>\n", "u1 a\n", "--ignore", "<unk>")
    assert rc == 1 and "no reference words in" in err, err
    m = tmp_path / "ref.jsonl"
    m.write_text('{"id": "u1", "audio": "a.wav"}\n', encoding="utf-8")
    rc = asrkd_main(["wer", "--ref", str(m), "--hyp", str(tmp_path / "hyp.txt")])
    err = capsys.readouterr().err
    assert rc == 1 and "no labelled reference utterances in" in err and "ref.jsonl" in err, err


def test_hypotheses_sharing_no_id_with_the_references_are_reported_loudly(tmp_path, capsys):
    r = score({"u1": "a b", "u2": "c"}, {"x1": "a b"})
    assert r["wer"] == 100.0 and r["missing_hyp"] == 2  # the contract: every reference missing
    assert len(r["warnings"]) == 1 and "none of the 2 references has a hypothesis" in r["warnings"][0]
    assert score({"u1": "a"}, {"u1": "a"})["warnings"] == []
    out_json = tmp_path / "wer.json"
    rc, out, err = _wer(tmp_path, capsys, "u1 a b\nu2 c\n", "x1 a b\n", "--json", str(out_json))
    assert rc == 0 and out.startswith("%WER 100.00 [ 3 / 3, 0 ins, 3 del, 0 sub ]")
    assert "warning: none of the 2 references has a hypothesis" in err, err
    assert json.loads(out_json.read_text())["warnings"] == r["warnings"]
    rc, _, err = _wer(tmp_path, capsys, "u1 a b\n", "")  # an empty hypothesis file too
    assert rc == 0 and "warning: none of the 1 references has a hypothesis" in err, err


def test_non_utf8_line_is_an_error_naming_file_and_line(tmp_path, capsys):
    p = tmp_path / "text"
    p.write_bytes(b"u1 ok\nu2 caf\xe9\n")
    with pytest.raises(ValueError, match=r"text:2: not valid UTF-8 \(byte 0xe9 at column 7\)"):
        read_kaldi_text(p)
    m = tmp_path / "m.jsonl"
    m.write_bytes(b'{"id": "u1", "text": "a"}\n\n{"id": "u2", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:3: not valid UTF-8"):
        read_manifest_texts(m)
    rc, _, err = _wer(tmp_path, capsys, "u1 a\n", b"u1 \xff\xfe\n")
    assert rc == 1 and "hyp.txt:1: not valid UTF-8" in err, err
    rc, _, err = _wer(tmp_path, capsys, b"\xff\xfeu\x001\x00", "u1 a\n")  # UTF-16 on the first line
    assert rc == 1 and "ref.txt:1: not valid UTF-8" in err, err


def test_levenshtein_handles_empty_sides_with_a_jiwer_that_rejects_empty_strings(monkeypatch):
    jiwer = pytest.importorskip("jiwer")
    real = jiwer.process_words

    def strict(reference, hypothesis, *a, **k):  # jiwer 3.x, allowed by the pin, raises on ""
        if reference == "" or hypothesis == "":
            raise ValueError("one or more references are empty strings")
        return real(reference, hypothesis, *a, **k)

    monkeypatch.setattr(jiwer, "process_words", strict)
    assert align([], [], method="levenshtein") == []
    assert align([], ["x", "y"], method="levenshtein") == [("I", None, "x"), ("I", None, "y")]
    assert align(["x"], [], method="levenshtein") == [("D", "x", None)]
    assert align(["a", "b"], ["a", "c"], method="levenshtein") == [("C", "a", "a"), ("S", "b", "c")]
    r = score({"u1": "", "u2": "a b"}, {"u1": "oops", "u3": "z"}, method="levenshtein")
    assert (r["insertions"], r["deletions"], r["missing_hyp"]) == (1, 2, 1)


def test_cli_outputs_are_written_atomically(tmp_path, capsys):
    # An output hard-linked to another file: an in-place write changes both; a write to a
    # temporary renamed over the path (atomic_write) leaves the other link alone.
    out_json, details = tmp_path / "wer.json", tmp_path / "details.txt"
    keep_json, keep_details = tmp_path / "keep.json", tmp_path / "keep.txt"
    for keep, out in ((keep_json, out_json), (keep_details, details)):
        keep.write_text("OLD", encoding="utf-8")
        out.hardlink_to(keep)
    rc, _, _ = _wer(tmp_path, capsys, "u1 a\n", "u1 b\n", "--json", str(out_json), "--details", str(details))
    assert rc == 0
    assert keep_json.read_text() == "OLD" and keep_details.read_text() == "OLD"
    assert json.loads(out_json.read_text())["errors"] == 1
    assert "u1 op   S" in details.read_text()


def test_write_details_failure_leaves_the_old_file(tmp_path):
    from asrkd.eval.scoring import write_details

    p = tmp_path / "details.txt"
    p.write_text("OLD\n", encoding="utf-8")
    good = score({"u1": "a"}, {"u1": "a"}, details=True)
    broken = {**good, "utts": good["utts"] + [{"id": "u2"}]}  # fails after u1 is written
    with pytest.raises(KeyError):
        write_details(p, broken)
    assert p.read_text() == "OLD\n"
    assert [f.name for f in tmp_path.iterdir()] == ["details.txt"]


def test_cli_refuses_an_output_that_is_an_input(tmp_path, capsys):
    for flag, victim in (("--json", "ref.txt"), ("--details", "hyp.txt")):
        rc, _, err = _wer(tmp_path, capsys, "u1 a\n", "u1 a\n", flag, str(tmp_path / victim))
        assert rc == 1 and flag in err and ("--ref" if victim == "ref.txt" else "--hyp") in err, err
        assert (tmp_path / victim).read_text() == "u1 a\n"
    rc, _, err = _wer(
        tmp_path, capsys, "u1 a\n", "u1 a\n", "--json", str(tmp_path / "o"), "--details", str(tmp_path / "o")
    )
    assert rc == 1 and "--json and --details are the same path" in err, err
