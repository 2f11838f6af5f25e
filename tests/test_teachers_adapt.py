"""``asrkd teacher-adapt`` on a tiny espeak corpus, and adapted/asrkd checkpoints reloaded as teachers."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from asrkd.cli import main as cli_main
from asrkd.data.tokenizer import CharTokenizer
from asrkd.models.acoustic import AcousticModel
from asrkd.models.checkpoint import load_checkpoint, load_model, register_model, save_checkpoint
from asrkd.models.teachers import load_teacher

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "she sells sea shells",
    "we like green apples",
    "open the red door",
    "birds sing at dawn",
    "rain falls on the roof",
    "he reads a long book",
]


def _write_speech(path, text: str, voice: str = "en-us", rate: int = 170) -> float:
    if shutil.which("espeak-ng"):
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text], check=True, capture_output=True
        )
    else:  # a deterministic stand-in: one tone per character
        tones = [np.sin(2 * np.pi * (200 + 20 * (ord(c) % 32)) * np.arange(1600) / 16000) for c in text]
        sf.write(path, 0.3 * np.concatenate(tones).astype(np.float32), 16000)
    info = sf.info(path)
    return info.frames / info.samplerate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, text in enumerate(TEXTS):
        wav = d / f"u{i}.wav"
        rows.append({"id": f"u{i}", "audio": str(wav), "duration": _write_speech(wav, text), "text": text})
    bad = [
        {"id": "unlabelled", "audio": rows[0]["audio"], "duration": rows[0]["duration"]},
        {"id": "oov", "audio": rows[1]["audio"], "duration": rows[1]["duration"], "text": "日本 the cat"},
        {"id": "missing", "audio": str(d / "missing.wav"), "duration": 1.0, "text": "gone"},
        {"id": "long", "audio": rows[2]["audio"], "duration": 31.0, "text": "far too long"},
    ]
    train = d / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows + bad))
    dev = d / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = d / "tok.json"
    CharTokenizer.english().save(tok)
    return {"dir": d, "train": train, "dev": dev, "tok": tok, "rows": rows}


def test_adapt_learns_and_reloads_as_teacher(corpus, tmp_path, capsys):
    out = tmp_path / "teacher.pt"
    rc = cli_main(
        [
            "teacher-adapt",
            "--train",
            str(corpus["train"]),
            "--dev",
            str(corpus["dev"]),
            "--tokenizer",
            str(corpus["tok"]),
            "--out",
            str(out),
            "--epochs",
            "40",
            "--lr",
            "3e-3",
            "--time-masks",
            "0",
            "--threads",
            "1",
            "--max-seconds-per-batch",
            "8",
            "--no-progress",
        ]
    )
    assert rc == 0
    log = capsys.readouterr().out
    assert "unlabelled utterances skipped" in log and "oov_chars" in log and "missing_file" in log and "too_long" in log

    state = load_checkpoint(out)
    assert state["arch"] == "whisper_ctc" and state["tokenizer"] == CharTokenizer.english().to_dict()
    summary = state["adapt"]
    assert summary["skipped_train"] == {"missing_file": 1, "oov_chars": 1, "too_long": 1}
    assert summary["unlabelled_train"] == 1 and summary["train_utterances"] == len(TEXTS)
    history = summary["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    # The head learns: greedy CER on the (memorised) sentences falls far below the start.
    assert summary["dev_cer"] == min(h["dev_cer"] for h in history)
    assert summary["dev_cer"] < 25.0 and history[0]["dev_cer"] > 60.0

    # Reloaded three ways, the same numbers.
    model, _ = load_model(out)
    model.eval()
    for spec in (f"asrkd:{out}", str(out)):
        teacher = load_teacher(spec)
        assert isinstance(teacher, AcousticModel) and teacher.frozen and teacher.vocab == CharTokenizer.english().tokens
        assert teacher.frame_rate == 50.0 and teacher.blank_id == 0
        wave, _ = sf.read(corpus["rows"][0]["audio"], dtype="float32")
        from asrkd.data.audio import resample

        w = resample(torch.from_numpy(wave), sf.info(corpus["rows"][0]["audio"]).samplerate)[None]
        logits, _ = teacher(w, torch.tensor([w.size(1)]))
        with torch.no_grad():
            ref, _ = model(w, torch.tensor([w.size(1)]))
        torch.testing.assert_close(logits, ref)


def test_adapt_unfreezes_top_block_and_respects_budget(corpus, tmp_path):
    out = tmp_path / "t.pt"
    rc = cli_main(
        [
            "teacher-adapt",
            "--train",
            str(corpus["dev"]),
            "--tokenizer",
            str(tmp_path / "new_tok.json"),
            "--out",
            str(out),
            "--epochs",
            "50",
            "--minutes",
            "0.001",
            "--unfreeze-blocks",
            "1",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (tmp_path / "new_tok.json").is_file()  # built from the training texts
    state = load_checkpoint(out)
    assert len(state["adapt"]["history"]) == 1  # the budget was spent: one epoch only
    from asrkd.models.teachers.whisper import default_whisper_path, load_whisper_encoder

    orig = load_whisper_encoder(default_whisper_path()).state_dict()
    sd = state["model"]
    n = state["model_kwargs"]["n_layer"]
    assert torch.equal(sd["encoder.blocks.0.mlp.0.weight"], orig["blocks.0.mlp.0.weight"])  # frozen
    assert not torch.equal(sd[f"encoder.blocks.{n - 1}.mlp.0.weight"], orig[f"blocks.{n - 1}.mlp.0.weight"])  # trained
    assert not torch.equal(sd["encoder.ln_post.weight"], orig["ln_post.weight"])


def test_adapt_rejects_bad_teacher(corpus, tmp_path, capsys):
    argv = [
        "teacher-adapt",
        "--teacher",
        "hf:somewhere",
        "--train",
        str(corpus["dev"]),
        "--tokenizer",
        str(corpus["tok"]),
        "--out",
        str(tmp_path / "x.pt"),
        "--no-progress",
    ]
    assert cli_main(argv) == 1
    assert "expected whisper-tiny.en" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected whisper-tiny.en"):
        cli_main(argv + ["--debug"])


# ----------------------------------------------------------------------- log-mel model checkpoints
class _TinyFeatCTC(torch.nn.Module):
    """A log-mel-input CTC model as asrkd trains them: 2x subsampling + linear."""

    frame_rate = 50.0

    def __init__(self, n_mels: int = 80, vocab_size: int = 29):
        super().__init__()
        self.vocab_size = vocab_size
        self.proj = torch.nn.Linear(2 * n_mels, vocab_size)

    def forward(self, feats, lengths):
        T = feats.size(1) // 2
        x = feats[:, : 2 * T].reshape(feats.size(0), T, -1)
        return self.proj(x), torch.div(lengths, 2, rounding_mode="floor")


try:
    register_model("test_teachers_tiny_feat_ctc")(_TinyFeatCTC)
except ValueError:  # re-imported module: already registered
    pass


def test_feature_model_checkpoint_as_teacher(tmp_path):
    from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN

    torch.manual_seed(0)
    model = _TinyFeatCTC().eval()
    cfg = FeatureConfig()
    cmvn = GlobalCMVN(torch.randn(80), torch.rand(80) + 0.5)
    tok = CharTokenizer.english()
    path = tmp_path / "student.pt"
    save_checkpoint(
        path,
        {
            "arch": "test_teachers_tiny_feat_ctc",
            "model_kwargs": {"n_mels": 80, "vocab_size": 29},
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": cfg.to_dict(),
            "cmvn": cmvn.to_dict(),
        },
    )
    teacher = load_teacher(str(path))
    assert teacher.vocab == tok.tokens and teacher.frame_rate == 50.0
    waves = torch.randn(2, 8000) * 0.1
    lengths = torch.tensor([8000, 5000])
    logits, out_lengths = teacher(waves, lengths)
    feats, flen = FeaturePipeline(cfg, cmvn)(waves, lengths)
    with torch.no_grad():
        ref, ref_len = model(feats, flen)
    torch.testing.assert_close(logits, ref)
    assert out_lengths.tolist() == ref_len.tolist()

    no_tok = tmp_path / "no_tok.pt"
    save_checkpoint(
        no_tok,
        {
            "arch": "test_teachers_tiny_feat_ctc",
            "model_kwargs": {},
            "model": model.state_dict(),
            "tokenizer": None,
            "features": cfg.to_dict(),
        },
    )
    with pytest.raises(ValueError, match="no tokenizer"):
        load_teacher(f"asrkd:{no_tok}")
    no_feats = tmp_path / "no_feats.pt"
    save_checkpoint(
        no_feats,
        {
            "arch": "test_teachers_tiny_feat_ctc",
            "model_kwargs": {},
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": None,
        },
    )
    with pytest.raises(ValueError, match="no 'features' config"):
        load_teacher(f"asrkd:{no_feats}")


def test_adapt_skips_audio_longer_than_whisper_and_guards_its_outputs(corpus, tmp_path, capsys):
    """A file that really holds 31 s (its manifest says 3 s) is skipped and counted, not an abort;
    a tokenizer file left empty by an earlier crash is a clear error; no output may be an input."""
    rows = corpus["rows"]
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.tile(sf.read(rows[0]["audio"], dtype="float32")[0], 20)[: 31 * 16000], 16000)
    train = tmp_path / "train.jsonl"
    lines = rows[:3] + [{"id": "liar", "audio": str(long_wav), "duration": 3.0, "text": "the cat"}]
    train.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "t.pt"
    argv = [
        "teacher-adapt",
        "--train",
        str(train),
        "--tokenizer",
        str(corpus["tok"]),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--time-masks",
        "0",
        "--threads",
        "1",
        "--no-progress",
    ]
    assert cli_main(argv) == 0
    skipped = load_checkpoint(out)["adapt"]["skipped_train"]
    assert sum(skipped.values()) == 1 and ("too_long" in skipped or "duration_mismatch" in skipped), skipped
    capsys.readouterr()

    empty_tok = tmp_path / "empty_tok.json"
    empty_tok.write_text("")
    argv_empty = list(argv)
    argv_empty[argv_empty.index("--tokenizer") + 1] = str(empty_tok)
    assert cli_main(argv_empty) == 1
    err = capsys.readouterr().err
    assert "empty_tok.json: not a saved asrkd tokenizer" in err and "Traceback" not in err

    before = train.read_bytes()
    argv_over = list(argv)
    argv_over[argv_over.index("--out") + 1] = str(train)
    assert cli_main(argv_over) == 1
    assert "--out" in capsys.readouterr().err and train.read_bytes() == before
