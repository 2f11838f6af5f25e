"""Natural English sentences for the synthesized corpus: WordNet's example sentences.

WordNet 3.0 (Debian main: ``wordnet-base``; the WordNet licence, BSD-like) quotes usage
examples in its glosses: ``| a small drink; "he poured a stiff drink"``. About 48,000 of them,
written by lexicographers to show ordinary usage, make ~41,000 distinct sentences of 3-15 words
once normalised: far closer to real transcripts than random word strings (function words,
syntax, collocations), so WER means what it means on a real corpus and a language model can help.

Every sentence goes through :func:`asrkd.data.text.normalize_text` (numbers spelled out,
punctuation dropped); sentences with anything but ``a-z``, ``'`` and spaces left, or outside the
word-count range, are dropped and counted.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path

from .text import normalize_text

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_QUOTED = re.compile(r'"([^"]+)"')
_CLEAN = re.compile(r"[a-z']+(?: [a-z']+)*")


class TextSourceError(RuntimeError):
    pass


def wordnet_examples(root: Path | None = None) -> list[str]:
    """The raw quoted examples of the WordNet glosses in ``root`` (default :data:`WORDNET_DIR`; file order)."""
    root = root or WORDNET_DIR
    missing = [f for f in WORDNET_FILES if not (root / f).is_file()]
    if missing:
        raise TextSourceError(
            f"WordNet data not found in {root} (missing {', '.join(missing)}): apt-get install wordnet-base"
        )
    found: list[str] = []
    for name in WORDNET_FILES:
        # latin-1: the files are ASCII in practice, and latin-1 never fails on a stray byte
        with open(root / name, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # licence header / no gloss
                    continue
                found.extend(_QUOTED.findall(line.split("|", 1)[1]))
    return found


def clean_sentences(raw: list[str], min_words: int, max_words: int) -> tuple[list[str], Counter]:
    """Normalised distinct sentences (first occurrence order) and the reasons others were dropped."""
    kept: dict[str, None] = {}
    dropped: Counter = Counter()
    for s in raw:
        text = normalize_text(s)
        if not _CLEAN.fullmatch(text):
            dropped["characters" if text else "empty"] += 1
        elif not min_words <= text.count(" ") + 1 <= max_words:
            dropped["length"] += 1
        elif text in kept:
            dropped["duplicate"] += 1
        else:
            kept[text] = None
    return list(kept), dropped


@functools.lru_cache(maxsize=4)
def load_sentences(min_words: int = 3, max_words: int = 15, root: Path | None = None) -> tuple[str, ...]:
    """WordNet's example sentences, normalised, deduplicated, ``min_words``-``max_words`` words
    (from ``root``, default :data:`WORDNET_DIR`)."""
    root = root or WORDNET_DIR
    sentences, _ = clean_sentences(wordnet_examples(root), min_words, max_words)
    if not sentences:
        raise TextSourceError(f"no usable sentence in the WordNet data in {root}")
    return tuple(sentences)


def unseen_rate(train_texts: list[str], texts: list[str]) -> dict[str, float]:
    """How much of ``texts``' vocabulary never occurs in ``train_texts``: the fraction of word
    types and of running words (tokens)."""
    seen = {w for t in train_texts for w in t.split()}
    tokens = [w for t in texts for w in t.split()]
    types = set(tokens)
    if not tokens:
        return {"types": 0.0, "tokens": 0.0}
    return {
        "types": round(sum(w not in seen for w in types) / len(types), 4),
        "tokens": round(sum(w not in seen for w in tokens) / len(tokens), 4),
    }


__all__ = ["TextSourceError", "wordnet_examples", "clean_sentences", "load_sentences", "unseen_rate"]
