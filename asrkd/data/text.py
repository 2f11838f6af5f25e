"""Text and vocabulary symbols, normalised one way for the whole package.

:func:`normalize_text` is the transcript normalisation: the tokenizers apply it to training
text, and ``asrkd wer --normalize`` (:class:`asrkd.eval.scoring.TextNormalizer` with
``normalize=True``) and the trainer's dev evaluation apply it to references and hypotheses
before scoring. Its steps:

1. Unicode NFKC; typographic apostrophes (:data:`APOSTROPHES`: ’ ‘ ʼ ` ´ ′) become ``'``.
2. Lower case.
3. Numbers are written as English words: ``42`` -> ``forty two``, ``1,250`` -> ``one thousand
   two hundred fifty``, ``3.5`` -> ``three point five``, ``21st`` -> ``twenty first``,
   ``%`` -> ``percent``, ``&`` -> ``and``. Digit runs longer than 12 are read digit by digit.
4. Accents on Latin letters are removed (``café`` -> ``cafe``); other scripts are kept.
5. An apostrophe is kept only between two letters (``don't``, ``o'clock``); hyphens, other
   punctuation and symbols become spaces.
6. Runs of whitespace become one space; leading/trailing space is removed.

So English text ends up as lowercase ``a-z``, ``'`` and single spaces.

:func:`canonical_symbol` is the one rule that makes vocabulary symbols of different models
comparable (teacher → student vocabulary maps, text of a model without a tokenizer, emission
matching): every blank name is one class, every word delimiter a space, every apostrophe ``'``,
and letters are case-folded.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

# Typographic forms of the apostrophe; each is read as "'".
APOSTROPHES = frozenset("'\u2019\u2018\u02bc`\u00b4\u2032")
# Names a CTC blank goes by in common vocabularies (wav2vec2/HF use "<pad>"; "<s>" is never
# emitted by a CTC head, and counting it as blank keeps its (tiny) mass in the distribution).
BLANK_NAMES = frozenset({"<blank>", "<pad>", "<s>", "<b>", "<eps>", "<epsilon>", "<ctc_blank>", "_"})
# Word delimiters of common vocabularies ("\u2581": SentencePiece's "▁").
WORD_DELIMITERS = frozenset({"|", " ", "\u2581", "<space>", "<sp>"})
# canonical_symbol of every blank name; cannot collide with a real symbol.
BLANK_CLASS = "\x00blank"

_TO_APOSTROPHE = dict.fromkeys(map(ord, APOSTROPHES - {"'"}), "'")
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(?!\d|,\d)", re.IGNORECASE)


def canonical_symbol(symbol: str) -> str:
    """The name a vocabulary symbol is matched by across models (see the module docstring)."""
    if symbol in BLANK_NAMES or symbol.lower() in BLANK_NAMES:
        return BLANK_CLASS
    if symbol in WORD_DELIMITERS or symbol.lower() in WORD_DELIMITERS:
        return " "
    if symbol in APOSTROPHES:
        return "'"
    return symbol.replace("\u2581", " ").casefold()


def is_special(symbol: str) -> bool:
    """``<unk>``, ``<pad>``, ...: a symbol that is not text."""
    return len(symbol) > 2 and symbol.startswith("<") and symbol.endswith(">")


def symbols_to_text(symbols: Iterable[str]) -> str:
    """The text a sequence of vocabulary symbols spells (a model without a tokenizer; the caller
    has removed the blank): word delimiters become spaces, ``<...>`` specials are dropped,
    whitespace runs become one space; letters keep the model's case."""
    parts = []
    for sym in symbols:
        canon = canonical_symbol(sym)
        if canon == " ":
            parts.append(" ")
        elif not is_special(sym):  # blank names other than "<...>" ("_") are text unless they are the blank
            parts.append(sym.replace("\u2581", " "))
    return " ".join("".join(parts).split())


def normalize_text(text: str) -> str:
    """The transcript normalisation (see the module docstring)."""
    # apostrophes first: NFKC turns "´" into a space and a combining accent
    text = unicodedata.normalize("NFKC", text.translate(_TO_APOSTROPHE)).translate(_TO_APOSTROPHE).lower()
    text = text.replace("%", " percent ").replace("&", " and ")
    text = _NUMBER.sub(_number_to_words, text)
    text = "".join(_strip_latin_accent(c) for c in text)
    out = []
    for i, c in enumerate(text):
        if c.isalpha() or unicodedata.category(c) in ("Mn", "Mc"):
            out.append(c)
        elif c == "'" and 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha():
            out.append(c)
        elif c.isdigit():  # digits of other scripts: keep, the vocabulary check decides
            out.append(c)
        else:
            out.append(" ")
    return " ".join("".join(out).split())


def _int_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _int_words(n % 100))
    for value, name in _SCALES:
        if n >= value:
            rest = n % value
            return _int_words(n // value) + " " + name + ("" if rest == 0 else " " + _int_words(rest))
    raise AssertionError(n)


def _ordinal_words(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def _number_to_words(m: re.Match) -> str:
    digits, frac, suffix = m.group(1).replace(",", ""), m.group(2), m.group(3)
    if len(digits) > 12:
        words = " ".join(_ONES[int(d)] for d in digits)
    else:
        words = _int_words(int(digits))
        if suffix and not frac:
            words = _ordinal_words(words)
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def _strip_latin_accent(ch: str) -> str:
    if ch.isascii():
        return ch
    parts = unicodedata.normalize("NFKD", ch)
    if parts[0].isascii() and parts[0].isalpha() and all(unicodedata.combining(c) for c in parts[1:]):
        return parts[0]
    return ch
