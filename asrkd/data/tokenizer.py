"""Tokenizers: characters (default) and SentencePiece BPE behind one interface.

Text normalisation (:func:`normalize_text`, applied by ``encode`` and when building):

1. Unicode NFKC; typographic apostrophes (’ ‘ ʼ ` ´ ′) become ``'``.
2. Lower case.
3. Numbers are written as English words: ``42`` -> ``forty two``, ``1,250`` -> ``one thousand
   two hundred fifty``, ``3.5`` -> ``three point five``, ``21st`` -> ``twenty first``,
   ``%`` -> ``percent``, ``&`` -> ``and``. Digit runs longer than 12 are read digit by digit.
4. Accents on Latin letters are removed (``café`` -> ``cafe``); other scripts are kept.
5. An apostrophe is kept only between two letters (``don't``, ``o'clock``); hyphens, other
   punctuation and symbols become spaces.
6. Runs of whitespace become one space; leading/trailing space is removed.

So English text ends up as lowercase ``a-z``, ``'`` and single spaces.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from asrkd.atomic import write_text

BLANK = "<blank>"
ENGLISH_ALPHABET = "'abcdefghijklmnopqrstuvwxyz"

_APOSTROPHES = dict.fromkeys(map(ord, "\u2019\u2018\u02bc`\u00b4\u2032"), "'")
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}
_NUMBER = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(?!\d|,\d)", re.IGNORECASE)


class TokenizerError(ValueError):
    """Text that cannot be encoded; ``oov`` lists the offending characters."""

    def __init__(self, reason: str, oov: Sequence[str] = ()):
        super().__init__(reason)
        self.oov = list(oov)


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


def normalize_text(text: str) -> str:
    """The documented normalisation (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
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


class CharTokenizer:
    """Characters of normalised text. ``tokens[0] == "<blank>"`` (CTC blank, id 0), the word
    separator is the token ``" "``.

    ``encode`` raises :class:`TokenizerError` for characters outside the vocabulary;
    ``oov_chars`` lists them without raising (used to skip and count such utterances).
    """

    kind = "char"
    blank_id = 0

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if not tokens or tokens[0] != BLANK:
            raise ValueError(f"tokens[0] must be {BLANK!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens")
        if any(len(t) != 1 for t in tokens[1:]):
            raise ValueError("CharTokenizer tokens after the blank must be single characters")
        self.tokens = tokens
        self._index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], *, alphabet: str = ENGLISH_ALPHABET, min_count: int = 1) -> "CharTokenizer":
        """Vocabulary = ``alphabet`` + every character seen ``min_count`` times in the
        normalised ``texts``; ``<blank>``, ``" "``, then the characters in code point order."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(normalize_text(t))
        chars = set(alphabet) | {c for c, n in counts.items() if n >= min_count}
        chars.discard(" ")
        return cls([BLANK, " ", *sorted(chars)])

    @classmethod
    def english(cls) -> "CharTokenizer":
        """``<blank>``, space, apostrophe, a-z (29 tokens)."""
        return cls.build([])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def space_id(self) -> int:
        return self._index[" "]

    def token_id(self, symbol: str) -> int | None:
        return self._index.get(symbol)

    @staticmethod
    def normalize(text: str) -> str:
        return normalize_text(text)

    def oov_chars(self, text: str) -> list[str]:
        """Characters of ``normalize(text)`` not in the vocabulary (sorted, unique)."""
        return sorted({c for c in self.normalize(text) if c not in self._index})

    def encode(self, text: str) -> list[int]:
        norm = self.normalize(text)
        try:
            return [self._index[c] for c in norm]
        except KeyError:
            oov = self.oov_chars(text)
            raise TokenizerError(f"characters outside the vocabulary: {''.join(oov)!r} in {text!r}", oov) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Ids already collapsed (CTC repeats merged); blanks are dropped."""
        chars = [self.tokens[int(i)] for i in ids if int(i) != self.blank_id]
        return " ".join("".join(chars).split())

    def map_vocab(self, symbols: Sequence[str], blank_id: int) -> list[int]:
        """Map another model's vocabulary (e.g. a teacher's) onto this one: for each of its
        ids the id here, or -1 when nothing corresponds (``<pad>``, ``<unk>``, multi-char
        pieces). Word separators ``|``, ``▁``, ``<space>`` and ``" "`` map to the space;
        letters are matched after normalisation (so ``A`` -> ``a``)."""
        out = []
        for i, s in enumerate(symbols):
            if i == blank_id:
                out.append(self.blank_id)
            elif s in ("|", "\u2581", "<space>", " "):
                out.append(self.space_id)
            elif s.startswith("<") and s.endswith(">"):
                out.append(-1)
            else:
                # single symbols first (a lone "'" normalises away), then normalised letters
                direct = unicodedata.normalize("NFKC", s).translate(_APOSTROPHES).lower()
                n = direct if direct in self._index else self.normalize(s)
                out.append(self._index.get(n, -1) if len(n) == 1 else -1)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "tokens": list(self.tokens)}

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CharTokenizer":
        return cls(d["tokens"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"CharTokenizer({len(self)} tokens)"


class BPETokenizer:
    """SentencePiece BPE (or unigram) pieces over normalised text, with the same interface as
    :class:`CharTokenizer`: ``tokens[0] == "<blank>"`` (id 0), ``<unk>`` is id 1, word
    boundaries are the ``▁`` prefix of pieces."""

    kind = "bpe"
    blank_id = 0

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.tokens = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        if self.tokens[0] != BLANK:
            raise ValueError(f"SentencePiece model must have {BLANK!r} as id 0 (pad_id=0)")
        self.unk_id = self.sp.unk_id()

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int = 256, *, model_type: str = "bpe") -> "BPETokenizer":
        import io

        import sentencepiece as spm

        lines = [n for n in (normalize_text(t) for t in texts) if n]
        if not lines:
            raise ValueError("BPETokenizer.build: no text")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, pad_id=0, pad_piece=BLANK, unk_id=1, bos_id=-1, eos_id=-1,
            hard_vocab_limit=False, normalization_rule_name="identity", minloglevel=2)
        return cls(model.getvalue())

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_id(self, symbol: str) -> int | None:
        i = self.sp.piece_to_id(symbol)
        return None if i == self.unk_id and symbol != self.tokens[self.unk_id] else i

    @staticmethod
    def normalize(text: str) -> str:
        return normalize_text(text)

    def oov_chars(self, text: str) -> list[str]:
        norm = self.normalize(text)
        return sorted({c for c in set(norm) - {" "} if self.unk_id in self.sp.encode(c, out_type=int)})

    def encode(self, text: str) -> list[int]:
        ids = self.sp.encode(self.normalize(text), out_type=int)
        if self.unk_id in ids:
            oov = self.oov_chars(text)
            raise TokenizerError(f"characters outside the vocabulary: {''.join(oov)!r} in {text!r}", oov)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.sp.decode([int(i) for i in ids if int(i) != self.blank_id]).split())

    def map_vocab(self, symbols: Sequence[str], blank_id: int) -> list[int]:
        """As :meth:`CharTokenizer.map_vocab`; pieces are matched exactly (a ``|`` word
        separator maps to the piece ``▁`` if the model has one)."""
        out = []
        for i, s in enumerate(symbols):
            if i == blank_id:
                out.append(self.blank_id)
                continue
            s = "\u2581" if s in ("|", "<space>", " ") else s
            j = self.token_id(s)
            out.append(-1 if j is None or j == self.unk_id else j)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "model": base64.b64encode(self._proto).decode("ascii")}

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict()) + "\n")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BPETokenizer":
        return cls(base64.b64decode(d["model"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self._proto == other._proto

    def __repr__(self) -> str:
        return f"BPETokenizer({len(self)} pieces)"


Tokenizer = CharTokenizer | BPETokenizer


def load_tokenizer(path_or_dict: str | Path | Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``to_dict()`` output or a file written by ``save``."""
    if isinstance(path_or_dict, Mapping):
        d = path_or_dict
    else:
        try:
            d = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TokenizerError(f"{path_or_dict}: not a saved asrkd tokenizer ({err})") from None
        if not isinstance(d, Mapping):
            raise TokenizerError(f"{path_or_dict}: not a saved asrkd tokenizer (a JSON object is expected)")
    kind = d.get("type")
    if kind == "char":
        return CharTokenizer.from_dict(d)
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer type {kind!r} (expected 'char' or 'bpe')")
