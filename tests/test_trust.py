"""Hostile and careless input at the command line: a poisoned checkpoint runs no code through
any entry point, an output never destroys an input, and failures are one clear line.

A poisoned checkpoint here is a real ``torch.save`` file that looks like an asrkd checkpoint and
carries an object whose unpickling writes a marker file: the test fails if the marker appears.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from asrkd.checkpoint import CheckpointError, load_checkpoint, safe_load, save_checkpoint, trusted_checkpoints
from asrkd.cli import main as cli_main

from test_train import make_corpus, make_teacher


class _Payload:
    """Unpickling this runs ``exec``: what a hostile ``.pt`` does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def poisoned(path: Path, marker: Path) -> Path:
    torch.save({"format": "asrkd-checkpoint-v1", "arch": "whisper_ctc", "model_kwargs": {}, "model": {},
                "tokenizer": None, "payload": _Payload(marker)}, path)
    return path


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path, "c", 3)


def _entry_points(tmp_path: Path, bad: Path, manifest: Path) -> dict[str, list[str]]:
    exp = tmp_path / "exp"
    exp.mkdir(exist_ok=True)
    (exp / "teacher.pt").write_bytes(bad.read_bytes())
    out = str(tmp_path / "out")
    good = make_teacher(tmp_path / "good.pt").split(":", 1)[1]
    return {
        "decode --checkpoint": ["decode", "--checkpoint", str(bad), "--manifest", str(manifest), "--out", out],
        "decode --checkpoint asrkd:": ["decode", "--checkpoint", f"asrkd:{bad}", "--manifest", str(manifest),
                                       "--out", out],
        "decode --emission-delay-ref": ["decode", "--checkpoint", good, "--manifest", str(manifest), "--out", out,
                                        "--emission-delay-ref", str(bad), "--no-progress"],
        "cache-teacher --teacher asrkd:": ["cache-teacher", "--teacher", f"asrkd:{bad}", "--manifest", str(manifest),
                                           "--out", out, "--quiet", "--num-workers", "0"],
        "cache-teacher --teacher X.pt": ["cache-teacher", "--teacher", str(bad), "--manifest", str(manifest),
                                         "--out", out, "--quiet", "--num-workers", "0"],
        "teacher-adapt --teacher X.pt": ["teacher-adapt", "--teacher", str(bad), "--train", str(manifest),
                                         "--tokenizer", str(tmp_path / "tok.json"), "--out", out, "--no-progress"],
        "train --resume X.pt": ["train", "--resume", str(bad)],
        "export --checkpoint": ["export", "--checkpoint", str(bad), "--out", out],
        "report --exp": ["report", "--exp", str(exp)],
    }


def test_poisoned_checkpoint_runs_nothing_through_any_entry_point(tmp_path, corpus, capsys):
    marker = tmp_path / "PWNED"
    bad = poisoned(tmp_path / "evil.pt", marker)
    for name, argv in _entry_points(tmp_path, bad, corpus).items():
        capsys.readouterr()
        rc = cli_main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"{name}: the checkpoint's code ran"
        assert rc in (1, 2), (name, rc, err)
        assert "refused" in err and "evil.pt" in err or "teacher.pt" in err and "refused" in err, (name, err)
        assert "builtins.exec" in err and "--trust-checkpoint" in err, (name, err)
        assert "Traceback" not in err, (name, err)


def test_trust_checkpoint_is_an_explicit_opt_in(tmp_path, corpus, capsys):
    """The opt-in really unpickles (which is why it is never the default)."""
    marker = tmp_path / "PWNED"
    bad = poisoned(tmp_path / "evil.pt", marker)
    cli_main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "x.ts"), "--trust-checkpoint"])
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(bad)
    with trusted_checkpoints(), pytest.warns(UserWarning, match="fully unpickled"):
        safe_load(bad)
    assert marker.exists()


def test_asrkd_checkpoints_load_without_unpickling_code(tmp_path):
    """Everything asrkd writes (RNG states, optimizer, config, tokenizer) is tensors and plain data."""
    from asrkd.train import train
    from test_train import base_config

    m = make_corpus(tmp_path, "train", 6)
    train(base_config(tmp_path, m, train={"epochs": 1}))
    path = tmp_path / "exp" / "last.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    state = load_checkpoint(path)
    assert state["rng"][0]["numpy"][0] == "MT19937"


def test_older_checkpoints_with_numpy_rng_state_still_load(tmp_path):
    import numpy as np

    save_checkpoint(tmp_path / "old.pt", {"rng": [{"numpy": np.random.get_state()}], "model": {}})
    state = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(state["rng"][0]["numpy"][1], np.ndarray)


def test_corrupt_or_foreign_files_are_named(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain.pt is not an asrkd checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


# --------------------------------------------------------------------------- outputs vs inputs


def test_decode_refuses_to_overwrite_its_manifest(tmp_path, corpus, capsys):
    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    before = corpus.read_bytes()
    for flag in ("--out", "--json", "--report"):
        argv = ["decode", "--checkpoint", ckpt, "--manifest", str(corpus), "--out", str(tmp_path / "hyp.txt"),
                "--no-progress"]
        if flag == "--out":
            argv[argv.index("--out") + 1] = str(corpus)
        else:
            argv += [flag, str(corpus)]
        assert cli_main(argv) != 0
        assert corpus.read_bytes() == before, flag
        assert "is the input --manifest" in capsys.readouterr().err, flag
    assert cli_main(["decode", "--checkpoint", ckpt, "--manifest", str(corpus), "--out", ckpt]) != 0
    assert load_checkpoint(ckpt)["arch"] == "conformer_ctc"


def test_export_refuses_to_overwrite_its_checkpoint(tmp_path, capsys):
    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    before = Path(ckpt).read_bytes()
    assert cli_main(["export", "--checkpoint", ckpt, "--out", ckpt]) == 1
    assert Path(ckpt).read_bytes() == before
    assert "--out" in capsys.readouterr().err


def test_cli_errors_are_one_line_unless_debug(tmp_path, corpus, capsys, monkeypatch):
    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["decode", "--checkpoint", ckpt, "--manifest", str(corpus), "--out", str(blocker / "hyp.txt"),
            "--no-progress"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert line and str(blocker) in line[0], err
    with pytest.raises(OSError):
        cli_main(argv + ["--debug"])
    monkeypatch.setenv("ASRKD_DEBUG", "1")
    with pytest.raises(OSError):
        cli_main(argv)


def test_decode_json_and_export_are_atomic_on_a_full_disk(tmp_path, corpus, monkeypatch, capsys):
    import errno

    import asrkd.atomic

    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    stats = tmp_path / "stats.json"
    stats.write_text('{"old": 1}\n')
    real = asrkd.atomic.os.fsync

    def full(fd):
        import os

        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".stats.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(asrkd.atomic.os, "fsync", full)
    rc = cli_main(["decode", "--checkpoint", ckpt, "--manifest", str(corpus), "--out", str(tmp_path / "hyp.txt"),
                   "--json", str(stats), "--no-progress"])
    assert rc == 1 and json.loads(stats.read_text()) == {"old": 1}
    assert "No space left on device" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_prepare_refuses_outputs_over_inputs(tmp_path, capsys):
    kaldi = tmp_path / "data"
    kaldi.mkdir()
    wav = make_corpus(tmp_path, "a", 2)
    entries = [json.loads(x) for x in wav.read_text().splitlines()]
    (kaldi / "wav.scp").write_text("".join(f"{e['id']} {e['audio']}\n" for e in entries))
    (kaldi / "text").write_text("".join(f"{e['id']} {e['text']}\n" for e in entries))
    text_before = (kaldi / "text").read_text()
    out = tmp_path / "m.jsonl"
    assert cli_main(["prepare", "kaldi", str(kaldi), str(out), "--report", str(out), "--quiet"]) != 0
    assert "OUT and --report are the same path" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(["prepare", "kaldi", str(kaldi), str(kaldi / "text"), "--quiet"]) != 0
    assert "is a file of the source" in capsys.readouterr().err
    assert (kaldi / "text").read_text() == text_before
    assert cli_main(["prepare", "kaldi", str(kaldi), str(out), "--quiet"]) == 0


def test_cache_teacher_refuses_outputs_over_inputs(tmp_path, corpus, capsys):
    spec = make_teacher(tmp_path / "t.pt")
    before = corpus.read_bytes()
    base = ["cache-teacher", "--teacher", spec, "--manifest", str(corpus), "--quiet", "--num-workers", "0"]
    assert cli_main(base + ["--out", str(tmp_path / "cache"), "--report", str(corpus)]) == 1
    assert "--report" in capsys.readouterr().err and corpus.read_bytes() == before
    assert cli_main(base + ["--out", str(corpus)]) == 1
    assert "is a file, not a cache folder" in capsys.readouterr().err and corpus.read_bytes() == before


def test_decode_does_not_skip_good_audio_with_an_empty_transcript(tmp_path, capsys):
    manifest = make_corpus(tmp_path, "c", 3)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[1]["text"] = "  "
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    hyp = tmp_path / "hyp.txt"
    assert cli_main(["decode", "--checkpoint", ckpt, "--manifest", str(manifest), "--out", str(hyp),
                     "--no-progress", "--strict"]) == 0
    lines = dict((line.split(" ", 1) + [""])[:2] for line in hyp.read_text().splitlines())
    assert set(lines) == {"c-000", "c-001", "c-002"} and lines["c-001"].strip(), lines
    assert "empty_text" not in capsys.readouterr().out
