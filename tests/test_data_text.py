"""The one text normaliser and the one symbol rule (asrkd.data.text), and their users."""

from __future__ import annotations

import json

import pytest

from asrkd.cli import main as asrkd_main
from asrkd.data.text import BLANK_CLASS, canonical_symbol, normalize_text, symbols_to_text
from asrkd.data.tokenizer import CharTokenizer
from asrkd.eval.scoring import TextNormalizer, score


@pytest.mark.parametrize(
    "symbol,canon",
    [
        ("<pad>", BLANK_CLASS),
        ("<blank>", BLANK_CLASS),
        ("<S>", BLANK_CLASS),
        ("_", BLANK_CLASS),
        ("|", " "),
        ("\u2581", " "),
        ("<space>", " "),
        (" ", " "),
        ("\u2019", "'"),
        ("`", "'"),
        ("\u2032", "'"),
        ("'", "'"),
        ("E", "e"),
        ("\u2581the", " the"),
        ("<unk>", "<unk>"),
    ],
)
def test_canonical_symbol(symbol, canon):
    assert canonical_symbol(symbol) == canon


def test_symbols_to_text_drops_blanks_and_specials():
    syms = ["<pad>", "H", "I", "|", "|", "<unk>", "T", "\u2581", "\u2581the", "<s>"]
    assert symbols_to_text(syms) == "HI T the"


def test_every_apostrophe_is_read_alike_by_tokenizer_and_scorer():
    tok = CharTokenizer.english()
    keep = TextNormalizer(strip_punct=True, keep_apostrophes=True)
    for apostrophe in "'\u2019\u2018\u02bc`\u00b4\u2032":
        text = f"don{apostrophe}t"
        assert tok.normalize(text) == normalize_text(text) == "don't"
        assert keep(text) == "don't", apostrophe


def test_normalize_option_applies_the_transcript_normalisation():
    norm = TextNormalizer(normalize=True)
    assert norm.words("Hello, World! 42 Caf\u00e9\u2019s") == ["hello", "world", "forty", "two", "cafe's"]
    assert norm.to_dict()["normalize"] is True
    res = score({"a": "THE 2 CATS."}, {"a": "the two cats"}, normalizer=norm)
    assert res["wer"] == 0.0
    assert score({"a": "THE 2 CATS."}, {"a": "the two cats"})["wer"] == 100.0


def test_wer_command_normalize_flag(tmp_path, capsys):
    ref, hyp, out = tmp_path / "ref.txt", tmp_path / "hyp.txt", tmp_path / "wer.json"
    ref.write_text("u1 Hello, World!\nu2 I have 3 dogs\n")
    hyp.write_text("u1 hello world\nu2 i have three dogs\n")
    assert asrkd_main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--normalize", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["wer"] == 0.0 and result["normalization"]["normalize"] is True
    assert asrkd_main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["wer"] > 0
