"""``asrkd synth OUT_DIR``: the offline mini corpus, synthesized with espeak-ng and festival.

Text: natural English sentences (WordNet's usage examples, :mod:`asrkd.data.sentences`), each
used once in the whole corpus; ``text="words"`` draws random strings of 3-15 words from the
packaged word list instead (``words.txt``, Zipf-like weights), as earlier versions did.
Sentences are dealt to test first, then dev, pool and train, so no test sentence is trained on;
how much of the dev/test vocabulary never occurs in training is measured and recorded.

Voices: two engines mixed per utterance. espeak-ng speaks as a pseudo-speaker
``<accent voice>+<variant>`` at a random rate and pitch; a ``festival_share`` of the utterances
is spoken by the festival voices of Debian main at a random duration stretch (an HTS voice and
two diphone voices: a different synthesis method, spectrum and prosody). Train, dev and test
use disjoint espeak variants and disjoint festival voices (dev and test share the one held-out
festival voice, ked), so no dev/test speaker is heard in training.

Unlabelled pool (``pool_hours`` > 0): more audio, other espeak variants and other sentences,
written without ``text`` (``pool.jsonl``, and ``train_pool.jsonl`` = train + pool) for KD
without transcripts.

Audio is 16 kHz mono 16-bit WAV (resampled with torchaudio), trailing silence trimmed.
Everything is drawn from ``--seed`` before the (parallel) synthesis starts, so a seed gives the
same corpus whatever ``--jobs``.

Writes ``OUT_DIR/{train,dev,test[,pool,train_pool]}.jsonl``, ``OUT_DIR/wavs/<split>/<id>.wav``
and ``OUT_DIR/corpus.json`` (settings + statistics; a rerun with the same settings is a no-op).
"""

from __future__ import annotations

import bisect
import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from itertools import accumulate
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Sequence

from asrkd.atomic import write_text
from asrkd.data.audio import SAMPLE_RATE

# English accents of espeak-ng's own (gmw) voices; the mbrola ones need extra packages.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
# Voice variants (timbre). Chosen by listening with Whisper tiny: each kept variant was
# transcribed with < 12 % CER on test sentences; gimmicks (whisper, croak, robots), near
# unintelligible ones and exact duplicates were left out. Dev and test variants are disjoint
# from the training ones and from each other.
DEV_VARIANTS = ("f3", "m4", "antonio", "paul", "linda", "Mike")
TEST_VARIANTS = ("f4", "m5", "Hugo", "michel", "aunty", "grandpa")
# Voices of the untranscribed pool only (taken from the earlier training set): the pool
# brings voices the labelled data lacks, as untranscribed data from a real corpus would.
POOL_VARIANTS = ("Gene2", "iven4", "klatt5", "m8", "pedro", "quincy", "robosoft5", "steph3")
TRAIN_VARIANTS = (
    "Alex",
    "Andy",
    "Annie",
    "Denis",
    "Diogo",
    "Gene",
    "Henrique",
    "Mario",
    "Michael",
    "Nguyen",
    "Storm",
    "Tweaky",
    "adam",
    "announcer",
    "belinda",
    "edward2",
    "f1",
    "f2",
    "f5",
    "gustave",
    "iven",
    "iven3",
    "john",
    "klatt4",
    "m1",
    "m2",
    "m3",
    "m6",
    "m7",
    "marcelo",
    "max",
    "pablo",
    "rob",
    "robert",
    "robosoft2",
    "robosoft4",
    "sandro",
    "steph",
    "steph2",
    "victor",
)
# festival voices (Debian main: festvox-us-slt-hts, festvox-kallpc16k, festvox-kdlpc16k)
FESTIVAL_TRAIN = ("cmu_us_slt_arctic_hts", "kal_diphone")
FESTIVAL_HELD_OUT = ("ked_diphone",)  # dev and test
FESTIVAL_PACKAGES = {
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
}
FESTIVAL_VOICES = Path("/usr/share/festival/voices")  # <language>/<voice>/
FESTIVAL_STRETCH = (90, 120)  # Duration_Stretch in percent: > 100 is slower
FESTIVAL_BATCH = 12  # utterances per festival process: its start-up costs more than an utterance
RATE_WPM = (120, 175)  # espeak-ng -s; faster speech (> ~22 chars/s) crowds a 25 Hz character CTC
PITCH = (30, 70)  # espeak-ng -p (0-99)
TRAILING_SILENCE_S = 0.15
SILENCE_LEVEL = 1e-3
# Seconds per character of text at 175 wpm, measured on this word list (for sizing only;
# the reported corpus size is measured from the audio).
_SEC_PER_CHAR_175 = 0.0532
_SEC_FIXED = 0.28


class SynthError(RuntimeError):
    pass


TEXT_SOURCES = ("wordnet", "words")
SPLITS = ("train", "dev", "test", "pool")


@dataclass
class SynthConfig:
    train_hours: float = 4.0
    dev_minutes: float = 20.0
    test_minutes: float = 20.0
    pool_hours: float = 0.0  # untranscribed pool (pool.jsonl, no text)
    festival_share: float = 0.25  # of the utterances of every split
    text: str = "wordnet"  # wordnet (natural sentences) | words (random word strings)
    seed: int = 0
    min_words: int = 3
    max_words: int = 15

    def __post_init__(self) -> None:
        if self.text not in TEXT_SOURCES:
            raise SynthError(f"text source {self.text!r}: expected one of {', '.join(TEXT_SOURCES)}")
        if not 0.0 <= self.festival_share <= 1.0:
            raise SynthError(f"festival_share {self.festival_share}: expected a fraction in [0, 1]")
        if min(self.train_hours, self.dev_minutes, self.test_minutes, self.pool_hours) < 0:
            raise SynthError("corpus sizes must be >= 0")

    @classmethod
    def quick(cls, seed: int = 0) -> "SynthConfig":
        return cls(train_hours=4 / 60, dev_minutes=1.0, test_minutes=1.0, pool_hours=1 / 60, seed=seed)


@dataclass
class Job:
    id: str
    split: str
    text: str
    engine: str  # espeak | festival
    voice: str  # espeak accent voice, or festival voice
    variant: str  # espeak variant ("" for festival)
    rate: int  # espeak words per minute, or festival Duration_Stretch in percent
    pitch: int  # espeak pitch (0 for festival)
    path: str

    @property
    def speaker(self) -> str:
        return f"{self.voice}+{self.variant}" if self.engine == "espeak" else f"festival-{self.voice}"

    @property
    def labelled(self) -> bool:
        return self.split != "pool"


# -- resources ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_words() -> list[str]:
    """The packaged word list, most frequent first."""
    text = resources.files("asrkd.data").joinpath("words.txt").read_text(encoding="utf-8")
    words = [w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#")]
    bad = [w for w in words if not re.fullmatch(r"[a-z']+", w)]
    if bad:
        raise SynthError(f"words.txt holds words outside a-z and ': {bad[:5]}")
    return words


def espeak_data_dir() -> Path:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("espeak-ng is not installed (apt-get install espeak-ng)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Data at:\s*(\S+)", out)
    if not m:
        raise SynthError(f"cannot find espeak-ng's data folder in {out!r}")
    return Path(m.group(1))


def check_voices(accents: Sequence[str], variants: Sequence[str]) -> None:
    """espeak-ng silently falls back to its default voice for unknown voices and variants,
    which would quietly make every 'speaker' the same: check they exist."""
    data = espeak_data_dir()
    listed = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True, check=True).stdout
    langs = {line.split()[1] for line in listed.splitlines()[1:] if len(line.split()) > 1}
    missing = [a for a in accents if a not in langs]
    missing += [f"variant {v}" for v in variants if not (data / "voices" / "!v" / v).is_file()]
    if missing:
        raise SynthError(f"espeak-ng lacks voice(s) {', '.join(missing)} (data at {data})")


def check_festival(voices: Sequence[str]) -> None:
    """festival is there and has each voice (it would fail at run time, utterance by utterance)."""
    if shutil.which("festival") is None:
        raise SynthError("festival is not installed (apt-get install festival), or use festival_share=0")
    missing = [v for v in voices if not any(FESTIVAL_VOICES.glob(f"*/{v}"))]
    if missing:
        pkgs = " ".join(FESTIVAL_PACKAGES.get(v, v) for v in missing)
        raise SynthError(f"festival lacks voice(s) {', '.join(missing)}: apt-get install {pkgs}")


# -- planning ------------------------------------------------------------------------------------
def estimate_seconds(text: str, rate: int) -> float:
    return _SEC_FIXED + len(text) * _SEC_PER_CHAR_175 * 175.0 / rate


class _Texts:
    """Where each split's texts come from: WordNet sentences, dealt out without replacement
    (test first, so its sentences are never trained on), or random word strings."""

    def __init__(self, config: SynthConfig):
        self.config = config
        if config.text == "wordnet":
            from .sentences import TextSourceError, load_sentences

            try:
                sentences = list(load_sentences(config.min_words, config.max_words))
            except TextSourceError as err:
                raise SynthError(str(err)) from err
            random.Random(config.seed * 104729 + 17).shuffle(sentences)
            self.sentences, self.next = sentences, 0
        else:
            words = load_words()
            self.words = words
            self.cum = list(accumulate(1.0 / (r + 50.0) ** 0.9 for r in range(len(words))))

    def draw(self, rng: random.Random) -> str:
        if self.config.text == "wordnet":
            if self.next >= len(self.sentences):
                raise SynthError(f"the corpus needs more than the {len(self.sentences)} WordNet sentences")
            self.next += 1
            return self.sentences[self.next - 1]
        n = rng.randint(self.config.min_words, self.config.max_words)
        return " ".join(self.words[bisect.bisect_left(self.cum, rng.random() * self.cum[-1])] for _ in range(n))


def _voice(rng: random.Random, split: str, festival_share: float) -> tuple[str, str, str, int, int]:
    """(engine, voice, variant, rate, pitch) of one utterance of ``split``."""
    if rng.random() < festival_share:
        voices = FESTIVAL_HELD_OUT if split in ("dev", "test") else FESTIVAL_TRAIN
        return "festival", rng.choice(voices), "", rng.randint(*FESTIVAL_STRETCH), 0
    variants = {"train": TRAIN_VARIANTS, "dev": DEV_VARIANTS, "test": TEST_VARIANTS, "pool": POOL_VARIANTS}[split]
    return "espeak", rng.choice(ACCENTS), rng.choice(variants), rng.randint(*RATE_WPM), rng.randint(*PITCH)


def plan(config: SynthConfig, out_dir: Path) -> list[Job]:
    """Every utterance of the corpus, drawn from ``config.seed`` (no audio yet)."""
    texts = _Texts(config)
    sizes = {
        "test": config.test_minutes * 60,
        "dev": config.dev_minutes * 60,
        "pool": config.pool_hours * 3600,
        "train": config.train_hours * 3600,
    }
    jobs: list[Job] = []
    for split, seconds in sizes.items():
        # per-split seeds as in earlier versions: a split's voices do not depend on the others' sizes
        rng = random.Random(config.seed * 7919 + SPLITS.index(split))
        total, i = 0.0, 0
        while total < seconds:
            text = texts.draw(rng)
            engine, voice, variant, rate, pitch = _voice(rng, split, config.festival_share)
            uid = f"{split}-{i:06d}"
            jobs.append(
                Job(uid, split, text, engine, voice, variant, rate, pitch, str(out_dir / "wavs" / split / f"{uid}.wav"))
            )
            total += estimate_seconds(text, rate if engine == "espeak" else 17500 // rate)
            i += 1
    return jobs


def work_units(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs grouped for the worker processes: espeak-ng runs once per utterance (it starts in
    milliseconds); festival once per :data:`FESTIVAL_BATCH` utterances of one voice."""
    units: list[list[Job]] = []
    espeak = [j for j in jobs if j.engine == "espeak"]
    units += [espeak[k : k + 8] for k in range(0, len(espeak), 8)]
    for voice in sorted({j.voice for j in jobs if j.engine == "festival"}):
        fest = [j for j in jobs if j.engine == "festival" and j.voice == voice]
        units += [fest[k : k + FESTIVAL_BATCH] for k in range(0, len(fest), FESTIVAL_BATCH)]
    return units


# -- synthesis (runs in worker processes) -------------------------------------------------------
Result = tuple[str, "float | None", "str | None"]  # (id, seconds, error)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _finish(job: Job, data: bytes, engine: str) -> Result:
    """Decode an engine's WAV bytes, resample to 16 kHz, trim trailing silence, write."""
    import numpy as np
    import torch

    from .audio import AudioError, decode_bytes, resample, write_audio

    try:
        wave, rate = decode_bytes(data)
    except AudioError as err:
        return job.id, None, f"{engine} output: {err}"
    with torch.no_grad():
        wave16 = resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLE_RATE).numpy()
    loud = np.flatnonzero(np.abs(wave16) > SILENCE_LEVEL)
    if loud.size == 0:
        return job.id, None, f"{engine} produced silence"
    end = min(len(wave16), int(loud[-1]) + int(TRAILING_SILENCE_S * SAMPLE_RATE))
    wave16 = wave16[:end]
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    write_audio(job.path, wave16, SAMPLE_RATE)
    return job.id, len(wave16) / SAMPLE_RATE, None


def synthesize_espeak(job: Job) -> Result:
    cmd = ["espeak-ng", "-v", job.speaker, "-s", str(job.rate), "-p", str(job.pitch), "--stdout", job.text]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return job.id, None, "espeak-ng timed out"
    if proc.returncode != 0:
        return job.id, None, f"espeak-ng exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
    return _finish(job, proc.stdout, "espeak-ng")


def festival_script(jobs: Sequence[Job], tmp: Path) -> str:
    """Scheme for one festival process: the voice once, then one utterance per job."""
    voice = jobs[0].voice
    # festival carries on with its default voice after an unknown one: stop it instead
    lines = [f"(voice_{voice})", f"(if (not (equal? current-voice '{voice})) (exit 3))"]
    for j in jobs:
        if not re.fullmatch(r"[a-z' ]+", j.text):  # the text goes inside a Scheme string
            raise SynthError(f"{j.id}: text for festival must be normalised a-z ' text: {j.text!r}")
        lines.append(f"(Parameter.set 'Duration_Stretch {j.rate / 100:.2f})")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{j.text}")) "{tmp / j.id}.wav" \'riff)')
    return "\n".join(lines) + "\n"


def synthesize_festival(jobs: Sequence[Job]) -> list[Result]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="asrkd-festival-") as d:
        tmp = Path(d)
        try:
            proc = subprocess.run(
                ["festival", "--pipe"],
                input=festival_script(jobs, tmp).encode(),
                capture_output=True,
                timeout=60 + 20 * len(jobs),
            )
            why = None if proc.returncode == 0 else f"festival exited {proc.returncode}: {proc.stderr[-300:]!r}"
            if proc.returncode == 3:
                why = f"festival has no voice {jobs[0].voice!r}"
        except subprocess.TimeoutExpired:
            why = "festival timed out"
        out: list[Result] = []
        for j in jobs:
            wav = tmp / f"{j.id}.wav"
            if not wav.is_file():
                out.append((j.id, None, why or "festival wrote no audio"))
            else:
                out.append(_finish(j, wav.read_bytes(), "festival"))
        return out


def synthesize_unit(unit: Sequence[Job]) -> list[Result]:
    if unit and unit[0].engine == "festival":
        return synthesize_festival(unit)
    return [synthesize_espeak(j) for j in unit]


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete WAVs of an earlier, different corpus in ``out_dir/wavs`` (only files named as
    this module names them), so the folder holds exactly what the manifests list."""
    for split in SPLITS:
        folder = out_dir / "wavs" / split
        if folder.is_dir():
            for f in folder.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].wav"):
                if str(f) not in keep:
                    f.unlink()


def _run_jobs(todo: list[Job], jobs: int, progress: bool) -> dict[str, tuple[float | None, str | None]]:
    from tqdm import tqdm

    results: dict[str, tuple[float | None, str | None]] = {}
    units = work_units(todo)
    with (
        ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool,
        tqdm(
            total=len(todo), desc="synthesizing", unit="utt", disable=not progress, file=sys.stderr, dynamic_ncols=True
        ) as bar,
    ):
        # festival units first: they are the slow ones, and the pool balances the rest around them
        order = sorted(range(len(units)), key=lambda k: units[k][0].engine != "festival")
        for unit_results in pool.map(synthesize_unit, [units[k] for k in order]):
            for uid, seconds, err in unit_results:
                results[uid] = (seconds, err)
            bar.update(len(unit_results))
    return results


def _utterance(job: Job, seconds: float):
    from .manifest import Utterance

    return Utterance(
        id=job.id,
        audio=job.path,
        duration=round(seconds, 4),
        text=job.text if job.labelled else None,
        speaker=job.speaker,
        extra={"synth": {"engine": job.engine, "voice": job.speaker, "rate": job.rate, "pitch": job.pitch}},
    )


def _stats(by_split: dict[str, list], todo: list[Job], failed: dict, wall: float, jobs: int) -> dict[str, Any]:
    from .sentences import unseen_rate

    texts = {j.id: j.text for j in todo}  # the pool's texts too (not in its manifest)
    train_texts = [texts[u.id] for u in by_split["train"]]
    return {
        "utterances": {s: len(u) for s, u in by_split.items()},
        "seconds": {s: round(sum(x.duration for x in u), 1) for s, u in by_split.items()},
        "speakers": {s: len({x.speaker for x in u}) for s, u in by_split.items()},
        "festival_utterances": {
            s: sum(x.extra["synth"]["engine"] == "festival" for x in u) for s, u in by_split.items()
        },
        "distinct_words": {s: len({w for x in u for w in texts[x.id].split()}) for s, u in by_split.items()},
        # dev/test vocabulary never heard in (labelled) training: word types and running words
        "unseen_in_train": {s: unseen_rate(train_texts, [texts[x.id] for x in by_split[s]]) for s in ("dev", "test")},
        "bytes": sum(os.path.getsize(j.path) for j in todo if j.id not in failed),
        "wall_s": round(wall, 1),
        "jobs": jobs,
        "failed": failed,
    }


def synthesize(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    *,
    jobs: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Synthesize the corpus into ``out_dir``; returns the statistics written to corpus.json."""
    from .manifest import save_manifest

    config = config or SynthConfig()
    out_dir = Path(out_dir).resolve()
    stamp = out_dir / "corpus.json"
    settings = asdict(config)
    splits = [s for s in SPLITS if s != "pool" or config.pool_hours > 0]
    if not force and stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("config") == settings and all((out_dir / f"{s}.jsonl").is_file() for s in splits):
            return {**old["stats"], "reused": True}
    check_voices(ACCENTS, TRAIN_VARIANTS + DEV_VARIANTS + TEST_VARIANTS + POOL_VARIANTS)
    if config.festival_share > 0:
        check_festival(FESTIVAL_TRAIN + FESTIVAL_HELD_OUT)
    t0 = time.perf_counter()
    todo = plan(config, out_dir)
    _remove_stale(out_dir, {j.path for j in todo})
    jobs = max(1, jobs or os.cpu_count() or 1)
    results = _run_jobs(todo, jobs, progress)
    failed = {uid: err for uid, (_, err) in results.items() if err is not None}
    by_split: dict[str, list] = {s: [] for s in splits}
    for job in todo:
        seconds, err = results[job.id]
        if err is None:
            by_split[job.split].append(_utterance(job, seconds))
    for split, utts in by_split.items():
        save_manifest(out_dir / f"{split}.jsonl", utts)
    if "pool" in by_split:
        save_manifest(out_dir / "train_pool.jsonl", by_split["train"] + by_split["pool"])
    stats = _stats(by_split, todo, failed, time.perf_counter() - t0, jobs)
    if not failed:
        write_text(stamp, json.dumps({"version": 2, "config": settings, "stats": stats}, indent=1) + "\n")
    return stats
