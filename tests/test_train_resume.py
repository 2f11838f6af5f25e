"""Kill and resume: a training process killed with SIGKILL after a checkpoint and resumed
from it ends with exactly the parameters (and optimizer state) of a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_train import base_config, make_corpus

from asrkd.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _last_step(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["step"])
    except (FileNotFoundError, EOFError, RuntimeError, ValueError):
        return -1  # not there yet


def test_kill_and_resume_gives_identical_parameters(tmp_path):
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 24, seed=0)
    sections = {"data": {"max_seconds": 2.5}, "train": {"epochs": 3, "save_every_steps": 1}}
    straight = base_config(tmp_path / "a", train_m, **sections)
    result = train(straight)
    total = result["step"]
    assert total >= 15

    # The same run in a subprocess, killed once a checkpoint a few steps in exists.
    killed = base_config(tmp_path / "b", train_m, **sections)
    conf = tmp_path / "b.yaml"
    conf.write_text(yaml.safe_dump(killed))
    last = Path(killed["exp_dir"]) / "last.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "asrkd.cli", "train", "--config", str(conf)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if last.exists() and _last_step(last) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    rc = proc.wait(timeout=60)
    assert rc == -signal.SIGKILL, f"the run ended before it was killed (rc {rc}): {proc.stderr.read().decode()[-2000:]}"
    at_kill = _last_step(last)
    print(f"killed at step {at_kill} of {total}")
    assert 4 <= at_kill < total

    train(base_config(tmp_path / "b", train_m, **sections), resume_from=last)
    a = load_checkpoint(tmp_path / "a" / "exp" / "last.pt")
    b = load_checkpoint(last)
    assert a["step"] == b["step"] == total
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"parameter {k} differs after resuming from step {at_kill}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][name], sb[i][name])
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path):
    """1 epoch, then --resume with train.epochs=3: the rate of each later step is the new
    3-epoch cosine's, not the 1-epoch schedule's floor."""
    import math

    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 12, seed=0)
    sections = {
        "data": {"max_seconds": 2.5},
        "optim": {"lr": 1e-2, "warmup_steps": 2, "min_lr_ratio": 0.0},
        "train": {"epochs": 1},
    }
    first = train(base_config(tmp_path, train_m, **sections))
    spe = first["step"]
    last = tmp_path / "exp" / "last.pt"
    assert load_checkpoint(last)["optimizer"]["param_groups"][0]["lr"] < 1e-9  # the 1-epoch cosine ends at 0

    longer = base_config(tmp_path, train_m, **{**sections, "train": {"epochs": 3}})
    result = train(longer, resume_from=last)
    assert result["step"] == 3 * spe

    def cosine(step: int, total: int) -> float:  # the rate after `step` optimizer steps
        s = step + 1
        return 1e-2 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - 2) / (total - 2))))

    lrs = [h["lr"] for h in result["history"]]
    assert lrs[0] < 1e-9  # epoch 1 (before the resume) as it was
    assert lrs[1] == pytest.approx(cosine(2 * spe, 3 * spe), rel=1e-6) and lrs[1] > 1e-3
    ckpt = load_checkpoint(last)
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == 1e-2


def test_resume_unchanged_config_keeps_the_rate(tmp_path):
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 12, seed=0)
    sections = {"data": {"max_seconds": 2.5}, "train": {"epochs": 2, "max_steps": 3}}
    train(base_config(tmp_path, train_m, **sections))
    last = tmp_path / "exp" / "last.pt"
    lr_at_stop = load_checkpoint(last)["optimizer"]["param_groups"][0]["lr"]
    straight = train(base_config(tmp_path / "s", train_m, **{**sections, "train": {"epochs": 2}}))
    resumed = train(base_config(tmp_path, train_m, **{**sections, "train": {"epochs": 2}}), resume_from=last)
    assert resumed["history"][-1]["lr"] == straight["history"][-1]["lr"]
    assert lr_at_stop > 0


def test_incompatible_resume_is_one_line_and_keeps_config_yaml(tmp_path, capsys):
    import copy

    import yaml as _yaml

    from asrkd.cli import main as cli_main
    from asrkd.train.loop import train

    train_m = make_corpus(tmp_path, "train", 8, seed=0)
    cfg = base_config(tmp_path, train_m, train={"epochs": 1})
    train(cfg)
    exp = Path(cfg["exp_dir"])
    config_before = (exp / "config.yaml").read_text()
    last_before = (exp / "last.pt").read_bytes()
    bigger = copy.deepcopy(cfg)
    bigger["model"]["overrides"]["d_model"] = 64
    bigger["train"]["epochs"] = 2
    conf = tmp_path / "bigger.yaml"
    conf.write_text(_yaml.safe_dump(bigger))
    capsys.readouterr()
    rc = cli_main(["train", "--config", str(conf), "--resume"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "its model (model.arch / model.size / overrides changed?) does not fit this run" in err, err
    assert (exp / "config.yaml").read_text() == config_before
    assert (exp / "last.pt").read_bytes() == last_before
