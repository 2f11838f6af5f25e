"""The recipes end to end: the mini recipe's --quick run, and the LibriSpeech recipe on a
tiny LibriSpeech-shaped tree with a tiny random wav2vec2 teacher (no download)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"

needs_venv = pytest.mark.skipif(not VENV_PY.exists(), reason="recipes run inside .venv (scripts/setup.sh)")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
@needs_venv
@needs_espeak
def test_mini_recipe_quick(tmp_path):
    exp = tmp_path / "mini"
    proc = _run(["bash", "recipes/mini/run.sh", "--quick", "--exp", str(exp)], timeout=600)
    assert "| student_kd |" in proc.stdout  # the WER table is printed
    results = json.loads((exp / "results.json").read_text())
    for name in ("teacher", "student_ctc", "student_kd"):
        entry = results[name]
        assert entry["params"] > 0 and Path(entry["checkpoint"]).is_file()
        assert 0 <= entry["cer"] and 0 <= entry["wer"]
    assert results["student_ctc"]["params"] == results["student_kd"]["params"]
    assert results["student_kd"]["params"] * 5 <= results["teacher"]["params"]
    assert results["latency_ms"] <= 320
    assert results["wall_s"] > 0
    assert (exp / "dev_curves.png").stat().st_size > 0
    # Both students share everything but the KD term.
    ctc_cfg = (exp / "student_ctc" / "config.yaml").read_text()
    kd_cfg = (exp / "student_kd" / "config.yaml").read_text()
    assert "kd_weight: 0.0" in ctc_cfg and "kd_weight: 0.0" not in kd_cfg
    # ... and the untranscribed pool, which only the KD term can use
    assert "train_pool.jsonl" in kd_cfg and "train_pool.jsonl" not in ctc_cfg
    pool = [json.loads(line) for line in (exp / "data" / "pool.jsonl").read_text().splitlines()]
    assert pool and all("text" not in u for u in pool)
    # The real-speech out-of-domain set is decoded for every model when its sources are there.
    ood = json.loads((exp / "data" / "ood" / "ood.json").read_text())
    if (exp / "data" / "ood" / "ood.jsonl").stat().st_size:
        for name in ("teacher", "student_ctc", "student_kd"):
            assert results[name]["ood"]["words"] == ood["total"]["words"] > 0
            assert results[name]["ood"]["chars"] == ood["total"]["chars"]
        assert "OOD CER %" in proc.stdout
    # A second run finds every stage up to date and only reports again.
    again = _run(["bash", "recipes/mini/run.sh", "--quick", "--exp", str(exp)], timeout=300)
    assert again.stdout.count("up to date") >= 7


# --- LibriSpeech on a fixture ------------------------------------------------------------

W2V_CONFIG = dict(
    extractor_mode="layer_norm",
    # strides 5·2·2·2·2·2·2 = 320 samples: 50 frames/s, as the real wav2vec2
    extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2), (8, 3, 2), (8, 3, 2), (8, 3, 2), (8, 2, 2), (8, 2, 2)],
    extractor_conv_bias=True,
    encoder_embed_dim=16,
    encoder_projection_dropout=0.0,
    encoder_pos_conv_kernel=8,
    encoder_pos_conv_groups=2,
    encoder_num_layers=1,
    encoder_num_heads=2,
    encoder_attention_dropout=0.0,
    encoder_ff_interm_features=16,
    encoder_ff_interm_dropout=0.0,
    encoder_dropout=0.0,
    encoder_layer_norm_first=True,
    encoder_layer_drop=0.0,
)
# torchaudio's wav2vec2 ASR labels: blank "-", word separator "|", upper-case letters, apostrophe
LABELS = ["-", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]
SENTENCES = [
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS",
    "HOW VEXINGLY QUICK DAFT ZEBRAS JUMP",
    "THE FIVE BOXING WIZARDS JUMP QUICKLY",
    "SPHINX OF BLACK QUARTZ JUDGE MY VOW",
    "WE DON'T KNOW THE WAY HOME",
]


def _speak(text: str, path: Path) -> None:
    wav = path.with_suffix(".tmp.wav")
    subprocess.run(["espeak-ng", "-w", str(wav), text.lower()], check=True, capture_output=True)
    audio, sr = sf.read(wav, dtype="float32")
    wav.unlink()
    audio = torchaudio.functional.resample(torch.from_numpy(audio), sr, 16000).numpy()
    sf.write(path, audio, 16000, format="FLAC")


def _librispeech_tree(root: Path) -> None:
    plan = {"train-clean-100": SENTENCES, "dev-clean": SENTENCES[:2], "test-clean": SENTENCES[2:4]}
    for split, texts in plan.items():
        chapter = root / split / "19" / "198"
        chapter.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            uid = f"19-198-{i:04d}"
            _speak(text, chapter / f"{uid}.flac")
            lines.append(f"{uid} {text}")
        (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@needs_venv
@needs_espeak
def test_librispeech_recipe_on_a_fixture(tmp_path):
    data_root = tmp_path / "LibriSpeech"
    _librispeech_tree(data_root)
    torch.manual_seed(0)
    teacher = torchaudio.models.wav2vec2_model(**W2V_CONFIG, aux_num_out=len(LABELS))
    weights = tmp_path / "w2v_tiny.pt"
    torch.save({"state_dict": teacher.state_dict(), "labels": LABELS, "config": W2V_CONFIG}, weights)
    exp = tmp_path / "exp"
    _run(
        [
            "bash",
            "recipes/librispeech/run.sh",
            "--data-root",
            str(data_root),
            "--exp",
            str(exp),
            "--teacher",
            f"torchaudio-arch:wav2vec2_model:{weights}",
            "--eval-sets",
            "dev-clean test-clean",
            "train.epochs=1",
            "model.size=xs",
            "data.max_seconds=30",
            "data.num_workers=0",
            "data.cmvn_utterances=6",
            "data.max_duration=null",
            "optim.warmup_steps=1",
            "train.progress=false",
        ],
        timeout=600,
    )
    manifest = [json.loads(line) for line in (exp / "data" / "train.jsonl").read_text().splitlines()]
    assert len(manifest) == len(SENTENCES) and manifest[0]["text"] == SENTENCES[0].lower()  # normalised at import
    assert json.loads((exp / "cache" / "train" / "index.json").read_text())["format"]
    assert (exp / "student_kd" / "best.pt").is_file()
    for split in ("dev-clean", "test-clean"):
        for mode in ("full", "streaming"):
            wer = json.loads((exp / "decode" / f"{split}_{mode}" / "wer.json").read_text())
            assert wer["utterances"] == 2 and wer["missing_hyp"] == 0
