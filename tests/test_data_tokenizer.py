from __future__ import annotations

import pytest

from asrkd.data.tokenizer import BLANK, BPETokenizer, CharTokenizer, TokenizerError, load_tokenizer, normalize_text

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "don't stop believing it's o'clock",
    "she sells sea shells by the sea shore",
    "a zebra queued quietly for jam and vexing kiwis",
]


@pytest.mark.parametrize(
    "raw,norm",
    [
        ("Hello, World!", "hello world"),
        ("It\u2019s  time", "it's time"),
        ("'quoted' and the boys' toys", "quoted and the boys toys"),
        ("rock-'n'-roll", "rock n roll"),
        ("42 cats", "forty two cats"),
        ("1,250 km", "one thousand two hundred fifty km"),
        ("3.05", "three point zero five"),
        ("the 21st, 2nd and 100th", "the twenty first second and one hundredth"),
        ("10% & more", "ten percent and more"),
        ("Caf\u00e9 na\u00efve", "cafe naive"),
        ("   \t ", ""),
        ("...", ""),
        ("Stra\u00dfe", "stra\u00dfe"),  # non-decomposable letters are kept (the vocabulary decides)
    ],
)
def test_normalisation(raw, norm):
    assert normalize_text(raw) == norm


def test_char_round_trip_and_layout(tmp_path):
    tok = CharTokenizer.build(SENTENCES)
    assert tok.blank_id == 0 and tok.tokens[0] == BLANK and tok.tokens[1] == " "
    assert tok.tokens == CharTokenizer.english().tokens and len(tok) == 29
    for s in SENTENCES:
        ids = tok.encode(s)
        assert 0 not in ids
        assert tok.decode(ids) == s
    assert tok.decode([0, *tok.encode("ab"), 0]) == "ab"
    assert tok.encode("Hello, World!") == tok.encode("hello world")
    tok.save(tmp_path / "tok.json")
    back = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(back, CharTokenizer) and back == tok
    assert load_tokenizer(tok.to_dict()) == tok


def test_char_vocabulary_from_data_and_oov():
    tok = CharTokenizer.build(["na\u00efve \u00fcber", "stra\u00dfe"], alphabet="")
    assert "\u00df" in tok.tokens and "z" not in tok.tokens
    assert tok.decode(tok.encode("stra\u00dfe")) == "stra\u00dfe"
    eng = CharTokenizer.english()
    assert eng.oov_chars("Stra\u00dfe 7 \u65e5") == ["\u00df", "\u65e5"]
    with pytest.raises(TokenizerError) as err:
        eng.encode("Stra\u00dfe")
    assert err.value.oov == ["\u00df"]
    rare = CharTokenizer.build(["aaa b"], alphabet="", min_count=2)
    assert rare.tokens == [BLANK, " ", "a"]
    with pytest.raises(ValueError):
        CharTokenizer(["a", BLANK])
    with pytest.raises(ValueError):
        load_tokenizer({"type": "words"})


def test_bpe_same_interface(tmp_path):
    texts = SENTENCES * 20
    bpe = BPETokenizer.build(texts, vocab_size=60)
    assert bpe.blank_id == 0 and bpe.tokens[0] == BLANK and len(bpe) == bpe.vocab_size
    for s in SENTENCES:
        ids = bpe.encode(s)
        assert 0 not in ids and bpe.decode(ids) == s
    assert len(bpe.encode(SENTENCES[0])) < len(SENTENCES[0])  # pieces, not characters
    assert bpe.oov_chars("the \u00df") == ["\u00df"]
    with pytest.raises(TokenizerError):
        bpe.encode("\u00df")
    bpe.save(tmp_path / "bpe.json")
    back = load_tokenizer(tmp_path / "bpe.json")
    assert isinstance(back, BPETokenizer) and back == bpe
    assert back.encode(SENTENCES[1]) == bpe.encode(SENTENCES[1])
