"""`asrkd decode`: output format, streaming == full-utterance, beam vs greedy, bad entries,
emission delay on hand-made spikes, waveform-input checkpoints, and the CLI end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from asrkd.cli import main as cli_main
from asrkd.data.features import FeatureConfig, GlobalCMVN
from asrkd.data.tokenizer import CharTokenizer
from asrkd.eval.decode import decode_manifest, write_hypotheses
from asrkd.eval.latency import Emission, delay_summary, match_emissions, token_emissions
from asrkd.models.acoustic import AcousticModel, load_acoustic_model
from asrkd.models.checkpoint import save_checkpoint
from asrkd.models.students import build_student

TINY = dict(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, frontend_channels=8, dropout=0.0, kernel_size=5)
SR = 16000
DURATIONS = {"u1": 1.3, "u2": 0.75, "u3": 2.1, "u4": 1.05}
TEXTS = {"u1": "hello there", "u2": "yes", "u3": "the quick brown fox", "u4": "no way"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save_student(path, *, scale: float = 1.0, seed: int = 0, **overrides):
    tok = CharTokenizer.english()
    torch.manual_seed(seed)
    model = build_student("conformer", "xs", len(tok), **{**TINY, **overrides}).eval()
    with torch.no_grad():
        # A larger head makes the outputs peaky, as a trained model's are.
        model.classifier.weight.mul_(scale)
        model.classifier.bias.mul_(scale)
    save_checkpoint(
        path,
        {
            "arch": "conformer_ctc",
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": FeatureConfig().to_dict(),
            "cmvn": GlobalCMVN.identity(80).to_dict(),
        },
    )
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Four short wavs with texts, one entry whose file is not audio, one whose file is missing,
    a 20 ms file, one manifest line with a bad duration (its id is known) and one that is
    not JSON."""
    root = tmp_path_factory.mktemp("decode")
    g = np.random.default_rng(0)
    lines = []
    for uid, dur in DURATIONS.items():
        n = int(dur * SR)
        t = np.arange(n) / SR
        f0 = g.uniform(120, 300)
        wave = 0.3 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * g.standard_normal(n)
        sf.write(root / f"{uid}.wav", wave.astype(np.float32), SR)
        lines.append({"id": uid, "audio": f"{uid}.wav", "duration": dur, "text": TEXTS[uid]})
    (root / "junk.wav").write_bytes(b"this is not audio" * 50)
    lines.insert(2, {"id": "bad", "audio": "junk.wav", "duration": 1.0, "text": "broken"})
    lines.append({"id": "gone", "audio": "missing.wav", "duration": 1.0})
    sf.write(root / "blip.wav", np.zeros(320, dtype=np.float32), SR)  # 20 ms: not one output frame
    lines.append({"id": "blip", "audio": "blip.wav", "duration": 0.02})
    lines.append({"id": "neg", "audio": "u1.wav", "duration": -1})
    manifest = root / "test.jsonl"
    manifest.write_text("".join(json.dumps(d) + "\n" for d in lines) + "{not json\n")
    good = root / "good.jsonl"
    good.write_text("".join(json.dumps(d) + "\n" for d in lines if d["id"] in DURATIONS))
    return {
        "root": root,
        "manifest": manifest,
        "good": good,
        "student": _save_student(root / "student.pt"),
        "peaky": _save_student(root / "peaky.pt", scale=25.0),
    }


def _read_kaldi(path):
    out = {}
    for line in path.read_text().splitlines():
        uid, _, words = line.partition(" ")
        out[uid] = words
    return out


# ----------------------------------------------------------------------------- full utterance
def test_full_utterance_format_failures_and_stats(corpus, tmp_path):
    hyps, stats = decode_manifest(corpus["student"], corpus["manifest"], batch_seconds=3.0)
    # every manifest id, in manifest order (the unreadable line's id last)
    assert list(hyps) == ["u1", "u2", "bad", "u3", "u4", "gone", "blip", "neg"]
    assert all(hyps[u] for u in DURATIONS), "a random student still emits characters"
    assert hyps["bad"] == hyps["gone"] == hyps["blip"] == hyps["neg"] == ""
    assert stats["failed"] == 4 and set(stats["failed_ids"]) == {"bad", "gone", "blip", "neg"}
    # the line that is not JSON has no id to write: counted among the rejects only
    assert stats["rejects"] == {
        "malformed_line": 1,
        "missing_file": 1,
        "unreadable": 1,
        "empty_audio": 1,
        "too_short": 1,
    }
    assert stats["utterances"] == 8 and stats["decoded"] == 4
    assert stats["audio_s"] == pytest.approx(sum(DURATIONS.values()), abs=1e-3)
    assert stats["rtf"] == pytest.approx(stats["compute_s"] / stats["audio_s"])
    for key in (
        "wall_s",
        "compute_s",
        "rtf",
        "device",
        "threads",
        "decoder",
        "streaming",
        "params",
        "frame_rate",
        "native_chunk_ms",
        "model_latency_ms",
        "emission_delay",
        "rejects",
        "failed_ids",
    ):
        assert key in stats
    assert stats["streaming"] is False and stats["emission_delay"] is None
    assert stats["model_latency_ms"] == 280.0 and stats["native_chunk_ms"] == 240.0

    out = tmp_path / "hyp.txt"
    write_hypotheses(out, hyps)
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == list(hyps)
    assert "bad" in lines and "gone" in lines  # an id alone: an empty hypothesis
    assert _read_kaldi(out) == hyps

    # batching does not change the result (padding is masked)
    hyps1, _ = decode_manifest(corpus["student"], corpus["good"], batch_seconds=0.1)
    assert hyps1 == {u: hyps[u] for u in DURATIONS}


# ----------------------------------------------------------------------------- streaming
def test_streaming_equals_full_utterance(corpus):
    rec = load_acoustic_model(corpus["student"])
    wave = torch.from_numpy(sf.read(corpus["root"] / "u3.wav", dtype="float32")[0])
    full, lens = rec.log_probs(wave[None], torch.tensor([wave.numel()]))
    for chunk_ms in (None, 100.0, 480.0):
        lp, available = rec.stream_log_probs(wave, rec.chunk_samples(chunk_ms))
        assert lp.shape == full[0, : int(lens[0])].shape
        torch.testing.assert_close(lp, full[0, : int(lens[0])], atol=1e-4, rtol=0)
        assert len(available) == lp.size(0) and available == sorted(available)

    full_hyps, _ = decode_manifest(corpus["student"], corpus["good"])
    for chunk_ms in (None, 10.0, 100.0, 480.0):
        hyps, stats = decode_manifest(corpus["student"], corpus["good"], streaming=True, chunk_ms=chunk_ms)
        assert hyps == full_hyps
        assert stats["streaming"] and stats["chunk_ms"] == (chunk_ms or 240.0)
        # model 280 ms + 15 ms window + buffering chunk - gcd(chunk, 240 ms)
        c = chunk_ms or 240.0
        assert stats["algorithmic_latency_ms"] == pytest.approx(295.0 + c - math.gcd(int(c), 240))
        assert stats["observed_latency_ms"] <= stats["algorithmic_latency_ms"] + 1e-6
    _, stats = decode_manifest(corpus["student"], corpus["good"], streaming=True)
    assert stats["observed_latency_ms"] == pytest.approx(295.0)  # pushes line up with segments

    # an in-memory student (as a trainer holds it) decodes the same
    mem = AcousticModel.from_student(rec.model, rec.tokenizer, FeatureConfig(), GlobalCMVN.identity(80).to_dict())
    assert decode_manifest(mem, corpus["good"], streaming=True)[0] == full_hyps


def test_streaming_bad_chunk_and_non_streaming_model(corpus, tmp_path):
    with pytest.raises(ValueError, match="multiple of the feature hop"):
        decode_manifest(corpus["student"], corpus["good"], streaming=True, chunk_ms=15)
    whisper = _save_whisper(tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="cannot stream"):
        decode_manifest(whisper, corpus["good"], streaming=True)


# ----------------------------------------------------------------------------- search
def test_beam_vs_greedy(corpus):
    greedy, _ = decode_manifest(corpus["peaky"], corpus["good"])
    assert any(greedy.values())
    b1, stats = decode_manifest(corpus["peaky"], corpus["good"], decoder="beam", beam=1, beam_backend="asrkd")
    assert stats["decoder"] == "beam" and stats["beam"] == 1 and stats["beam_backend"] == "asrkd"
    assert b1 == greedy
    b8, _ = decode_manifest(corpus["peaky"], corpus["good"], decoder="beam", beam=8, beam_backend="asrkd")
    assert set(b8) == set(greedy)
    from asrkd.eval.search import flashlight_available

    if flashlight_available():
        fl1, stats = decode_manifest(corpus["peaky"], corpus["good"], decoder="beam", beam=1, beam_backend="torchaudio")
        assert stats["beam_backend"] == "torchaudio" and fl1 == greedy
        # two implementations of the prefix search agree at a larger beam too
        fl8, _ = decode_manifest(corpus["peaky"], corpus["good"], decoder="beam", beam=8, beam_backend="torchaudio")
        assert fl8 == b8
    streamed, _ = decode_manifest(
        corpus["peaky"], corpus["good"], decoder="beam", beam=8, beam_backend="asrkd", streaming=True
    )
    assert streamed == b8


# ----------------------------------------------------------------------------- emission delay
def _spikes(frames: dict[int, int], T: int, V: int) -> torch.Tensor:
    """(T, V) log-probs: blank everywhere except token frames[t] at frame t."""
    x = torch.full((T, V), -10.0)
    x[:, 0] = 0.0
    for t, tok in frames.items():
        x[t, 0], x[t, tok] = -10.0, 0.0
    return x.log_softmax(-1)


def test_emission_delay_hand_made():
    syms = ["<b>", "a", "b", "c", "x"]
    # hypothesis at 25 frames/s (40 ms): a@2, b@5 (held two frames), c@9
    hyp_lp = _spikes({2: 1, 5: 2, 6: 2, 9: 3}, 12, 5)
    hyp = token_emissions(hyp_lp, [1, 2, 3], blank=0, frame_rate=25.0, symbols=syms)
    assert [(e.symbol, e.frame, e.ms) for e in hyp] == [("a", 2, 80.0), ("b", 5, 200.0), ("c", 9, 360.0)]
    # reference at 50 frames/s (20 ms): a@3, b@8, x@15, c@17
    ref_lp = _spikes({3: 1, 8: 2, 15: 4, 17: 3}, 20, 5)
    ref = token_emissions(ref_lp, [1, 2, 4, 3], blank=0, frame_rate=50.0, symbols=syms)
    assert [e.ms for e in ref] == [60.0, 160.0, 300.0, 340.0]
    pairs = match_emissions(hyp, ref)
    assert [(h.symbol, r.symbol) for h, r in pairs] == [("a", "a"), ("b", "b"), ("c", "c")]  # x is not matched
    s = delay_summary([h.ms - r.ms for h, r in pairs])
    assert s["tokens"] == 3
    assert s["mean_ms"] == pytest.approx(80.0 / 3)
    assert s["median_ms"] == pytest.approx(20.0)
    assert s["p90_ms"] == pytest.approx(36.0)  # linear interpolation over (20, 20, 40)
    # a substitution is not a match; repeated tokens need a blank in between
    hyp2 = [Emission("a", 0, 0.0), Emission("q", 1, 40.0)]
    ref2 = [Emission("a", 0, 10.0), Emission("b", 1, 30.0)]
    assert match_emissions(hyp2, ref2) == [(hyp2[0], ref2[0])]
    with pytest.raises(ValueError, match="cannot hold"):
        token_emissions(_spikes({0: 1}, 2, 5), [1, 1], blank=0, frame_rate=25.0)
    assert delay_summary([])["mean_ms"] is None


def test_emission_delay_against_itself_and_forced_alignment(corpus):
    # The student's streamed spikes against the same model at full context: streaming is
    # exact, so every token is matched with zero delay, and it is output when its segment is.
    hyps, stats = decode_manifest(
        corpus["student"], corpus["good"], streaming=True, emission_delay_ref=corpus["student"]
    )
    d = stats["emission_delay"]
    n_tokens = sum(len(h) for h in hyps.values())
    assert d["tokens"] == d["hyp_tokens"] == d["ref_tokens"] == n_tokens and d["utterances"] == 4
    assert d["mean_ms"] == d["max_ms"] == d["min_ms"] == 0.0
    a = d["available"]
    assert 0 < a["min_ms"] and a["max_ms"] <= stats["algorithmic_latency_ms"] + 1e-6

    # forced alignment of the reference texts (all characters in the vocabulary)
    _, stats = decode_manifest(corpus["peaky"], corpus["good"], streaming=True, emission_delay_ref="forced-align")
    d = stats["emission_delay"]
    assert d["reference"].startswith("forced alignment")
    assert d["utterances"] == 4 and d["skipped"] == {}
    assert d["ref_tokens"] == sum(len(t) for t in TEXTS.values())  # one emission per reference character
    assert set(d) >= {"mean_ms", "median_ms", "p90_ms", "tokens", "available"}


# ----------------------------------------------------------------------------- any asrkd checkpoint
def _save_whisper(path):
    from asrkd.models.teachers.whisper import WhisperCTC

    tok = CharTokenizer.english()
    torch.manual_seed(0)
    model = WhisperCTC(len(tok), n_state=32, n_head=2, n_layer=1, head_layers=1, head_hidden=32, head_kernel=3).eval()
    save_checkpoint(
        path,
        {
            "arch": "whisper_ctc",
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": None,
            "cmvn": None,
        },
    )
    return path


def test_waveform_checkpoint_decodes_and_serves_as_reference(corpus, tmp_path):
    teacher = _save_whisper(tmp_path / "teacher.pt")
    rec = load_acoustic_model(teacher)
    assert rec.input_type == "wave" and rec.frame_rate == 50.0 and not rec.can_stream
    hyps, stats = decode_manifest(teacher, corpus["manifest"])
    assert list(hyps) == ["u1", "u2", "bad", "u3", "u4", "gone", "blip", "neg"] and stats["input"] == "wave"
    # 320 samples (the 20 ms "blip") are Whisper's minimum, as in the teacher cache: one frame, decoded
    assert stats["decoded"] == 5 and "blip" not in stats["failed_ids"] and stats["arch"] == "whisper_ctc"
    assert rec.min_samples == 320
    # one by one == batched
    hyps1, _ = decode_manifest(f"asrkd:{teacher}", corpus["good"], batch_seconds=0.1)
    assert hyps1 == {u: hyps[u] for u in DURATIONS}
    # as the emission-delay reference of a streaming student (50 vs 25 frames/s)
    _, stats = decode_manifest(corpus["student"], corpus["good"], streaming=True, emission_delay_ref=str(teacher))
    d = stats["emission_delay"]
    assert d["utterances"] == 4 and d["reference"].startswith("CTC spikes")
    assert d["tokens"] <= min(d["hyp_tokens"], d["ref_tokens"])


class _Spiker(torch.nn.Module):
    """A waveform "model" at 50 frames/s that spells B A | C (ids 3 2 1 4) on fixed frames."""

    def forward(self, waves, lengths):
        T = int(waves.size(1)) // 320
        x = torch.full((waves.size(0), T, 5), -8.0)
        x[..., 0] = 0.0
        for t, tok in ((2, 3), (4, 2), (6, 1), (9, 4)):
            x[:, t, 0], x[:, t, tok] = -8.0, 0.0
        return x, lengths // 320


def test_vocabulary_only_teacher(corpus):
    # A teacher from load_teacher (no asrkd tokenizer): text from its symbols, "|" = space.
    teacher = AcousticModel(
        _Spiker(), vocab=["-", "|", "A", "B", "C"], blank_id=0, frame_rate=50.0, spec="spiker", frozen=True
    )
    hyps, stats = decode_manifest(teacher, corpus["good"], emission_delay_ref="forced-align")
    assert hyps == {u: "BA C" for u in DURATIONS} and stats["checkpoint"] == "spiker"
    # forced alignment needs the text in its vocabulary: "hello there" cannot be spelt with A B C
    assert stats["emission_delay"]["skipped"] == {"oov_text": 4}
    rec = load_acoustic_model(teacher)
    assert rec.encode("cab ba") == [4, 2, 3, 1, 3, 2]
    assert rec.symbols([3, 1]) == ["b", " "]


# ----------------------------------------------------------------------------- CLI
def test_cli_end_to_end(corpus, tmp_path, capsys):
    out, js, rep = tmp_path / "hyp.txt", tmp_path / "stats.json", tmp_path / "rejects.jsonl"
    argv = [
        "decode",
        "--checkpoint",
        str(corpus["student"]),
        "--manifest",
        str(corpus["manifest"]),
        "--out",
        str(out),
        "--streaming",
        "--chunk-ms",
        "480",
        "--json",
        str(js),
        "--report",
        str(rep),
        "--threads",
        "1",
        "--no-progress",
        "--emission-delay-ref",
        "forced-align",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "RTF" in printed and "latency 535 ms" in printed and "failed: 4" in printed and "emission delay" in printed
    hyps = _read_kaldi(out)
    assert list(hyps) == ["u1", "u2", "bad", "u3", "u4", "gone", "blip", "neg"]
    lib, _ = decode_manifest(corpus["student"], corpus["manifest"])
    assert hyps == lib
    stats = json.loads(js.read_text())
    assert stats["chunk_ms"] == 480.0 and stats["algorithmic_latency_ms"] == 535.0 and stats["threads"] == 1
    assert stats["out"] == str(out) and stats["emission_delay"]["reference"].startswith("forced alignment")
    reported = {json.loads(line)["id"] for line in rep.read_text().splitlines()}
    assert reported == {"bad", "gone", "blip", "neg", f"{corpus['manifest']}:9"}

    assert cli_main(argv[:7] + ["--no-progress", "--strict"]) == 1  # bad entries with --strict
    assert cli_main(argv[:7] + ["--chunk-ms", "240"]) == 2  # --chunk-ms without --streaming
    assert cli_main(argv[:7] + ["--streaming", "--chunk-ms", "25", "--no-progress"]) == 1  # found by the model
    assert cli_main(argv[:7] + ["--lm", "x.arpa"]) == 2  # an LM needs the beam search
    assert (
        cli_main(
            ["decode", "--checkpoint", str(tmp_path / "nope.pt"), "--manifest", str(corpus["good"]), "--out", str(out)]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "--chunk-ms needs --streaming" in err and "multiple of the feature hop" in err and "not found" in err


def test_min_samples_of_an_undeclared_waveform_network_and_of_the_delay_reference(corpus, tmp_path):
    # A waveform network that declares no min_samples keeps decode's 400-sample rule: the 320-sample
    # "blip" is counted as too short instead of reaching the network.
    spiker = AcousticModel(_Spiker(), vocab=["-", "|", "A", "B", "C"], blank_id=0, frame_rate=50.0, spec="spiker")
    assert spiker.min_samples == 400
    _, stats = decode_manifest(spiker, corpus["manifest"])
    assert "blip" in stats["failed_ids"] and stats["rejects"]["too_short"] == 1
    # Whisper (320 samples) decodes the blip; the spiker as its emission-delay reference cannot
    # take it: counted as skipped for the reference, and the run goes on.
    teacher = _save_whisper(tmp_path / "teacher.pt")
    _, stats = decode_manifest(str(teacher), corpus["manifest"], emission_delay_ref=spiker)
    assert "blip" not in stats["failed_ids"]
    assert stats["emission_delay"]["skipped"].get("too_short_for_reference") == 1
