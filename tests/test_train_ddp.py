"""DDP: two gloo processes on 127.0.0.1 (torchrun), CTC + KD from a teacher in the loop,
labelled and unlabelled audio, and a missing file that leaves one rank's batch empty
(one utterance per batch) while the other rank has data.
Parameters must stay identical on both ranks, the run must finish (no hang), and a run
stopped and resumed under DDP must end where an uninterrupted one does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from test_train import base_config, make_corpus, make_teacher

from asrkd.models.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cfg: dict, tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "asrkd.cli",
        "train",
        "--config",
        str(conf),
        *extra,
    ]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_ddp_two_gloo_processes(tmp_path):
    labelled = make_corpus(tmp_path, "lab", 14, seed=0, bad={"5": "missing"})
    unlabelled = make_corpus(tmp_path, "unlab", 6, seed=7, text=False)
    train_m = tmp_path / "train.jsonl"
    train_m.write_text(labelled.read_text() + unlabelled.read_text())
    spec = make_teacher(tmp_path / "teacher.pt")
    sections = {
        "data": {"max_batch_size": 1},
        "teacher": {"spec": spec},
        "loss": {"kd_weight": 0.5},
        "train": {"epochs": 2},
    }

    straight = base_config(tmp_path / "a", train_m, **sections)
    proc = _torchrun(straight, tmp_path, "a")
    out = proc.stdout
    assert "world size 2 (gloo)" in out and "missing_file" in out
    a = load_checkpoint(tmp_path / "a" / "exp" / "last.pt")
    assert a["world_size"] == 2 and len(a["rng"]) == 2 and a["epoch"] == 2
    assert len(a["rank_weights"]) == 2 and a["rank_weights"][0] == a["rank_weights"][1]
    assert all(h["train_kd"] > 0 and h["train_ctc"] > 0 for h in a["history"])
    # Ranks draw different dropout / augmentation: their RNG states differ.
    assert not torch.equal(a["rng"][0]["torch"], a["rng"][1]["torch"])

    stopped = base_config(tmp_path / "b", train_m, **sections)
    stopped["train"]["max_steps"] = 3
    _torchrun(stopped, tmp_path, "b1")
    assert load_checkpoint(tmp_path / "b" / "exp" / "last.pt")["step"] == 3
    _torchrun(base_config(tmp_path / "b", train_m, **sections), tmp_path, "b2", "--resume")
    b = load_checkpoint(tmp_path / "b" / "exp" / "last.pt")
    assert b["step"] == a["step"] and b["rank_weights"] == a["rank_weights"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
