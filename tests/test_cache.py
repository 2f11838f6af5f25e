"""Teacher cache: contents equal the teacher's outputs (dense and top-k), key refusal with
a reason, resume after an interruption, bad audio skipped and counted, the CLI."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_corpus, make_teacher

from asrkd.data import Rejects, load_manifest
from asrkd.kd.cache import (
    CacheIntegrityError,
    CacheKeyError,
    TeacherCache,
    build_cache,
    cache_key,
    cache_settings,
    collate_teacher,
    entry_fingerprint,
    teacher_fingerprint,
)
from asrkd.models.teachers import load_teacher


def _quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    manifest = make_corpus(root, "utts", 11, seed=0)
    spec = make_teacher(root / "teacher.pt")
    return root, manifest, spec


def _alone(teacher, utt) -> torch.Tensor:
    wave = utt.load_audio()
    logits, n = teacher(wave[None], torch.tensor([wave.numel()]))
    return torch.log_softmax(logits[0, : int(n[0])].float(), -1)


def test_dense_cache_holds_the_teachers_log_probs(corpus, tmp_path):
    _root, manifest, spec = corpus
    teacher = load_teacher(spec)
    utts = load_manifest(manifest)
    index = build_cache(
        teacher, utts, tmp_path / "c", shard_size=4, batch_seconds=3.0, num_workers=0, progress=False, log=_quiet
    )
    assert index["complete"] and len(index["shards"]) == 3
    cache = TeacherCache.open(tmp_path / "c")
    assert cache.kind == "dense" and cache.vocab == teacher.vocab and cache.frame_rate == teacher.frame_rate
    assert sorted(cache.ids) == sorted(u.id for u in utts) and len(cache) == 11
    for u in utts:
        t = cache.get(u.id)
        ref = _alone(teacher, u)
        assert t.log_probs.dtype == torch.float16 and t.frames == ref.shape[0]
        torch.testing.assert_close(t.log_probs.float(), ref, atol=2e-2, rtol=2e-3)  # batched run + fp16
    batch = collate_teacher([cache.get(u.id) for u in utts[:3]])
    assert batch["logits"].shape == (3, int(batch["lengths"].max()), len(teacher.vocab))
    assert batch["lengths"].tolist() == [cache.get(u.id).frames for u in utts[:3]]
    teacher_out = cache.targets([u.id for u in utts[:3]])
    assert teacher_out.kind == "dense" and teacher_out.topk_idx is None
    assert torch.equal(teacher_out.logits, batch["logits"]) and torch.equal(teacher_out.lengths, batch["lengths"])
    with pytest.warns(DeprecationWarning, match="teacher=cache.targets"):
        kw = cache.loss_inputs([u.id for u in utts[:3]])  # the older keyword form, still served
    assert set(kw) == {"teacher_logits", "teacher_lengths"}
    assert torch.equal(kw["teacher_logits"], batch["logits"]) and torch.equal(kw["teacher_lengths"], batch["lengths"])
    t = cache.get(utts[0].id)
    with pytest.warns(DeprecationWarning, match="log_probs"):
        assert t.logits is t.log_probs  # the former name of the field
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cache.get("nope")


def test_topk_cache(corpus, tmp_path):
    _root, manifest, spec = corpus
    teacher = load_teacher(spec)
    utts = load_manifest(manifest)
    build_cache(teacher, utts, tmp_path / "k", topk=3, num_workers=0, progress=False, log=_quiet)
    cache = TeacherCache.open(tmp_path / "k")
    assert cache.kind == "topk" and cache.topk == 3
    u = utts[4]
    t = cache.get(u.id)
    assert t.topk_idx.dtype == torch.int16 and t.topk_logprob.dtype == torch.float16
    values, idx = _alone(teacher, u).topk(3, dim=-1)
    torch.testing.assert_close(t.topk_logprob.float(), values, atol=2e-2, rtol=2e-3)
    agree = (t.topk_idx.long()[:, 0] == idx[:, 0]).float().mean()
    assert agree > 0.9  # the best token; near-ties may swap between a batched and a lone run
    batch = collate_teacher([cache.get(x.id) for x in utts[:4]])
    idx_b, lp_b, lens = batch["topk_idx"], batch["topk_logprob"], batch["lengths"]
    assert idx_b.shape == lp_b.shape == (4, int(lens.max()), 3)
    # Padding frames still hold distinct ids (the top-k op checks every frame).
    srt = idx_b.sort(-1).values
    assert (srt[..., 1:] != srt[..., :-1]).all()
    teacher_out = cache.targets([x.id for x in utts[:4]])
    assert teacher_out.kind == "topk" and teacher_out.logits is None
    assert torch.equal(teacher_out.topk_idx, idx_b) and torch.equal(teacher_out.topk_logprob, lp_b)
    assert torch.equal(teacher_out.lengths, lens)
    with pytest.warns(DeprecationWarning):
        kw = cache.loss_inputs([x.id for x in utts[:4]])
    assert set(kw) == {"teacher_topk", "teacher_lengths"}
    assert torch.equal(kw["teacher_topk"][0], idx_b) and torch.equal(kw["teacher_topk"][1], lp_b)


def test_key_refusal_says_which_part_differs(corpus, tmp_path):
    _root, manifest, spec = corpus
    teacher = load_teacher(spec)
    utts = load_manifest(manifest)
    out = tmp_path / "c"
    build_cache(teacher, utts, out, num_workers=0, progress=False, log=_quiet)
    again = build_cache(teacher, utts, out, num_workers=0, progress=False, log=_quiet)  # same key: nothing to do
    assert again["complete"]

    with pytest.raises(CacheKeyError, match=r"settings differ \(kind 'dense' -> 'topk', topk None -> 2\)"):
        build_cache(teacher, utts, out, topk=2, num_workers=0, progress=False, log=_quiet)
    other = load_teacher(make_teacher(tmp_path / "other.pt", seed=9))
    with pytest.raises(CacheKeyError, match="teacher differs.*spec.*weights hash"):
        build_cache(other, utts, out, num_workers=0, progress=False, log=_quiet)
    changed = load_manifest(manifest)
    changed[2].duration = round(changed[2].duration - 0.05, 4)
    with pytest.raises(CacheKeyError, match=rf"manifest differs.*1 changed.*{changed[2].id}: duration"):
        build_cache(teacher, changed, out, num_workers=0, progress=False, log=_quiet)
    with pytest.raises(CacheKeyError, match="2 entries added"):
        build_cache(
            teacher,
            utts + load_manifest(make_corpus(tmp_path, "more", 2, seed=5)),
            out,
            num_workers=0,
            progress=False,
            log=_quiet,
        )
    # The cache is untouched by the refusals, and usable.
    cache = TeacherCache.open(out)
    assert cache.kind == "dense" and len(cache) == 11
    with pytest.raises(CacheKeyError, match="expected"):
        TeacherCache.open(out, expect_key="0" * 64)

    # What the trainer checks: entries and teacher.
    assert len(cache.check_entries(utts)) == 11
    with pytest.raises(CacheKeyError, match=rf"1 manifest entries differ.*{changed[2].id}: duration"):
        cache.check_entries(changed)
    cache.check_teacher(teacher_fingerprint(teacher))
    with pytest.raises(CacheKeyError, match="another teacher"):
        cache.check_teacher(teacher_fingerprint(other))
    touched = load_manifest(manifest)
    st = os.stat(touched[0].audio)
    os.utime(touched[0].audio, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        with pytest.raises(CacheKeyError, match=rf"{touched[0].id}: file modification time"):
            cache.check_entries(touched)
    finally:
        os.utime(touched[0].audio, ns=(st.st_atime_ns, st.st_mtime_ns))
    extra = load_manifest(make_corpus(tmp_path, "extra", 1, seed=4))
    with pytest.raises(CacheKeyError, match="1 utterances are not in the cache, e.g. extra-000"):
        cache.check_entries(utts + extra)

    # --force replaces a cache whose key differs.
    build_cache(teacher, utts, out, topk=2, force=True, num_workers=0, progress=False, log=_quiet)
    assert TeacherCache.open(out).kind == "topk"


def test_key_parts_are_hashed():
    from asrkd.data import Utterance

    u = Utterance("a", "/nonexistent/a.wav", 1.0)
    fp = entry_fingerprint(u)
    assert fp["size"] is None and fp["audio"] == "/nonexistent/a.wav"
    s1, s2 = cache_settings("dense", None), cache_settings("topk", 8)
    k = cache_key("t", fp, s1)
    assert k == cache_key("t", dict(fp), dict(s1))
    assert len({k, cache_key("t2", fp, s1), cache_key("t", fp, s2), cache_key("t", {**fp, "duration": 1.1}, s1)}) == 4


class _Interrupted(Exception):
    pass


class _DiesAfter(torch.nn.Module):
    """A teacher that fails after ``n`` batches, like a process killed mid-run."""

    def __init__(self, teacher, n: int):
        super().__init__()
        self.teacher, self.n = teacher, n
        self.spec, self.vocab, self.blank_id = teacher.spec, teacher.vocab, teacher.blank_id
        self.frame_rate, self.sample_rate = teacher.frame_rate, teacher.sample_rate

    def state_dict(self, *args, **kwargs):  # the same weights as the wrapped teacher
        return self.teacher.state_dict(*args, **kwargs)

    def forward(self, waves, lengths):
        if self.n == 0:
            raise _Interrupted("killed")
        self.n -= 1
        return self.teacher(waves, lengths)


def test_resume_keeps_finished_shards_and_redoes_the_partial_one(corpus, tmp_path):
    _root, manifest, spec = corpus
    teacher = load_teacher(spec)
    utts = load_manifest(manifest)
    straight = tmp_path / "straight"
    build_cache(teacher, utts, straight, shard_size=3, batch_seconds=2.0, num_workers=0, progress=False, log=_quiet)

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(
            _DiesAfter(teacher, 4),
            utts,
            out,
            shard_size=3,
            batch_seconds=2.0,
            num_workers=0,
            progress=False,
            log=_quiet,
        )
    index = json.loads((out / "index.json").read_text())
    done = [s["file"] for s in index["shards"] if s["done"]]
    assert 0 < len(done) < len(index["shards"]) and not index["complete"]
    with pytest.raises(ValueError, match="unfinished"):
        TeacherCache.open(out)
    kept = {f: (out / f).stat().st_mtime_ns for f in done}
    import subprocess
    import sys

    from asrkd.atomic import _HOST

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    # what a kill mid-write leaves: a temporary named after a writer that is gone
    (out / f".shard-00003.pt.{_HOST}-{int(dead.stdout)}-abcd1234.tmp").write_bytes(b"half a shard")
    time.sleep(0.01)
    messages = []
    build_cache(
        teacher, utts, out, shard_size=99, batch_seconds=2.0, num_workers=0, progress=False, log=messages.append
    )
    assert any(f"{len(done)} of {len(index['shards'])} shards done" in m for m in messages)
    assert {f: (out / f).stat().st_mtime_ns for f in done} == kept  # finished shards not redone
    assert not list(out.glob(".*.tmp"))
    a, b = TeacherCache.open(straight), TeacherCache.open(out)
    assert a.key == b.key and len(b.index["shards"]) == len(a.index["shards"])  # the plan of the first run
    for u in utts:
        assert torch.equal(a.get(u.id).log_probs, b.get(u.id).log_probs)


def test_bad_audio_is_skipped_and_counted(tmp_path, capsys):
    manifest = make_corpus(tmp_path, "utts", 6, seed=0, bad={"1": "missing", "4": "corrupt"})
    spec = make_teacher(tmp_path / "teacher.pt")
    from asrkd.cli import main

    out = tmp_path / "c"
    args = [
        "cache-teacher",
        "--teacher",
        spec,
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--shard-size",
        "2",
        "--quiet",
        "--report",
        str(tmp_path / "rej.jsonl"),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "missing_file" in printed and "unreadable" in printed and "cached 4 utterances" in printed
    assert {json.loads(x)["id"] for x in (tmp_path / "rej.jsonl").read_text().splitlines()} == {"utts-001", "utts-004"}
    cache = TeacherCache.open(out)
    assert len(cache) == 4 and {r["kind"] for r in cache.rejected} == {"missing_file", "unreadable"}
    rejects = Rejects()
    kept = cache.check_entries(load_manifest(manifest), rejects)
    assert len(kept) == 4 and rejects.counts() == {"missing_file": 1, "unreadable": 1}

    assert main(args) == 0  # the same command again: complete, nothing to do
    assert "is complete" in capsys.readouterr().out
    assert main(args[:-3] + ["--topk", "2"]) == 1
    assert "settings differ" in capsys.readouterr().err


# ----------------------------------------------------------------------- shard integrity


def _build(teacher, utts, out, log=_quiet):
    return build_cache(teacher, utts, out, shard_size=4, batch_seconds=3.0, num_workers=0, progress=False, log=log)


def _flip(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of a file, keeping its size (silent corruption)."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + count] = bytes(b ^ 0xFF for b in raw[mid : mid + count])
    path.write_bytes(bytes(raw))


def _state(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.glob("shard-*.pt"))}


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    _root, manifest, spec = corpus
    out = tmp_path_factory.mktemp("clean") / "c"
    _build(load_teacher(spec), load_manifest(manifest), out)
    return out


def _same_as_clean(out: Path, clean: Path, utts) -> None:
    assert {n: b for n, (_, b) in _state(out).items()} == {n: b for n, (_, b) in _state(clean).items()}
    a, b = TeacherCache.open(clean), TeacherCache.open(out)
    for u in utts:
        assert torch.equal(a.get(u.id).log_probs, b.get(u.id).log_probs)


def test_flipped_bytes_are_refused_and_only_that_shard_is_redone(corpus, clean, tmp_path):
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    index = _build(teacher, utts, out)
    assert all(s["size"] == (out / s["file"]).stat().st_size and len(s["sha256"]) == 64 for s in index["shards"])
    _flip(out / "shard-00001.pt")
    with pytest.raises(CacheIntegrityError, match=r"shard-00001\.pt \(content hash differs.*cache-teacher") as err:
        TeacherCache.open(out)
    assert "shard-00000.pt" not in str(err.value) and "shard-00002.pt" not in str(err.value)
    before = _state(out)
    time.sleep(0.01)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert any("recomputing 1 of 3 shards" in m and "shard-00001.pt" in m for m in messages), messages
    assert not any("nothing to do" in m for m in messages)
    after = _state(out)
    assert after["shard-00000.pt"] == before["shard-00000.pt"] and after["shard-00002.pt"] == before["shard-00002.pt"]
    assert after["shard-00001.pt"] != before["shard-00001.pt"]
    _same_as_clean(out, clean, utts)
    messages.clear()
    _build(teacher, utts, out, log=messages.append)
    assert any("nothing to do" in m for m in messages)


def test_truncated_deleted_and_swapped_shards_are_named_and_redone(corpus, clean, tmp_path):
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    s0 = out / "shard-00000.pt"
    s1 = out / "shard-00001.pt"
    s1.write_bytes(s1.read_bytes()[:-100])
    (out / "shard-00002.pt").write_bytes(s0.read_bytes())  # another shard's content
    s0.unlink()
    with pytest.raises(CacheIntegrityError) as err:
        TeacherCache.open(out)
    msg = str(err.value)
    assert "3 of 3 shards" in msg and "cache-teacher" in msg
    assert re.search(r"shard-00000\.pt \(missing", msg) and re.search(
        r"shard-00001\.pt \(size \d+ bytes, expected", msg
    )
    assert re.search(r"shard-00002\.pt \(size|shard-00002\.pt \(content hash", msg)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert any("recomputing 3 of 3 shards" in m for m in messages)
    _same_as_clean(out, clean, utts)


def test_a_shard_holding_other_ids_is_refused(corpus, tmp_path):
    """Even with an index that vouches for it (hash and size updated), a shard whose ids are not
    the ones planned for it is never served: open() refuses it up front, and a shard swapped after
    open() is refused when it is loaded."""
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    index = _build(teacher, utts, out)
    good = (out / "shard-00001.pt").read_bytes()
    (out / "shard-00001.pt").write_bytes((out / "shard-00000.pt").read_bytes())
    vouched = json.loads(json.dumps(index))
    vouched["shards"][1].update(size=index["shards"][0]["size"], sha256=index["shards"][0]["sha256"])
    (out / "index.json").write_text(json.dumps(vouched))
    with pytest.raises(
        CacheIntegrityError, match=r"shard-00001\.pt \(holds utterances .* not the ones .*cache-teacher"
    ):
        TeacherCache.open(out)

    (out / "shard-00001.pt").write_bytes(good)
    (out / "index.json").write_text(json.dumps(index))
    cache = TeacherCache.open(out)
    (out / "shard-00001.pt").write_bytes((out / "shard-00000.pt").read_bytes())  # after open(): caught on load
    assert cache.get(utts[0].id).frames > 0
    with pytest.raises(CacheIntegrityError, match=r"shard-00001\.pt holds utterances .* not the ones .*cache-teacher"):
        cache.get(utts[4].id)


def test_an_index_without_shard_hashes_is_not_trusted(corpus, clean, tmp_path):
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    index = _build(teacher, utts, out)
    for s in index["shards"]:  # what asrkd wrote before shards were hashed
        del s["size"], s["sha256"]
    (out / "index.json").write_text(json.dumps(index))
    _flip(out / "shard-00002.pt")
    with pytest.raises(CacheIntegrityError, match=r"3 of 3 shards.*no content hash.*older asrkd.*cache-teacher"):
        TeacherCache.open(out)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert any("recomputing 3 of 3 shards" in m and "no content hash" in m for m in messages), messages
    _same_as_clean(out, clean, utts)


def _whisper_teacher(path: Path) -> str:
    """A tiny random whisper_ctc checkpoint: Whisper's log-mel front-end (hop 160) and conv stride 2."""
    from asrkd.data import CharTokenizer
    from asrkd.models.checkpoint import save_checkpoint
    from asrkd.models.teachers.whisper import WhisperCTC

    tok = CharTokenizer.build(["abcde"])
    torch.manual_seed(0)
    model = WhisperCTC(
        len(tok),
        n_mels=80,
        n_ctx=200,
        n_state=8,
        n_head=2,
        n_layer=1,
        head_layers=1,
        head_hidden=8,
        head_kernel=3,
        head_dropout=0.0,
    )
    save_checkpoint(
        path,
        {
            "arch": "whisper_ctc",
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
        },
    )
    return f"asrkd:{path}"


def test_a_clip_too_short_for_the_whisper_front_end_is_a_reject(tmp_path, capsys):
    import soundfile as sf

    from asrkd.cli import main

    manifest = make_corpus(tmp_path, "utts", 3, seed=0)
    short = tmp_path / "short.wav"
    sf.write(str(short), np.full(200, 0.1, dtype=np.float32), 16000, subtype="PCM_16")
    with manifest.open("a") as f:
        f.write(json.dumps({"id": "utts-short", "audio": str(short), "duration": 200 / 16000, "text": "a"}) + "\n")
    out = tmp_path / "c"
    args = [
        "cache-teacher",
        "--teacher",
        _whisper_teacher(tmp_path / "w.pt"),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--quiet",
        "--batch-seconds",
        "100",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "cached 3 utterances" in printed and "too_short" in printed
    cache = TeacherCache.open(out)
    assert len(cache) == 3 and [(r["id"], r["kind"]) for r in cache.rejected] == [("utts-short", "too_short")]
    assert "200 samples" in cache.rejected[0]["reason"] and "320" in cache.rejected[0]["reason"]


def test_training_refuses_a_cache_with_an_altered_shard(tmp_path):
    from test_train import base_config

    from asrkd.train.loop import TrainingError, train

    manifest = make_corpus(tmp_path, "train", 6, seed=0)
    spec = make_teacher(tmp_path / "teacher.pt")
    build_cache(
        load_teacher(spec),
        load_manifest(manifest),
        tmp_path / "cache",
        shard_size=3,
        num_workers=0,
        progress=False,
        log=_quiet,
    )
    _flip(tmp_path / "cache" / "shard-00001.pt")
    cfg = base_config(
        tmp_path,
        manifest,
        teacher={"cache": str(tmp_path / "cache")},
        loss={"kd_weight": 1.0},
        train={"epochs": 1, "max_steps": 1},
    )
    with pytest.raises(TrainingError, match=r"shard-00001\.pt \(content hash differs.*`asrkd cache-teacher`"):
        train(cfg)
    assert not (tmp_path / "exp" / "last.pt").exists()


# ----------------------------------------------------------------------- an edited index


def _edit_index(out: Path, edit) -> None:
    index = json.loads((out / "index.json").read_text())
    edit(index)
    (out / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_shard_file_names_in_the_index_are_never_used(corpus, clean, tmp_path, where):
    """r01: a shard's "file" pointing anywhere: the cache neither reads nor writes it."""
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    name = str(victim) if where == "absolute" else "../victim.txt"
    _edit_index(out, lambda d: d["shards"][1].update(file=name))
    with pytest.raises(
        CacheIntegrityError,
        match=rf"{re.escape(str(out / 'index.json'))}.*shard-00001\.pt.*"
        rf"{re.escape(repr(name))}",
    ):
        TeacherCache.open(out)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert victim.read_text() == "precious"
    assert any("recomputing 1 of 3 shards" in m and "shard-00001.pt" in m for m in messages), messages
    assert json.loads((out / "index.json").read_text())["shards"][1]["file"] == "shard-00001.pt"
    _same_as_clean(out, clean, utts)


def test_force_removes_only_the_files_the_cache_names(corpus, tmp_path):
    """r02: --force deletes index.json and shard-NNNNN.pt, never a path read from the index."""
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "notes.txt").write_text("mine")
    (out / "shard-00007.pt").write_bytes(b"an old shard of this cache")
    _edit_index(out, lambda d: d["shards"][2].update(file="../victim.txt"))
    build_cache(teacher, utts, out, topk=3, force=True, shard_size=4, num_workers=0, progress=False, log=_quiet)
    assert victim.read_text() == "precious" and (out / "notes.txt").read_text() == "mine"
    assert not (out / "shard-00007.pt").exists()
    assert sorted(p.name for p in out.glob("shard-*.pt")) == [f"shard-0000{n}.pt" for n in range(3)]
    assert TeacherCache.open(out).kind == "topk"


def _frames_plus_one(d):
    d["entries"]["utts-002"]["frames"] += 1


def _shard_seven(d):
    d["entries"]["utts-002"]["shard"] = 7


def _renamed_id(d):
    d["shards"][1]["ids"][0] = "utts-XXX"


def _id_in_two_shards(d):
    d["shards"][2]["ids"].append("utts-005")


def _negative_frames(d):
    d["entries"]["utts-009"]["frames"] = -3


def _frames_not_int(d):
    d["entries"]["utts-009"]["frames"] = "12"


def _entry_key(d):
    d["entries"]["utts-006"]["key"] = "0" * 64


@pytest.mark.parametrize(
    "edit, shard, why",
    [
        (_frames_plus_one, 0, "frame counts or offsets that differ from the index"),
        (_shard_seven, 0, r"'utts-002'.*shard 7.*out of range"),
        (_renamed_id, 1, "utts-XXX"),
        (_id_in_two_shards, 2, r"'utts-005'.*also in shard 1"),
        (_negative_frames, 2, r"'utts-009'.*frames -3"),
        (_frames_not_int, 2, r"'utts-009'.*frames '12'"),
        (_entry_key, 1, None),  # only cache-teacher, which has the manifest, can tell: no open() check
    ],
    ids=["frames", "shard7", "renamed-id", "two-shards", "negative-frames", "frames-str", "entry-key"],
)
def test_an_inconsistent_index_is_refused_up_front_and_recomputed(corpus, clean, tmp_path, edit, shard, why):
    """r03: an index that disagrees with itself or its shards is refused by open() (so training never
    fails midway) and cache-teacher recomputes the affected shard instead of saying "nothing to do"."""
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    _edit_index(out, edit)
    if why is not None:
        with pytest.raises(CacheIntegrityError, match=rf"shard-0000{shard}\.pt.*{why}.*cache-teacher"):
            TeacherCache.open(out)
    before = _state(out)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert not any("nothing to do" in m for m in messages), messages
    assert any(f"shard-0000{shard}.pt" in m and "recomputing" in m for m in messages), messages
    after = _state(out)
    assert all(after[k] == before[k] for k in before if k != f"shard-0000{shard}.pt")  # the others are kept
    _same_as_clean(out, clean, utts)
    assert len(TeacherCache.open(out).check_entries(utts)) == 11


def test_training_refuses_an_inconsistent_index_before_its_first_step(tmp_path):
    from test_train import base_config

    from asrkd.train.loop import TrainingError, train

    manifest = make_corpus(tmp_path, "train", 6, seed=0)
    spec = make_teacher(tmp_path / "teacher.pt")
    build_cache(
        load_teacher(spec),
        load_manifest(manifest),
        tmp_path / "cache",
        shard_size=3,
        num_workers=0,
        progress=False,
        log=_quiet,
    )
    _edit_index(
        tmp_path / "cache", lambda d: d["entries"]["train-004"].update(frames=d["entries"]["train-004"]["frames"] + 1)
    )
    cfg = base_config(
        tmp_path,
        manifest,
        teacher={"cache": str(tmp_path / "cache")},
        loss={"kd_weight": 1.0},
        train={"epochs": 1, "max_steps": 1},
    )
    with pytest.raises(TrainingError, match=r"shard-00001\.pt \(has frame counts.*`asrkd cache-teacher`"):
        train(cfg)
    assert not (tmp_path / "exp" / "last.pt").exists()


def _swap_vocab(d):
    v = d["teacher"]["vocab"]
    v[3], v[4] = v[4], v[3]


@pytest.mark.parametrize(
    "edit, part",
    [
        (_swap_vocab, "teacher vocabulary"),
        (lambda d: d["teacher"].update(blank_id=1), "teacher blank id"),
        (lambda d: d["teacher"].update(frame_rate=50.0), "teacher frame rate"),
        (lambda d: d["settings"].update(sample_rate=8000), "settings"),
        (lambda d: d["manifest"].update(hash="0" * 64), "manifest hash"),
    ],
    ids=["vocab", "blank", "frame-rate", "settings", "manifest"],
)
def test_an_index_whose_parts_no_longer_match_its_key_is_refused(corpus, clean, tmp_path, edit, part):
    """r04: the key is recomputed from the parts the index stores; an edited part is caught."""
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    _edit_index(out, edit)
    with pytest.raises(
        CacheIntegrityError,
        match=rf"{re.escape(str(out / 'index.json'))} was edited.*no longer "
        "match.*key.*cache-teacher",
    ):
        TeacherCache.open(out)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert any(
        f"index.json was edited: its {part} no longer match" in m and "recomputing the whole cache" in m
        for m in messages
    ), messages
    cache = TeacherCache.open(out)
    assert cache.vocab == teacher.vocab and cache.blank_id == teacher.blank_id
    assert cache.frame_rate == teacher.frame_rate
    _same_as_clean(out, clean, utts)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d.pop("key"), "no 'key'"),
        (lambda d: d.update(shards=None), "'shards' is null"),
        (lambda d: d.update(entries=[]), "'entries' is a list"),
        (lambda d: d.update(teacher="t"), "'teacher' is a string"),
        (lambda d: d["shards"].__setitem__(1, None), "index.json: its record is null"),
        (lambda d: d["teacher"].pop("vocab"), "'teacher' has no 'vocab'"),
    ],
    ids=["no-key", "shards-null", "entries-list", "teacher-str", "shard-null", "no-vocab"],
)
def test_an_unusable_index_is_named_and_the_cache_recomputed(corpus, clean, tmp_path, capsys, edit, problem):
    """Item 4: the index's path and what is wrong with it, never a bare KeyError / TypeError."""
    from asrkd.cli import main

    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    _edit_index(out, edit)
    with pytest.raises(CacheIntegrityError, match=rf"{re.escape(str(out / 'index.json'))}.*{re.escape(problem)}"):
        TeacherCache.open(out)
    args = [
        "cache-teacher",
        "--teacher",
        spec,
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--num-workers",
        "0",
        "--shard-size",
        "4",
        "--batch-seconds",
        "3",
        "--quiet",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "index.json" in printed and problem in printed and "recomputing" in printed, printed
    _same_as_clean(out, clean, utts)


def test_an_index_that_is_not_json_is_named_and_the_cache_recomputed(corpus, clean, tmp_path):
    _root, manifest, spec = corpus
    teacher, utts = load_teacher(spec), load_manifest(manifest)
    out = tmp_path / "c"
    _build(teacher, utts, out)
    (out / "index.json").write_text('{"format": "asrkd-teacher-cache-v1", "key": ')  # a truncated write
    with pytest.raises(CacheIntegrityError, match=rf"{re.escape(str(out / 'index.json'))} is not valid JSON"):
        TeacherCache.open(out)
    messages = []
    _build(teacher, utts, out, log=messages.append)
    assert any("not valid JSON" in m and "recomputing the whole cache" in m for m in messages), messages
    _same_as_clean(out, clean, utts)
