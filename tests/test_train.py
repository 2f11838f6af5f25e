"""Trainer: a tiny end-to-end training (loss goes down, checkpoints reload), label-free KD
from a cache, the teacher in the loop, NaN/Inf handling, empty batches, config and schedule.

The corpus is synthetic and learnable in seconds: every letter of a..e is a 100 ms tone of
its own pitch, a space 60 ms of near-silence. The helpers here (``make_corpus``,
``make_teacher``, ``base_config``) are shared by the other trainer and cache tests.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asrkd.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from asrkd.train.config import DEFAULTS, ConfigError, load_config, validate
from asrkd.train.schedule import LRSchedule

SR = 16000
LETTERS = "abcde"


def _tone_wave(text: str, rng: np.random.Generator) -> np.ndarray:
    parts = []
    for ch in text:
        if ch == " ":
            parts.append(0.003 * rng.standard_normal(int(0.06 * SR)))
        else:
            f = 300.0 + 170.0 * LETTERS.index(ch)
            t = np.arange(int(0.1 * SR)) / SR
            parts.append(0.4 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) + 0.01 * rng.standard_normal(t.size))
    lead = 0.003 * rng.standard_normal(int(0.05 * SR))
    return np.concatenate([lead, *parts, lead]).astype(np.float32)


def make_corpus(
    root: Path, name: str, n: int, *, seed: int = 0, text: bool = True, bad: dict[str, str] | None = None
) -> Path:
    """Write ``n`` tone utterances under ``root/name/`` and their manifest ``root/name.jsonl``.

    ``text=False`` leaves the transcripts out (unlabelled audio). ``bad`` maps utterance
    index (as str) -> ``"missing"`` | ``"corrupt"`` to plant bad audio."""
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        words = ["".join(pyrng.choice(LETTERS) for _ in range(pyrng.randint(1, 3))) for _ in range(pyrng.randint(2, 3))]
        sentence = " ".join(words)
        wave = _tone_wave(sentence, rng)
        path = folder / f"{name}-{i:03d}.wav"
        sf.write(str(path), wave, SR, subtype="PCM_16")
        kind = (bad or {}).get(str(i))
        if kind == "missing":
            path.unlink()
        elif kind == "corrupt":
            path.write_bytes(b"RIFF\x00\x00\x00\x00garbage, not audio at all" * 10)
        entry = {
            "id": f"{name}-{i:03d}",
            "audio": str(path),
            "duration": round(len(wave) / SR, 4),
            "speaker": f"spk{i % 3}",
        }
        if text:
            entry["text"] = sentence
        lines.append(json.dumps(entry))
    manifest = root / f"{name}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


TINY_MODEL = {
    "arch": "conformer",
    "size": "xs",
    "overrides": {
        "d_model": 48,
        "num_heads": 2,
        "ffn_dim": 96,
        "num_layers": 1,
        "kernel_size": 3,
        "frontend_channels": 4,
        "chunk_size": 4,
    },
}


def base_config(tmp_path: Path, train_manifest: Path, dev_manifest: Path | None = None, **sections) -> dict:
    """A full config for a tiny, fast, deterministic run; ``sections`` update sub-dicts."""
    cfg = load_config(
        None,
        base={
            "exp_dir": str(tmp_path / "exp"),
            "seed": 3,
            "data": {
                "train": str(train_manifest),
                "dev": str(dev_manifest) if dev_manifest else None,
                "features": {"n_mels": 40},
                "num_workers": 0,
                "max_seconds": 5.0,
                "cmvn_utterances": 50,
                "specaug": {"freq_masks": 1, "freq_width": 5, "time_masks": 1, "time_width": 5},
            },
            "model": copy.deepcopy(TINY_MODEL),
            "optim": {"lr": 1e-2, "warmup_steps": 3, "clip_grad_norm": 5.0},
            "train": {"epochs": 3, "log_every": 1, "progress": False, "tensorboard": False, "threads": 1},
        },
    )
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def make_teacher(path: Path, seed: int = 1, *, n_mels: int = 40) -> str:
    """A tiny random asrkd checkpoint usable as a teacher (``asrkd:PATH``): same letters,
    25 frames/s like the students. Its outputs are arbitrary but deterministic."""
    from asrkd.data import CharTokenizer, FeatureConfig, GlobalCMVN
    from asrkd.models.students import build_student

    tok = CharTokenizer.build(["abcde"])
    torch.manual_seed(seed)
    model = build_student("conformer", "xs", len(tok), input_dim=n_mels, **{**TINY_MODEL["overrides"], "dropout": 0.0})
    save_checkpoint(
        path,
        {
            "arch": "conformer_ctc",
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": FeatureConfig(n_mels=n_mels).to_dict(),
            "cmvn": GlobalCMVN.identity(n_mels).to_dict(),
        },
    )
    return f"asrkd:{path}"


def params(ckpt_path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt_path)["model"]


# ----------------------------------------------------------------------------- end to end


def test_tiny_training_loss_decreases_and_checkpoint_reloads(tmp_path):
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 24, seed=0)
    dev_m = make_corpus(tmp_path, "dev", 6, seed=1)
    cfg = base_config(tmp_path, train_m, dev_m, train={"epochs": 8, "tensorboard": True})
    summary = train(cfg)
    hist = summary["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 9))
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"], hist
    assert all(0.0 <= h["dev_cer"] <= 100.0 and "dev_wer" in h for h in hist)
    best_cer = min(h["dev_cer"] for h in hist)
    assert best_cer < 50.0 and best_cer < hist[0]["dev_cer"], hist  # it learns the tones
    assert summary["nonfinite_skipped"] == 0

    exp = Path(cfg["exp_dir"])
    ckpt = load_checkpoint(exp / "last.pt")
    for key in (
        "arch",
        "model_kwargs",
        "model",
        "tokenizer",
        "features",
        "cmvn",
        "optimizer",
        "scheduler",
        "sampler",
        "rng",
        "loss_rng",
        "config",
        "history",
        "best",
        "step",
        "epoch",
    ):
        assert key in ckpt, key
    assert ckpt["epoch"] == 8 and ckpt["batches_done"] == 0 and len(ckpt["rng"]) == 1
    best_epoch = summary["best"]["epoch"]
    assert summary["best"]["dev_cer"] == min(h["dev_cer"] for h in hist)
    assert hist[best_epoch - 1]["dev_cer"] == summary["best"]["dev_cer"]
    assert json.loads((exp / "history.json").read_text())["history"] == hist
    assert list((exp / "tensorboard").glob("events.out.tfevents.*"))

    # The checkpoint alone rebuilds the student and its front end.
    from asrkd.data import FeatureConfig, FeaturePipeline, GlobalCMVN, load_tokenizer

    model, state = load_model(exp / "last.pt")
    model.eval()
    front = FeaturePipeline(FeatureConfig.from_dict(state["features"]), GlobalCMVN.from_dict(state["cmvn"])).eval()
    tok = load_tokenizer(state["tokenizer"])
    wave = torch.from_numpy(sf.read(str(tmp_path / "dev" / "dev-000.wav"), dtype="float32")[0])
    feats, n = front(wave[None], torch.tensor([wave.numel()]))
    logits, out_len = model(feats, n)
    assert logits.shape[-1] == len(tok) and int(out_len[0]) == int(n[0]) // model.subsampling
    best_model, _ = load_model(exp / "best.pt")
    assert set(best_model.state_dict()) == set(model.state_dict())


def test_kd_from_cache_without_text(tmp_path):
    """Label-free KD: no transcripts, the KD term alone trains the student."""
    from asrkd.data import load_manifest
    from asrkd.kd.cache import build_cache
    from asrkd.models.teachers import load_teacher
    from asrkd.train.loop import train

    unlabelled = make_corpus(tmp_path, "unlab", 16, seed=0, text=False)
    spec = make_teacher(tmp_path / "teacher.pt")
    build_cache(
        load_teacher(spec),
        load_manifest(unlabelled),
        tmp_path / "cache",
        topk=4,
        num_workers=0,
        progress=False,
        log=lambda m: None,
    )
    cfg = base_config(
        tmp_path,
        unlabelled,
        teacher={"cache": str(tmp_path / "cache")},
        loss={"ctc_weight": 1.0, "kd_weight": 1.0},
        train={"epochs": 3},
    )
    summary = train(cfg)
    hist = summary["history"]
    assert all(h["train_ctc"] == 0.0 for h in hist)  # nothing labelled: CTC never contributes
    assert all(h["train_kd"] > 0 for h in hist)
    assert hist[-1]["train_kd"] < hist[0]["train_kd"], hist

    # A CTC-only config on unlabelled data has nothing to learn from: said clearly.
    from asrkd.train.loop import TrainingError

    cfg2 = base_config(tmp_path / "b", unlabelled)
    with pytest.raises(TrainingError, match="no usable training utterance"):
        train(cfg2)


def test_teacher_in_the_loop_and_cache_teacher_check(tmp_path):
    from asrkd.data import load_manifest
    from asrkd.kd.cache import CacheKeyError, build_cache
    from asrkd.models.teachers import load_teacher
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 12, seed=0)
    spec = make_teacher(tmp_path / "teacher.pt")
    cfg = base_config(
        tmp_path, train_m, teacher={"spec": spec}, loss={"kd_weight": 0.5}, train={"epochs": 1, "max_steps": 2}
    )
    summary = train(cfg)
    assert summary["step"] == 2 and summary["history"][-1]["train_kd"] > 0

    # Cache made with one teacher, training asked to check it against another one.
    build_cache(
        load_teacher(spec),
        load_manifest(train_m),
        tmp_path / "cache",
        num_workers=0,
        progress=False,
        log=lambda m: None,
    )
    other = make_teacher(tmp_path / "other.pt", seed=2)
    cfg = base_config(
        tmp_path / "x",
        train_m,
        teacher={"cache": str(tmp_path / "cache"), "spec": other},
        loss={"kd_weight": 0.5},
        train={"epochs": 1, "max_steps": 1},
    )
    with pytest.raises(CacheKeyError, match="another teacher.*weights hash"):
        train(cfg)


def test_resume_in_process_equals_straight_run_with_workers(tmp_path):
    """Stop mid-epoch (max_steps) and resume: the same parameters as a run never stopped,
    with DataLoader workers loading (and augmenting) the data."""
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 16, seed=0)
    data = {"num_workers": 1, "max_seconds": 2.5}
    straight = base_config(tmp_path / "a", train_m, data=data, train={"epochs": 2})
    train(straight)
    stopped = base_config(tmp_path / "b", train_m, data=data, train={"epochs": 2, "max_steps": 3})
    first = train(stopped)
    assert first["step"] == 3
    ckpt = load_checkpoint(tmp_path / "b" / "exp" / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["batches_done"] == 3  # mid-epoch
    resumed_cfg = base_config(tmp_path / "b", train_m, data=data, train={"epochs": 2})
    train(resumed_cfg, resume_from=tmp_path / "b" / "exp" / "last.pt")
    a, b = params(tmp_path / "a" / "exp" / "last.pt"), params(tmp_path / "b" / "exp" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = load_checkpoint(tmp_path / "a" / "exp" / "last.pt"), load_checkpoint(tmp_path / "b" / "exp" / "last.pt")
    assert ca["step"] == cb["step"]
    assert [h["train_loss"] for h in ca["history"]][-1] == [h["train_loss"] for h in cb["history"]][-1]


# ----------------------------------------------------------------------------- dev WER = asrkd wer


@pytest.fixture(scope="module")
def trained_with_dev(tmp_path_factory):
    """A run that learns (dev CER well below 100 %), and its dev manifest."""
    from asrkd.train.loop import train

    root = tmp_path_factory.mktemp("dev_wer")
    train_m = make_corpus(root, "train", 24, seed=0)
    dev_m = make_corpus(root, "dev", 6, seed=1)
    cfg = base_config(root, train_m, dev_m, train={"epochs": 8})
    summary = train(cfg)
    return root, dev_m, Path(cfg["exp_dir"]), summary


def _decode_and_score(root: Path, ckpt: Path, manifest: Path, drop: tuple[str, ...] = ()) -> dict:
    """`asrkd decode` (full-utterance, greedy) then `asrkd wer --normalize`; ``drop``: ids
    whose hypothesis lines are removed in between."""
    from asrkd.cli import main as cli_main

    hyp, out = root / "hyp.txt", root / "wer.json"
    assert (
        cli_main(
            [
                "decode",
                "--checkpoint",
                str(ckpt),
                "--manifest",
                str(manifest),
                "--out",
                str(hyp),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    hyp.write_text("".join(line + "\n" for line in hyp.read_text().splitlines() if line.split()[0] not in drop))
    assert cli_main(["wer", "--normalize", "--ref", str(manifest), "--hyp", str(hyp), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_dev_wer_is_what_decode_and_wer_give(trained_with_dev):
    """best.pt decoded with `asrkd decode` and scored with `asrkd wer --normalize` gives exactly
    the dev WER/CER the trainer logged for that epoch (and picked best.pt by)."""
    root, dev_m, exp, summary = trained_with_dev
    best = summary["best"]
    entry = summary["history"][best["epoch"] - 1]
    assert 0.0 < entry["dev_cer"] < 50.0, summary["history"]  # it learnt: a comparison that can fail
    scored = _decode_and_score(root, exp / "best.pt", dev_m)
    assert scored["missing_hyp"] == 0 and scored["utterances"] == 6
    assert (scored["wer"], scored["cer"]) == (entry["dev_wer"], entry["dev_cer"]) == (best["dev_wer"], best["dev_cer"])


def test_rejected_dev_utterances_count_as_deletions(trained_with_dev):
    """Dev utterances the dataset rejects (missing audio, characters outside the vocabulary)
    are references without a hypothesis: all their words are deletions, as in `asrkd wer`."""
    from asrkd.data import FeatureConfig, GlobalCMVN, load_tokenizer
    from asrkd.train.build import Data, build_dev
    from asrkd.train.loop import evaluate

    root, dev_m, exp, summary = trained_with_dev
    rows = [json.loads(x) for x in dev_m.read_text().splitlines()]
    rows.append({**rows[0], "id": "dev-missing", "audio": str(root / "nowhere.wav")})
    rows.append({**rows[1], "id": "dev-oov", "text": "abc 日本"})  # 日本: outside the vocabulary
    bigger = root / "dev_rejects.jsonl"
    bigger.write_text("".join(json.dumps(r) + "\n" for r in rows))

    model, state = load_model(exp / "best.pt")
    cfg = load_checkpoint(exp / "best.pt")["config"]
    cfg["data"]["dev"] = str(bigger)
    data = Data(
        [],
        load_tokenizer(state["tokenizer"]),
        FeatureConfig.from_dict(state["features"]),
        GlobalCMVN.from_dict(state["cmvn"]),
        None,
    )
    dev = build_dev(cfg, data, model, log=lambda msg: None)
    assert sorted(dev.refs) == sorted(r["id"] for r in rows)
    res = evaluate(model, dev.loader, dev.refs, data.tokenizer, torch.device("cpu"), rejects=dev.rejects)
    assert res["missing"] == 2 and res["utterances"] == 8
    assert dev.rejects.counts() == {"missing_file": 1, "oov_chars": 1}
    # what `asrkd wer` says when the two have no hypothesis line
    expected = _decode_and_score(root, exp / "best.pt", bigger, drop=("dev-missing", "dev-oov"))
    assert expected["missing_hyp"] == 2 and expected["deletions"] >= len(["abc", "日本"]) + len(rows[0]["text"].split())
    assert (res["wer"], res["cer"]) == (expected["wer"], expected["cer"])
    assert res["cer"] > summary["best"]["dev_cer"]  # the two are counted, not left out


# ----------------------------------------------------------------------------- robustness


def test_nonfinite_loss_skips_the_step_then_stops(tmp_path, monkeypatch):
    from asrkd.kd.loss import DistillationLoss
    from asrkd.train import loop as train_mod

    train_m = make_corpus(tmp_path, "train", 12, seed=0)
    original = DistillationLoss.forward
    calls = {"n": 0}

    def nan_on_second_call(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(DistillationLoss, "forward", nan_on_second_call)
    summary = train_mod.train(base_config(tmp_path / "a", train_m, train={"epochs": 1}))
    assert summary["nonfinite_skipped"] == 1
    assert summary["step"] >= 2 and math.isfinite(summary["history"][-1]["train_loss"])

    def always_inf(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.loss = out.loss + float("inf")
        return out

    monkeypatch.setattr(DistillationLoss, "forward", always_inf)
    with pytest.raises(train_mod.TrainingError, match="3 optimizer steps in a row had a NaN/Inf"):
        train_mod.train(base_config(tmp_path / "b", train_m, train={"epochs": 1, "max_nonfinite": 3}))


def test_bad_audio_is_skipped_counted_and_empty_batches_pass(tmp_path, capsys):
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 10, seed=0, bad={"2": "missing", "5": "corrupt"})
    # One utterance per batch: the bad ones leave whole batches empty.
    cfg = base_config(tmp_path, train_m, data={"max_batch_size": 1}, train={"epochs": 1})
    summary = train(cfg)
    assert summary["rejected"] == {"missing_file": 1, "unreadable": 1}
    assert summary["step"] == 10 and summary["nonfinite_skipped"] == 0
    out = capsys.readouterr().out
    assert "missing_file" in out and "unreadable" in out and "no usable utterance on any rank" in out
    report = [json.loads(x) for x in (Path(cfg["exp_dir"]) / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"] for r in report} == {"train-002", "train-005"}


# ----------------------------------------------------------------------------- config and schedule


def test_config_file_overrides_and_errors(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("exp_dir: x\ndata:\n  train: t.jsonl\noptim:\n  lr: 0.002\nmodel:\n  overrides: {dropout: 0.2}\n")
    cfg = load_config(
        conf,
        [
            "optim.lr=3e-4",
            "train.epochs=7",
            "model.overrides.chunk_size=8",
            "data.speed_perturb=[0.9, 1.0, 1.1]",
            "teacher.spec=null",
        ],
    )
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 7
    assert cfg["model"]["overrides"] == {"dropout": 0.2, "chunk_size": 8}
    assert cfg["data"]["speed_perturb"] == [0.9, 1.0, 1.1] and cfg["teacher"]["spec"] is None
    assert cfg["optim"]["warmup_steps"] == DEFAULTS["optim"]["warmup_steps"]
    validate(cfg)
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'.*did you mean optim.lr"):
        load_config(conf, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(conf, ["optim.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown config key 'trian'.*did you mean train"):
        load_config(bad)
    with pytest.raises(ConfigError, match="kd_weight > 0 needs a teacher"):
        validate(load_config(conf, ["loss.kd_weight=1"]))
    with pytest.raises(ConfigError, match="speed_perturb"):
        validate(load_config(conf, ["loss.kd_weight=1", "teacher.cache=c", "data.speed_perturb=[0.9,1.1]"]))
    with pytest.raises(ConfigError, match="data.train"):
        validate(load_config(None))


def test_cli_print_config_and_missing_resume(tmp_path, capsys):
    from asrkd.cli import main

    conf = tmp_path / "c.yaml"
    conf.write_text(f"exp_dir: {tmp_path / 'exp'}\ndata: {{train: t.jsonl}}\n")
    assert main(["train", "--config", str(conf), "--print-config", "optim.schedule=noam"]) == 0
    out = capsys.readouterr().out
    assert "schedule: noam" in out and "exp_dir:" in out
    assert main(["train", "--config", str(conf), "--resume", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", "--config", str(conf), "optim.nope=1"]) == 2
    assert "unknown config key 'optim.nope'" in capsys.readouterr().err
    assert main(["train", "--config", str(conf), "train.progress=false"]) == 1  # t.jsonl does not exist
    assert "t.jsonl" in capsys.readouterr().err
    manifest = make_corpus(tmp_path, "utts", 3)
    assert (
        main(
            [
                "train",
                "--config",
                str(conf),
                f"data.train={manifest}",
                "loss.kd_weight=1",
                f"teacher.cache={tmp_path / 'nocache'}",
                "train.progress=false",
                "data.num_workers=0",
            ]
        )
        == 1
    )
    assert "teacher.cache: no teacher cache at" in capsys.readouterr().err


def test_schedules():
    cos = LRSchedule("cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(59) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert cos(109) == pytest.approx(0.1) and cos(500) == pytest.approx(0.1)
    assert all(cos(i) >= cos(i + 1) for i in range(9, 200))
    noam = LRSchedule("noam", warmup_steps=100, total_steps=1)
    assert noam(99) == pytest.approx(1.0) and noam(399) == pytest.approx(0.5)
    const = LRSchedule("constant", warmup_steps=4, total_steps=10)
    assert [const(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_time_budget_schedule(monkeypatch):
    """teacher-adapt's --minutes: the schedule advances with the steps or the time used,
    whichever is further, but no faster than one epoch (10 steps here) for all of it."""
    from asrkd.train import schedule as schedule_mod

    clock = {"now": 100.0}
    monkeypatch.setattr(schedule_mod.time, "monotonic", lambda: clock["now"])
    cos = LRSchedule("cosine", warmup_steps=0, total_steps=100, min_lr_ratio=0.0)
    timed = schedule_mod.TimeBudget(cos, total_steps=100, deadline=110.0, min_steps=10)
    assert timed(5) == cos(5)  # no time used: the steps lead
    clock["now"] = 101.0
    assert timed(5) == cos(10) and timed(30) == cos(30)  # 10 % of the time: position 10 unless the steps are ahead
    clock["now"] = 105.0
    assert timed(2) == cos(20)  # half the time, but only 2 of the first epoch's 10 steps
    assert timed(8) == cos(50) and timed(60) == cos(60)
    clock["now"] = 130.0  # the time is spent
    assert timed(5) == cos(50)  # ... in the first epoch: it still gets the whole schedule
    assert timed(10) == cos(100) == pytest.approx(0.0) and timed(12) == cos(120)


@pytest.mark.parametrize("content", ["empty", "all_bad_audio", "all_malformed"])
def test_train_with_nothing_usable_prints_the_reject_table(tmp_path, content, capsys):
    from asrkd.cli import main as cli_main

    if content == "empty":
        manifest = tmp_path / "train.jsonl"
        manifest.write_text("")
    elif content == "all_bad_audio":
        manifest = make_corpus(tmp_path, "train", 3, bad={"0": "missing", "1": "corrupt", "2": "corrupt"})
    else:
        manifest = tmp_path / "train.jsonl"
        manifest.write_text('not json\n{"id": 3}\n')
    cfg = base_config(tmp_path, manifest, train={"epochs": 1})
    conf = tmp_path / "c.yaml"
    import yaml

    conf.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert cli_main(["train", "--config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "compute_cmvn" not in err, err
    assert "error: " in err and "no usable" in err, err
    if content != "empty":
        assert "total" in err  # the reject table
