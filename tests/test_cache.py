"""Teacher cache: contents equal the teacher's outputs (dense and top-k), key refusal with
a reason, resume after an interruption, bad audio skipped and counted, the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from asrkd.cache import (CacheKeyError, TeacherCache, build_cache, cache_key, cache_settings, collate_teacher,
                         entry_fingerprint, teacher_fingerprint)
from asrkd.data import Rejects, load_manifest
from asrkd.teachers import load_teacher
from test_train import make_corpus, make_teacher


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
    root, manifest, spec = corpus
    teacher = load_teacher(spec)
    utts = load_manifest(manifest)
    index = build_cache(teacher, utts, tmp_path / "c", shard_size=4, batch_seconds=3.0, num_workers=0,
                        progress=False, log=_quiet)
    assert index["complete"] and len(index["shards"]) == 3
    cache = TeacherCache.open(tmp_path / "c")
    assert cache.kind == "dense" and cache.vocab == teacher.vocab and cache.frame_rate == teacher.frame_rate
    assert sorted(cache.ids) == sorted(u.id for u in utts) and len(cache) == 11
    for u in utts:
        t = cache.get(u.id)
        ref = _alone(teacher, u)
        assert t.logits.dtype == torch.float16 and t.frames == ref.shape[0]
        torch.testing.assert_close(t.logits.float(), ref, atol=2e-2, rtol=2e-3)  # batched run + fp16
    batch = collate_teacher([cache.get(u.id) for u in utts[:3]])
    assert batch["logits"].shape == (3, int(batch["lengths"].max()), len(teacher.vocab))
    assert batch["lengths"].tolist() == [cache.get(u.id).frames for u in utts[:3]]
    kw = cache.loss_inputs([u.id for u in utts[:3]])
    assert set(kw) == {"teacher_logits", "teacher_lengths"}
    assert torch.equal(kw["teacher_logits"], batch["logits"]) and torch.equal(kw["teacher_lengths"], batch["lengths"])
    with pytest.raises(KeyError, match="not in the teacher cache"):
        cache.get("nope")


def test_topk_cache(corpus, tmp_path):
    root, manifest, spec = corpus
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
    kw = cache.loss_inputs([x.id for x in utts[:4]])
    assert set(kw) == {"teacher_topk", "teacher_lengths"}
    assert torch.equal(kw["teacher_topk"][0], idx_b) and torch.equal(kw["teacher_topk"][1], lp_b)


def test_key_refusal_says_which_part_differs(corpus, tmp_path):
    root, manifest, spec = corpus
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
        build_cache(teacher, utts + load_manifest(make_corpus(tmp_path, "more", 2, seed=5)), out, num_workers=0,
                    progress=False, log=_quiet)
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
    root, manifest, spec = corpus
    teacher = load_teacher(spec)
    utts = load_manifest(manifest)
    straight = tmp_path / "straight"
    build_cache(teacher, utts, straight, shard_size=3, batch_seconds=2.0, num_workers=0, progress=False, log=_quiet)

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(_DiesAfter(teacher, 4), utts, out, shard_size=3, batch_seconds=2.0, num_workers=0,
                    progress=False, log=_quiet)
    index = json.loads((out / "index.json").read_text())
    done = [s["file"] for s in index["shards"] if s["done"]]
    assert 0 < len(done) < len(index["shards"]) and not index["complete"]
    with pytest.raises(ValueError, match="unfinished"):
        TeacherCache.open(out)
    kept = {f: (out / f).stat().st_mtime_ns for f in done}
    (out / ".shard-00003.pt.abc.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves
    time.sleep(0.01)
    messages = []
    build_cache(teacher, utts, out, shard_size=99, batch_seconds=2.0, num_workers=0, progress=False,
                log=messages.append)
    assert any(f"{len(done)} of {len(index['shards'])} shards done" in m for m in messages)
    assert {f: (out / f).stat().st_mtime_ns for f in done} == kept  # finished shards not redone
    assert not list(out.glob(".*.tmp"))
    a, b = TeacherCache.open(straight), TeacherCache.open(out)
    assert a.key == b.key and len(b.index["shards"]) == len(a.index["shards"])  # the plan of the first run
    for u in utts:
        assert torch.equal(a.get(u.id).logits, b.get(u.id).logits)


def test_bad_audio_is_skipped_and_counted(tmp_path, capsys):
    manifest = make_corpus(tmp_path, "utts", 6, seed=0, bad={"1": "missing", "4": "corrupt"})
    spec = make_teacher(tmp_path / "teacher.pt")
    from asrkd.cli import main

    out = tmp_path / "c"
    args = ["cache-teacher", "--teacher", spec, "--manifest", str(manifest), "--out", str(out), "--num-workers", "0",
            "--shard-size", "2", "--quiet", "--report", str(tmp_path / "rej.jsonl")]
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
    assert main(args[:-3] + ["--topk", "2"]) == 2
    assert "settings differ" in capsys.readouterr().err
