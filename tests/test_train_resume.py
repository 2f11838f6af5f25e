"""Kill and resume: a training process killed with SIGKILL after a checkpoint and resumed
from it ends with exactly the parameters (and optimizer state) of a run never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from asrkd.checkpoint import load_checkpoint
from test_train import base_config, make_corpus

ROOT = Path(__file__).resolve().parents[1]


def _last_step(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["step"])
    except (FileNotFoundError, EOFError, RuntimeError, ValueError):
        return -1  # not there yet


def test_kill_and_resume_gives_identical_parameters(tmp_path):
    from asrkd.train import train

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
    proc = subprocess.Popen([sys.executable, "-m", "asrkd.cli", "train", "--config", str(conf)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
