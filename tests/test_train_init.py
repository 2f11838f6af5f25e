"""model.init: a student that starts from another asrkd checkpoint, strict or partial by
parameter name and shape, with a report of what was loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_train import TINY_MODEL, base_config, make_corpus, make_teacher

from asrkd.models.checkpoint import CheckpointError, init_from_checkpoint, load_checkpoint, save_checkpoint
from asrkd.models.students import build_student


def _student(vocab: int, seed: int = 0, **over):
    torch.manual_seed(seed)
    return build_student("conformer", "xs", vocab, input_dim=40, **{**TINY_MODEL["overrides"], **over})


def _save(path: Path, model) -> Path:
    save_checkpoint(path, {"arch": "conformer_ctc", "model_kwargs": model.model_kwargs, "model": model.state_dict()})
    return path


def test_partial_init_loads_what_fits_and_reports_the_rest(tmp_path):
    src = _student(12, seed=1)
    ckpt = _save(tmp_path / "src.pt", src)
    dst = _student(29, seed=2)  # another vocabulary: the output layer differs
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = init_from_checkpoint(dst, ckpt)
    names = set(dst.state_dict())
    mismatched = {n for n, _, _ in report.mismatched}
    assert mismatched and all(src.state_dict()[n].shape[0] == 12 for n in mismatched)
    assert set(report.loaded) == names - mismatched and not report.missing and not report.unexpected
    for n, v in dst.state_dict().items():
        expect = before[n] if n in mismatched else src.state_dict()[n]
        torch.testing.assert_close(v, expect, rtol=0, atol=0)
    assert report.loaded_params == sum(dst.state_dict()[n].numel() for n in report.loaded)
    text = report.summary()
    assert "loaded" in text and "shape differs" in text and next(iter(mismatched)) in text
    with pytest.raises(CheckpointError, match="does not fit"):
        init_from_checkpoint(_student(29), ckpt, strict=True)


def test_strict_init_and_missing_or_extra_names(tmp_path):
    src = _student(12, seed=1)
    init_from_checkpoint(_student(12, seed=5), _save(tmp_path / "same.pt", src), strict=True)  # everything fits
    sd = src.state_dict()
    dropped = next(iter(sd))
    sd.pop(dropped)
    sd["extra.weight"] = torch.zeros(3)
    save_checkpoint(tmp_path / "odd.pt", {"arch": "conformer_ctc", "model": sd})
    report = init_from_checkpoint(_student(12), tmp_path / "odd.pt")
    assert report.missing == [dropped] and report.unexpected == ["extra.weight"]
    with pytest.raises(CheckpointError, match="no tensor of it fits"):
        save_checkpoint(tmp_path / "other.pt", {"arch": "x", "model": {"a.weight": torch.zeros(2)}})
        init_from_checkpoint(_student(12), tmp_path / "other.pt")


def test_training_starts_from_model_init_and_resume_ignores_it(tmp_path):
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 8, seed=0)
    init = Path(make_teacher(tmp_path / "pre.pt").split(":", 1)[1])  # a student checkpoint, 6-symbol vocabulary
    cfg = base_config(tmp_path, train_m, train={"epochs": 1, "max_steps": 1}, optim={"lr": 1e-9, "warmup_steps": 0})
    cfg["model"].update(init=str(init))
    train(cfg)
    exp = Path(cfg["exp_dir"])
    log = (exp / "train.log").read_text()
    assert f"init from {init}: loaded" in log
    got, pre = load_checkpoint(exp / "last.pt")["model"], load_checkpoint(init)["model"]
    same = [n for n in got if n in pre and pre[n].shape == got[n].shape]
    assert same and all(torch.allclose(got[n], pre[n], atol=1e-6) for n in same)
    cfg["model"].update(init=str(exp / "last.pt"))
    with pytest.raises(ValueError, match="model.init"):  # the run would overwrite what it starts from
        train(cfg)
    cfg["model"].update(init=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="no such checkpoint"):
        train(cfg)
