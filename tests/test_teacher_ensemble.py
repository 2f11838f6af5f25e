"""Teacher ensembles: members with other frame rates and vocabularies aligned to the first,
mean of probabilities or of log-probabilities, cached by asrkd cache-teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import TINY_MODEL, make_corpus

from asrkd.cli import main
from asrkd.data import CharTokenizer, FeatureConfig, GlobalCMVN, load_manifest
from asrkd.kd.cache import TeacherCache
from asrkd.models.checkpoint import save_checkpoint
from asrkd.models.students import build_student
from asrkd.models.teachers import load_teacher
from asrkd.models.teachers.ensemble import build_ensemble


def _teacher(path: Path, letters: str, seed: int, subsampling: int = 4) -> str:
    tok = CharTokenizer.build([letters])
    torch.manual_seed(seed)
    over = {**TINY_MODEL["overrides"], "dropout": 0.0, "subsampling": subsampling}
    model = build_student("conformer", "xs", len(tok), input_dim=40, **over)
    save_checkpoint(
        path,
        {
            "arch": "conformer_ctc",
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": tok.to_dict(),
            "features": FeatureConfig(n_mels=40).to_dict(),
            "cmvn": GlobalCMVN.identity(40).to_dict(),
        },
    )
    return f"asrkd:{path}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    manifest = make_corpus(root, "utts", 4, seed=0)
    a = _teacher(root / "a.pt", "abcde", seed=1)  # 25 frames/s
    b = _teacher(root / "b.pt", "abcdefgh", seed=2, subsampling=8)  # 12.5 frames/s, more symbols
    return root, manifest, a, b


def _run(teacher, utt):
    wave = utt.load_audio()
    lp, n = teacher.log_probs(wave[None], torch.tensor([wave.numel()]))
    return lp[0, : int(n[0])]


def test_ensemble_lives_in_the_first_teachers_space(setup):
    _, manifest, a, b = setup
    ta, tb = load_teacher(a), load_teacher(b)
    ens = build_ensemble([ta, tb], [1.0, 3.0])
    assert ens.vocab == ta.vocab and ens.frame_rate == ta.frame_rate and ens.blank_id == ta.blank_id
    assert "0.25*asrkd:" in ens.spec and "0.75*asrkd:" in ens.spec
    utt = load_manifest(manifest)[0]
    lp = _run(ens, utt)
    assert lp.shape == _run(ta, utt).shape
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.size(0)), atol=1e-5, rtol=0)


def test_an_ensemble_of_one_teacher_twice_is_that_teacher(setup):
    _, manifest, a, _ = setup
    ta = load_teacher(a)
    utt = load_manifest(manifest)[1]
    for combine in ("prob", "logprob"):
        ens = build_ensemble([ta, load_teacher(a)], [0.3, 0.7], combine)
        torch.testing.assert_close(_run(ens, utt), _run(ta, utt), atol=1e-5, rtol=1e-5)


def test_member_at_half_the_rate_and_another_vocabulary(setup):
    """Almost all weight on b: the ensemble is b mapped onto a's symbols (f, g, h dropped,
    renormalised) with each of its frames repeated twice (12.5 -> 25 frames/s)."""
    _, manifest, a, b = setup
    ta, tb = load_teacher(a), load_teacher(b)
    utt = load_manifest(manifest)[2]
    ens = build_ensemble([ta, tb], [1e-9, 1.0])
    got = _run(ens, utt)
    lb = _run(tb, utt)
    keep = [tb.vocab.index(s) for s in ta.vocab]
    expect = torch.log_softmax(lb[:, keep], dim=-1).repeat_interleave(2, dim=0)
    n = min(expect.size(0), got.size(0))
    assert abs(got.size(0) - expect.size(0)) <= 1
    torch.testing.assert_close(got[:n], expect[:n], atol=1e-4, rtol=1e-4)


def test_mean_of_probabilities_and_of_log_probabilities(setup):
    _, manifest, a, _ = setup
    ta, tc = load_teacher(a), load_teacher(_teacher(setup[0] / "c.pt", "abcde", seed=7))
    utt = load_manifest(manifest)[3]
    pa, pc = _run(ta, utt), _run(tc, utt)
    mix = _run(build_ensemble([ta, tc], [1, 1], "prob"), utt)
    torch.testing.assert_close(mix, torch.log(0.5 * pa.exp() + 0.5 * pc.exp()), atol=1e-5, rtol=1e-5)
    poe = _run(build_ensemble([ta, tc], [1, 1], "logprob"), utt)
    torch.testing.assert_close(poe, torch.log_softmax(0.5 * pa + 0.5 * pc, -1), atol=1e-5, rtol=1e-5)


def test_bad_settings():
    with pytest.raises(ValueError, match="at least 2"):
        build_ensemble([object()])
    with pytest.raises(ValueError, match="combine"):
        build_ensemble([object(), object()], combine="max")
    with pytest.raises(ValueError, match="weights"):
        build_ensemble([object(), object()], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        build_ensemble([object(), object()], [1.0, -1.0])


def test_cache_teacher_cli_with_two_teachers(setup, tmp_path, capsys):
    _, manifest, a, b = setup
    out = tmp_path / "cache"
    argv = ["cache-teacher", "--teacher", a, "--teacher", b, "--manifest", str(manifest), "--out", str(out)]
    assert main([*argv, "--num-workers", "0", "--quiet", "--ensemble-weights", "1,2"]) == 0
    cache = TeacherCache.open(out)
    ta = load_teacher(a)
    assert cache.vocab == ta.vocab and cache.frame_rate == ta.frame_rate
    spec = json.loads((out / "index.json").read_text())["teacher"]["spec"]
    assert spec.startswith("ensemble[prob](") and "0.6667*" in spec
    # other weights are another teacher: the cache is refused with the reason
    assert main([*argv, "--num-workers", "0", "--quiet", "--ensemble-weights", "1,1"]) != 0
    assert "teacher" in capsys.readouterr().err
