"""Tokenizers: characters (default) and SentencePiece BPE behind one interface.

Text is normalised by :func:`asrkd.data.text.normalize_text` (applied by ``encode`` and when
building): English text ends up as lowercase ``a-z``, ``'`` and single spaces.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from asrkd.atomic import write_text
from asrkd.data.text import normalize_text

BLANK = "<blank>"
ENGLISH_ALPHABET = "'abcdefghijklmnopqrstuvwxyz"


class TokenizerError(ValueError):
    """Text that cannot be encoded; ``oov`` lists the offending characters."""

    def __init__(self, reason: str, oov: Sequence[str] = ()):
        super().__init__(reason)
        self.oov = list(oov)


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
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            pad_id=0,
            pad_piece=BLANK,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            hard_vocab_limit=False,
            normalization_rule_name="identity",
            minloglevel=2,
        )
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
