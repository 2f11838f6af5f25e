"""Word and character error rates: the ``asrkd wer`` command and its library API.

Scoring follows NIST sclite: each reference/hypothesis pair is aligned by dynamic
programming with sclite's default costs (substitution 4, insertion 3, deletion 3,
match 0) and sclite's tie-breaking, so word counts, error counts, WER and even the
split into substitutions / deletions / insertions equal ``sclite``'s on the same
pairs. A plain Levenshtein alignment (unit costs: jiwer, Kaldi ``compute-wer``,
Hugging Face ``evaluate``) minimises the error count instead; the two can differ when
sclite prefers deleting and inserting around a shifted run of words to substituting
the run, e.g. ``a b c d p q r`` vs ``p q r w x y z``: 7 errors for Levenshtein,
8 for sclite. ``method="levenshtein"`` (``--method levenshtein``) scores the
Levenshtein way through jiwer.

Public API:

- :func:`score` (dict of refs, dict of hyps -> result dict, the ``--json`` content)
- :func:`read_texts` (Kaldi ``text`` or manifest JSONL), :func:`read_kaldi_text`,
  :func:`read_manifest_texts`
- :class:`TextNormalizer`, :func:`align`, :func:`write_details`, :func:`format_report`
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from asrkd.atomic import atomic_write
from asrkd.data.text import APOSTROPHES, normalize_text

METHODS = ("sclite", "levenshtein")

# sclite's default word-to-word distances (``wwd``): match 0, substitution 4,
# insertion 3, deletion 3.
_SUB_COST = 4
_INS_COST = 3
_DEL_COST = 3

# Alignment operation codes (sclite / Kaldi letters).
CORRECT, SUBSTITUTION, DELETION, INSERTION = "C", "S", "D", "I"


# (op, ref_token, hyp_token) per aligned position; ref_token is None for an
# insertion, hyp_token for a deletion.
Alignment = list[tuple[str, str | None, str | None]]


# --------------------------------------------------------------------------- text


@dataclass(frozen=True)
class TextNormalizer:
    """Turns a transcript into the list of words that is scored.

    Whitespace is always normalised (words are split on any run of whitespace);
    everything else is off by default. Steps, in this order:

    0. ``normalize``: asrkd's transcript normalisation,
       :func:`asrkd.data.text.normalize_text` (the tokenizers' own: lower case, numbers as
       words, Latin accents and punctuation removed); the trainer's dev WER uses it;
    1. ``unicode``: Unicode normal form (``"NFC"`` or ``"NFKC"``), or None;
    2. ``lowercase``: case-fold (``str.casefold``);
    3. ``strip_punct``: every Unicode punctuation character (category ``P*``) becomes
       a space, except apostrophes, which are deleted (``don't`` -> ``dont``) or, with
       ``keep_apostrophes``, kept (typographic ones written as ``'``);
    4. ``ignore``: words dropped after the steps above (e.g. ``<unk>``, ``[noise]``).
    """

    normalize: bool = False
    lowercase: bool = False
    strip_punct: bool = False
    keep_apostrophes: bool = False
    unicode: str | None = None
    ignore: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.unicode not in (None, "NFC", "NFKC"):
            raise ValueError(f"unicode normal form must be None, 'NFC' or 'NFKC', not {self.unicode!r}")
        object.__setattr__(self, "ignore", frozenset(self.ignore))

    def words(self, text: str) -> list[str]:
        """The scored words of ``text``."""
        if self.normalize:
            text = normalize_text(text)
        if self.unicode is not None:
            text = unicodedata.normalize(self.unicode, text)
        if self.lowercase:
            text = text.casefold()
        if self.strip_punct:
            text = "".join(self._punct(ch) for ch in text)
        words = text.split()
        if self.ignore:
            words = [w for w in words if w not in self.ignore]
        return words

    def __call__(self, text: str) -> str:
        """``text`` normalised, words joined by single spaces."""
        return " ".join(self.words(text))

    def _punct(self, ch: str) -> str:
        if ch in APOSTROPHES:
            return "'" if self.keep_apostrophes else ""
        return " " if unicodedata.category(ch).startswith("P") else ch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ignore"] = sorted(self.ignore)
        return d


# --------------------------------------------------------------------------- input

# surrogateescape turns each undecodable byte into one of these lone surrogates, which
# valid UTF-8 never yields.
_UNDECODED = re.compile("[\udc80-\udcff]")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, a BOM at the start of a line dropped.

    Raises ``ValueError`` naming the file and line for bytes that are not UTF-8. Scoring
    refuses such a line rather than skip it: a skipped reference would change the WER.
    """
    # Not plain "utf-8": its error names neither the file nor the line. Every line's BOM,
    # not only the file's, because files joined with `cat` keep each part's.
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, 1):
            bad = _UNDECODED.search(line)
            if bad:
                raw = line[bad.start()].encode("utf-8", "surrogateescape")[0]
                col = len(line[: bad.start()].encode("utf-8", "surrogateescape")) + 1
                raise ValueError(
                    f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw:02x} at column {col}); "
                    "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
            yield lineno, line.removeprefix("\ufeff")


def read_kaldi_text(path: str | Path) -> dict[str, str]:
    """Read a Kaldi ``text`` file (UTF-8, a BOM allowed): ``utt-id word word ...`` per line.

    A line holding only an id is an empty transcript; blank lines are skipped.
    Raises ``ValueError`` naming the file and line for a duplicate id or bytes that
    are not UTF-8.
    """
    path = Path(path)
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _text_lines(path):
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        utt = parts[0]
        if utt in texts:
            raise ValueError(f"{path}:{lineno}: duplicate utterance id {utt!r} (first on line {first_line[utt]})")
        texts[utt] = parts[1] if len(parts) > 1 else ""
        first_line[utt] = lineno
    return texts


def read_manifest_texts(path: str | Path) -> dict[str, str | None]:
    """Read ``id`` and ``text`` from a manifest JSONL file.

    An entry without ``text`` (unlabelled audio) maps to None. Raises ``ValueError``
    naming the file and line for bytes that are not UTF-8, invalid JSON, a
    missing/non-string ``id``, a non-string ``text`` or a duplicate id.
    """
    path = Path(path)
    texts: dict[str, str | None] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON: {err.msg}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        utt = obj.get("id")
        if not isinstance(utt, str) or not utt:
            raise ValueError(f"{where}: missing or non-string 'id'")
        text = obj.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: 'text' of {utt!r} is {type(text).__name__}, not a string")
        if utt in texts:
            raise ValueError(f"{where}: duplicate utterance id {utt!r} (first on line {first_line[utt]})")
        texts[utt] = text
        first_line[utt] = lineno
    return texts


def is_manifest(path: str | Path) -> bool:
    """True for a manifest JSONL: a ``.jsonl``/``.json`` name, or a first line starting with ``{``."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return True
    for _, line in _text_lines(path):
        if line.strip():
            return line.lstrip().startswith("{")
    return False


def read_texts(path: str | Path) -> dict[str, str | None]:
    """Read transcripts from a Kaldi ``text`` file or a manifest JSONL (detected)."""
    return read_manifest_texts(path) if is_manifest(path) else read_kaldi_text(path)


# --------------------------------------------------------------------------- alignment


def align(ref: Sequence[str], hyp: Sequence[str], *, method: str = "sclite") -> Alignment:
    """Align two token sequences.

    Returns a list of ``(op, ref_token, hyp_token)`` with ``op`` one of ``"C"``
    (correct), ``"S"``, ``"D"`` (``hyp_token`` None), ``"I"`` (``ref_token`` None),
    in order. ``method="sclite"`` reproduces sclite's alignment (costs 4/3/3 and its
    tie-breaking); ``"levenshtein"`` is jiwer's (rapidfuzz) minimum-edit alignment.
    """
    if method == "sclite":
        return _align_sclite(ref, hyp)
    if method == "levenshtein":
        return _align_levenshtein(ref, hyp)
    raise ValueError(f"unknown alignment method {method!r}; expected one of {METHODS}")


def _align_sclite(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    # sclite's DP (net_dp.c, linear networks): cell (i, j) takes the diagonal
    # (match/substitution) if it is <= both others, else the deletion if it is
    # strictly below the insertion, else the insertion. Reproducing the tie-breaking,
    # not only the costs, is what makes the S/D/I split equal sclite's too.
    n, m = len(ref), len(hyp)
    back = [bytearray(m + 1) for _ in range(n + 1)]  # 0 diagonal, 1 deletion, 2 insertion
    back[0][1:] = b"\x02" * m
    prev = [_INS_COST * j for j in range(m + 1)]
    for i in range(1, n + 1):
        r = ref[i - 1]
        row = back[i]
        row[0] = 1
        cur = [_DEL_COST * i] * (m + 1)
        left = cur[0]
        for j in range(1, m + 1):
            diag = prev[j - 1] + (0 if hyp[j - 1] == r else _SUB_COST)
            dele = prev[j] + _DEL_COST
            ins = left + _INS_COST
            if diag <= dele and diag <= ins:
                left = diag
            elif dele < ins:
                left = dele
                row[j] = 1
            else:
                left = ins
                row[j] = 2
            cur[j] = left
        prev = cur
    out: Alignment = []
    i, j = n, m
    while i > 0 or j > 0:
        step = back[i][j]
        if step == 0:
            out.append((CORRECT if ref[i - 1] == hyp[j - 1] else SUBSTITUTION, ref[i - 1], hyp[j - 1]))
            i -= 1
            j -= 1
        elif step == 1:
            out.append((DELETION, ref[i - 1], None))
            i -= 1
        else:
            out.append((INSERTION, None, hyp[j - 1]))
            j -= 1
    out.reverse()
    return out


def _align_levenshtein(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    # An empty side has one alignment; and jiwer 3.x (allowed by the pin) rejects an
    # empty string where 4.x accepts it.
    if not ref or not hyp:
        return [(DELETION, t, None) for t in ref] + [(INSERTION, None, t) for t in hyp]
    import jiwer

    # jiwer aligns strings; feed it integer-coded tokens so any token (even one with
    # spaces, such as a character " ") survives its whitespace splitting.
    vocab: dict[str, int] = {}
    r = " ".join(str(vocab.setdefault(t, len(vocab))) for t in ref)
    h = " ".join(str(vocab.setdefault(t, len(vocab))) for t in hyp)
    out: Alignment = []
    for chunk in jiwer.process_words(r, h).alignments[0]:
        rs, hs = chunk.ref_start_idx, chunk.hyp_start_idx
        if chunk.type == "equal":
            out += [(CORRECT, ref[rs + k], hyp[hs + k]) for k in range(chunk.ref_end_idx - rs)]
        elif chunk.type == "substitute":
            out += [(SUBSTITUTION, ref[rs + k], hyp[hs + k]) for k in range(chunk.ref_end_idx - rs)]
        elif chunk.type == "delete":
            out += [(DELETION, ref[k], None) for k in range(rs, chunk.ref_end_idx)]
        elif chunk.type == "insert":
            out += [(INSERTION, None, hyp[k]) for k in range(hs, chunk.hyp_end_idx)]
        else:  # pragma: no cover - jiwer's documented chunk types are the four above
            raise RuntimeError(f"unexpected jiwer alignment chunk {chunk.type!r}")
    return out


@dataclass
class Counts:
    """Error counts of one or more aligned pairs (``ref`` = reference tokens)."""

    ref: int = 0
    correct: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Percent errors per reference token; see :func:`error_rate`."""
        return error_rate(self.errors, self.ref)

    def add(self, other: Counts) -> None:
        self.ref += other.ref
        self.correct += other.correct
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions

    @classmethod
    def of(cls, alignment: Alignment) -> Counts:
        c = cls()
        for op, r, _ in alignment:
            if r is not None:
                c.ref += 1
            if op == CORRECT:
                c.correct += 1
            elif op == SUBSTITUTION:
                c.substitutions += 1
            elif op == DELETION:
                c.deletions += 1
            else:
                c.insertions += 1
        return c


def error_rate(errors: int, ref_tokens: int) -> float:
    """``100 * errors / ref_tokens``.

    With no reference tokens at all the rate is 0.0 when there are no errors either
    and 100.0 otherwise: any output for an empty reference is wholly wrong. (sclite
    prints 0.0 there; the counts, reported alongside, show the insertions.)
    """
    if ref_tokens > 0:
        return 100.0 * errors / ref_tokens
    return 0.0 if errors == 0 else 100.0


def _chars(words: Sequence[str]) -> list[str]:
    # CER is over the characters of the normalised text with single spaces between
    # words (as jiwer.cer): a missing word boundary is a character error too.
    return list(" ".join(words))


# --------------------------------------------------------------------------- scoring


def score(
    refs: Mapping[str, str | None],
    hyps: Mapping[str, str | None],
    *,
    normalizer: TextNormalizer | None = None,
    method: str = "sclite",
    details: bool = False,
) -> dict:
    """Score hypotheses against references; the result is what ``--json`` writes.

    Args:
        refs: utterance id -> reference text; None marks an unlabelled utterance,
            which is skipped and counted (``unlabelled_ref``).
        hyps: utterance id -> hypothesis text. A reference without a hypothesis
            (absent, or None) is scored against an empty hypothesis, i.e. all its words
            are deletions, and listed in ``missing_hyp_ids``; a hypothesis without a
            reference is listed in ``extra_hyp_ids`` and not scored.
        normalizer: applied to both sides (default: whitespace only).
        method: ``"sclite"`` (default; equals NIST sclite) or ``"levenshtein"``.
        details: also return ``utts``: per utterance ``id, ref, hyp, missing_hyp``,
            word ``counts``, ``alignment`` (list of ``[op, ref_word, hyp_word]``) and
            character ``char_counts``.

    Returns:
        dict with ``wer``, ``cer``, ``ser`` (percent), ``words``, ``errors``,
        ``insertions``, ``deletions``, ``substitutions``, ``correct``, ``utterances``
        (references scored), ``sentence_errors``, ``missing_hyp`` (count),
        ``missing_hyp_ids``, ``extra_hyp``, ``extra_hyp_ids``, ``unlabelled_ref``,
        ``unlabelled_ref_ids``, ``cer_details`` (``chars, errors, insertions,
        deletions, substitutions, correct``), ``method``, ``normalization``, and
        ``warnings`` (list of strings: results that are formally right but almost
        certainly not what was meant, such as hypotheses sharing no id with the references).
    """
    if method not in METHODS:
        raise ValueError(f"unknown alignment method {method!r}; expected one of {METHODS}")
    norm = normalizer or TextNormalizer()
    words_total, chars_total = Counts(), Counts()
    missing: list[str] = []
    unlabelled: list[str] = []
    sentence_errors = 0
    utts: list[dict] = []
    for utt, ref_text in refs.items():
        if ref_text is None:
            unlabelled.append(utt)
            continue
        hyp_text = hyps.get(utt)
        is_missing = hyp_text is None
        if is_missing:
            missing.append(utt)
            hyp_text = ""
        ref_words, hyp_words = norm.words(ref_text), norm.words(hyp_text)
        ali = align(ref_words, hyp_words, method=method)
        wc = Counts.of(ali)
        cc = Counts.of(align(_chars(ref_words), _chars(hyp_words), method=method))
        words_total.add(wc)
        chars_total.add(cc)
        sentence_errors += wc.errors > 0
        if details:
            utts.append(
                {
                    "id": utt,
                    "ref": " ".join(ref_words),
                    "hyp": " ".join(hyp_words),
                    "missing_hyp": is_missing,
                    "counts": _counts_dict(wc, "words"),
                    "char_counts": _counts_dict(cc, "chars"),
                    "alignment": [list(a) for a in ali],
                }
            )
    extra = [utt for utt in hyps if utt not in refs]
    n_utts = len(refs) - len(unlabelled)
    result = {
        "wer": words_total.rate,
        "cer": chars_total.rate,
        "ser": error_rate(sentence_errors, n_utts) if n_utts else 0.0,
        **_counts_dict(words_total, "words"),
        "utterances": n_utts,
        "sentence_errors": sentence_errors,
        "missing_hyp": len(missing),
        "missing_hyp_ids": missing,
        "extra_hyp": len(extra),
        "extra_hyp_ids": extra,
        "unlabelled_ref": len(unlabelled),
        "unlabelled_ref_ids": unlabelled,
        "cer_details": _counts_dict(chars_total, "chars"),
        "method": method,
        "normalization": norm.to_dict(),
        "warnings": _warnings(n_utts, len(missing), len(hyps)),
    }
    if details:
        result["utts"] = utts
    return result


def _warnings(n_utts: int, n_missing: int, n_hyps: int) -> list[str]:
    if n_utts and n_missing == n_utts:
        # Scored as the contract says (all deletions, WER 100), but a wrong --hyp file or
        # an id prefix mismatch is far likelier than a system that output nothing.
        warning = (
            f"none of the {n_utts} references has a hypothesis ({n_hyps} hypotheses read, no id in common): "
            "every reference is scored as all deletions; check that the hypotheses belong to these references"
        )
        return [warning]
    return []


def _counts_dict(c: Counts, unit: str) -> dict:
    return {
        unit: c.ref,
        "errors": c.errors,
        "insertions": c.insertions,
        "deletions": c.deletions,
        "substitutions": c.substitutions,
        "correct": c.correct,
    }


# --------------------------------------------------------------------------- output


def _id_list(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... (+{len(ids) - limit} more)" if len(ids) > limit else "")


def format_report(result: Mapping) -> str:
    """The text ``asrkd wer`` prints (Kaldi ``compute-wer`` / sclite style)."""
    cd = result["cer_details"]
    lines = [
        f"%WER {result['wer']:.2f} [ {result['errors']} / {result['words']}, {result['insertions']} ins, "
        f"{result['deletions']} del, {result['substitutions']} sub ]",
        f"%CER {result['cer']:.2f} [ {cd['errors']} / {cd['chars']}, {cd['insertions']} ins, "
        f"{cd['deletions']} del, {cd['substitutions']} sub ]",
        f"%SER {result['ser']:.2f} [ {result['sentence_errors']} / {result['utterances']} ]",
    ]
    line = f"Scored {result['utterances']} sentences, {result['missing_hyp']} not present in hyp"
    if result["missing_hyp"]:
        line += f" (scored as deletions): {_id_list(result['missing_hyp_ids'])}"
    lines.append(line + ".")
    if result["extra_hyp"]:
        n = result["extra_hyp"]
        lines.append(
            f"{n} {'hypothesis has' if n == 1 else 'hypotheses have'} no reference and "
            f"{'was' if n == 1 else 'were'} ignored: {_id_list(result['extra_hyp_ids'])}."
        )
    if result["unlabelled_ref"]:
        n = result["unlabelled_ref"]
        lines.append(
            f"{n} {'reference has' if n == 1 else 'references have'} no text and "
            f"{'was' if n == 1 else 'were'} skipped: {_id_list(result['unlabelled_ref_ids'])}."
        )
    return "\n".join(lines)


def write_details(path: str | Path, result: Mapping) -> None:
    """Write per-utterance alignments in Kaldi's ``per_utt`` layout.

    Four lines per utterance, columns padded to line up::

        utt1 ref  the cat ***  sat
        utt1 hyp  the *** big  sit
        utt1 op   C   D   I    S
        utt1 #csid 1 1 1 1

    ``#csid`` = correct, substitutions, insertions, deletions (Kaldi order) of words;
    ``#char-csid`` the same for characters; a ``missing`` line marks a reference that
    had no hypothesis. ``result`` must come from :func:`score` with ``details=True``.
    """
    if "utts" not in result:
        raise ValueError("write_details needs the result of score(..., details=True)")
    atomic_write(path, lambda f: _write_details(f, result["utts"]), mode="w")


def _write_details(f: IO[str], utts: Sequence[Mapping]) -> None:
    for u in utts:
        utt = u["id"]
        cols = [(r or "***", h or "***", op) for op, r, h in u["alignment"]]
        widths = [max(len(r), len(h), len(op)) for r, h, op in cols]
        for label, k in (("ref", 0), ("hyp", 1), ("op", 2)):
            cells = " ".join(c[k].ljust(w) for c, w in zip(cols, widths))
            f.write(f"{utt} {label:<4} {cells}".rstrip() + "\n")
        wc, cc = u["counts"], u["char_counts"]
        f.write(f"{utt} #csid {wc['correct']} {wc['substitutions']} {wc['insertions']} {wc['deletions']}\n")
        f.write(f"{utt} #char-csid {cc['correct']} {cc['substitutions']} {cc['insertions']} {cc['deletions']}\n")
        if u["missing_hyp"]:
            f.write(f"{utt} missing no hypothesis: all reference words count as deletions\n")
