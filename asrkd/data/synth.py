"""``asrkd synth OUT_DIR``: the offline mini corpus, synthesized with espeak-ng.

Sentences of 3-15 words are drawn from the packaged word list (``words.txt``: 6000 common
English words; frequent words are drawn more often, with Zipf-like weights). Each utterance
is spoken by a pseudo-speaker ``<accent voice>+<variant>`` at a random rate and pitch.
Train, dev and test use disjoint variant sets, so dev/test speakers are never heard in
training. Audio is 16 kHz mono 16-bit WAV (espeak-ng's 22.05 kHz resampled with
torchaudio), trailing silence trimmed. Everything is drawn from ``--seed`` before the
(parallel) synthesis starts, so a seed gives the same corpus whatever ``--jobs``.

Writes ``OUT_DIR/{train,dev,test}.jsonl``, ``OUT_DIR/wavs/<split>/<id>.wav`` and
``OUT_DIR/corpus.json`` (settings + statistics; a rerun with the same settings is a no-op).
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
TRAIN_VARIANTS = (
    "Alex",
    "Andy",
    "Annie",
    "Denis",
    "Diogo",
    "Gene",
    "Gene2",
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
    "iven4",
    "john",
    "klatt4",
    "klatt5",
    "m1",
    "m2",
    "m3",
    "m6",
    "m7",
    "m8",
    "marcelo",
    "max",
    "pablo",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "robosoft2",
    "robosoft4",
    "robosoft5",
    "sandro",
    "steph",
    "steph2",
    "steph3",
    "victor",
)
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


@dataclass
class SynthConfig:
    train_hours: float = 4.0
    dev_minutes: float = 20.0
    test_minutes: float = 20.0
    seed: int = 0
    min_words: int = 3
    max_words: int = 15

    @classmethod
    def quick(cls, seed: int = 0) -> "SynthConfig":
        return cls(train_hours=4 / 60, dev_minutes=1.0, test_minutes=1.0, seed=seed)


@dataclass
class Job:
    id: str
    split: str
    text: str
    voice: str
    variant: str
    rate: int
    pitch: int
    path: str

    @property
    def speaker(self) -> str:
        return f"{self.voice}+{self.variant}"


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


# -- planning ------------------------------------------------------------------------------------
def estimate_seconds(text: str, rate: int) -> float:
    return _SEC_FIXED + len(text) * _SEC_PER_CHAR_175 * 175.0 / rate


def plan(config: SynthConfig, out_dir: Path) -> list[Job]:
    """Every utterance of the corpus, drawn from ``config.seed`` (no audio yet)."""
    words = load_words()
    cum = list(accumulate(1.0 / (r + 50.0) ** 0.9 for r in range(len(words))))
    splits = (
        ("train", config.train_hours * 3600, TRAIN_VARIANTS),
        ("dev", config.dev_minutes * 60, DEV_VARIANTS),
        ("test", config.test_minutes * 60, TEST_VARIANTS),
    )
    jobs: list[Job] = []
    for k, (split, seconds, variants) in enumerate(splits):
        rng = random.Random(config.seed * 7919 + k)
        total, i = 0.0, 0
        while total < seconds:
            n = rng.randint(config.min_words, config.max_words)
            text = " ".join(words[bisect.bisect_left(cum, rng.random() * cum[-1])] for _ in range(n))
            rate = rng.randint(*RATE_WPM)
            job = Job(
                id=f"{split}-{i:06d}",
                split=split,
                text=text,
                voice=rng.choice(ACCENTS),
                variant=rng.choice(variants),
                rate=rate,
                pitch=rng.randint(*PITCH),
                path=str(out_dir / "wavs" / split / f"{split}-{i:06d}.wav"),
            )
            jobs.append(job)
            total += estimate_seconds(text, rate)
            i += 1
    return jobs


# -- synthesis (runs in worker processes) -------------------------------------------------------
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def synthesize_one(job: Job) -> tuple[str, float | None, str | None]:
    """Speak one job to its WAV file; returns ``(id, seconds, error)``."""
    import numpy as np
    import torch

    from .audio import AudioError, decode_bytes, resample, write_audio

    cmd = ["espeak-ng", "-v", job.speaker, "-s", str(job.rate), "-p", str(job.pitch), "--stdout", job.text]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return job.id, None, "espeak-ng timed out"
    if proc.returncode != 0:
        return job.id, None, f"espeak-ng exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
    try:
        wave, rate = decode_bytes(proc.stdout)
    except AudioError as err:
        return job.id, None, f"espeak-ng output: {err}"
    with torch.no_grad():
        wave16 = resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, SAMPLE_RATE).numpy()
    loud = np.flatnonzero(np.abs(wave16) > SILENCE_LEVEL)
    if loud.size == 0:
        return job.id, None, "espeak-ng produced silence"
    end = min(len(wave16), int(loud[-1]) + int(TRAILING_SILENCE_S * SAMPLE_RATE))
    wave16 = wave16[:end]
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    write_audio(job.path, wave16, SAMPLE_RATE)
    return job.id, len(wave16) / SAMPLE_RATE, None


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Delete WAVs of an earlier, different corpus in ``out_dir/wavs`` (only files named as
    this module names them), so the folder holds exactly what the manifests list."""
    for split in ("train", "dev", "test"):
        folder = out_dir / "wavs" / split
        if folder.is_dir():
            for f in folder.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].wav"):
                if str(f) not in keep:
                    f.unlink()


def synthesize(
    out_dir: str | Path,
    config: SynthConfig | None = None,
    *,
    jobs: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Synthesize the corpus into ``out_dir``; returns the statistics written to corpus.json."""
    from tqdm import tqdm

    from .manifest import Utterance, save_manifest

    config = config or SynthConfig()
    out_dir = Path(out_dir).resolve()
    stamp = out_dir / "corpus.json"
    settings = asdict(config)
    if not force and stamp.is_file():
        old = json.loads(stamp.read_text())
        if old.get("config") == settings and all((out_dir / f"{s}.jsonl").is_file() for s in ("train", "dev", "test")):
            return {**old["stats"], "reused": True}
    check_voices(ACCENTS, TRAIN_VARIANTS + DEV_VARIANTS + TEST_VARIANTS)
    t0 = time.perf_counter()
    todo = plan(config, out_dir)
    _remove_stale(out_dir, {j.path for j in todo})
    jobs = max(1, jobs or os.cpu_count() or 1)
    results: dict[str, tuple[float | None, str | None]] = {}
    with (
        ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool,
        tqdm(
            total=len(todo), desc="synthesizing", unit="utt", disable=not progress, file=sys.stderr, dynamic_ncols=True
        ) as bar,
    ):
        for uid, seconds, err in pool.map(synthesize_one, todo, chunksize=8):
            results[uid] = (seconds, err)
            bar.update(1)
    failed = {uid: err for uid, (_, err) in results.items() if err is not None}
    by_split: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    for job in todo:
        seconds, err = results[job.id]
        if err is not None:
            continue
        by_split[job.split].append(
            Utterance(
                id=job.id,
                audio=job.path,
                duration=round(seconds, 4),
                text=job.text,
                speaker=job.speaker,
                extra={"synth": {"voice": job.speaker, "rate": job.rate, "pitch": job.pitch}},
            )
        )
    for split, utts in by_split.items():
        save_manifest(out_dir / f"{split}.jsonl", utts)
    wall = time.perf_counter() - t0
    disk = sum(os.path.getsize(j.path) for j in todo if j.id not in failed)
    stats = {
        "utterances": {s: len(u) for s, u in by_split.items()},
        "seconds": {s: round(sum(x.duration for x in u), 1) for s, u in by_split.items()},
        "speakers": {s: len({x.speaker for x in u}) for s, u in by_split.items()},
        "distinct_words": {s: len({w for x in u for w in x.text.split()}) for s, u in by_split.items()},
        "bytes": disk,
        "wall_s": round(wall, 1),
        "jobs": jobs,
        "failed": failed,
    }
    if not failed:
        write_text(stamp, json.dumps({"version": 1, "config": settings, "stats": stats}, indent=1) + "\n")
    return stats
