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
from test_train import make_corpus, make_teacher

from asrkd.cli import main as cli_main
from asrkd.models.checkpoint import CheckpointError, load_checkpoint, safe_load, save_checkpoint, trusted_checkpoints


class _Payload:
    """Unpickling this runs ``exec``: what a hostile ``.pt`` does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def poisoned(path: Path, marker: Path) -> Path:
    torch.save(
        {
            "format": "asrkd-checkpoint-v1",
            "arch": "whisper_ctc",
            "model_kwargs": {},
            "model": {},
            "tokenizer": None,
            "payload": _Payload(marker),
        },
        path,
    )
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
        "decode --checkpoint asrkd:": [
            "decode",
            "--checkpoint",
            f"asrkd:{bad}",
            "--manifest",
            str(manifest),
            "--out",
            out,
        ],
        "decode --emission-delay-ref": [
            "decode",
            "--checkpoint",
            good,
            "--manifest",
            str(manifest),
            "--out",
            out,
            "--emission-delay-ref",
            str(bad),
            "--no-progress",
        ],
        "cache-teacher --teacher asrkd:": [
            "cache-teacher",
            "--teacher",
            f"asrkd:{bad}",
            "--manifest",
            str(manifest),
            "--out",
            out,
            "--quiet",
            "--num-workers",
            "0",
        ],
        "cache-teacher --teacher X.pt": [
            "cache-teacher",
            "--teacher",
            str(bad),
            "--manifest",
            str(manifest),
            "--out",
            out,
            "--quiet",
            "--num-workers",
            "0",
        ],
        "teacher-adapt --teacher X.pt": [
            "teacher-adapt",
            "--teacher",
            str(bad),
            "--train",
            str(manifest),
            "--tokenizer",
            str(tmp_path / "tok.json"),
            "--out",
            out,
            "--no-progress",
        ],
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
    from test_train import base_config

    from asrkd.train.loop import train

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
        argv = [
            "decode",
            "--checkpoint",
            ckpt,
            "--manifest",
            str(corpus),
            "--out",
            str(tmp_path / "hyp.txt"),
            "--no-progress",
        ]
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
    argv = [
        "decode",
        "--checkpoint",
        ckpt,
        "--manifest",
        str(corpus),
        "--out",
        str(blocker / "hyp.txt"),
        "--no-progress",
    ]
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
    rc = cli_main(
        [
            "decode",
            "--checkpoint",
            ckpt,
            "--manifest",
            str(corpus),
            "--out",
            str(tmp_path / "hyp.txt"),
            "--json",
            str(stats),
            "--no-progress",
        ]
    )
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
    assert (
        cli_main(
            [
                "decode",
                "--checkpoint",
                ckpt,
                "--manifest",
                str(manifest),
                "--out",
                str(hyp),
                "--no-progress",
                "--strict",
            ]
        )
        == 0
    )
    lines = dict((line.split(" ", 1) + [""])[:2] for line in hyp.read_text().splitlines())
    assert set(lines) == {"c-000", "c-001", "c-002"} and lines["c-001"].strip(), lines
    assert "empty_text" not in capsys.readouterr().out


# --------------------------------------------------------------------------- real full / read-only disks


@pytest.fixture
def small_fs(tmp_path):
    """A 600 KiB tmpfs (root with mount rights only: skipped elsewhere); yields a mount helper."""
    import shutil
    import subprocess

    if not shutil.which("mount"):
        pytest.skip("no mount command")
    mounted = []

    def mount(name: str, read_only: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        opts = "size=600k" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_full_disk_during_a_checkpoint_write_is_named(tmp_path, small_fs, capsys):
    from test_train import base_config

    full = small_fs("full")
    m = make_corpus(tmp_path, "train", 6)
    import yaml

    cfg = base_config(tmp_path, m, train={"epochs": 1})
    cfg["exp_dir"] = str(full / "exp")
    cfg["model"]["overrides"].update(d_model=96, ffn_dim=384, num_layers=2)  # a checkpoint larger than the disk
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert cli_main(["train", "--config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(full / "exp") in err and "enforce fail" not in err, err
    assert not list((full / "exp").glob(".*.tmp"))


def test_read_only_output_folder_names_the_output(tmp_path, small_fs, corpus, capsys):
    ro = small_fs("ro", read_only=True)
    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    capsys.readouterr()
    assert (
        cli_main(
            ["decode", "--checkpoint", ckpt, "--manifest", str(corpus), "--out", str(ro / "h.txt"), "--no-progress"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"cannot write {ro / 'h.txt'}: Read-only file system" in err and ".tmp" not in err, err


def test_refusals_name_what_the_file_wants_in_every_format(tmp_path):
    import os

    marker = tmp_path / "PWNED"

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save(
        {"format": "asrkd-checkpoint-v1", "x": System()}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False
    )
    torch.save({"format": "asrkd-checkpoint-v1", "x": System()}, tmp_path / "zip.pt")
    for name in ("legacy.pt", "zip.pt"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        msg = str(info.value)
        assert "refused" in msg and "system" in msg and "--trust-checkpoint" in msg, msg
        assert "weights_only=False" not in msg and "will likely succeed" not in msg, msg
    assert not marker.exists()


def test_a_torchscript_file_is_named_as_such(tmp_path):
    class M(torch.nn.Module):
        def forward(self, x):
            return x

    torch.jit.save(torch.jit.script(M()), tmp_path / "m.ts")
    with pytest.raises(CheckpointError, match="is a TorchScript export"):
        load_checkpoint(tmp_path / "m.ts")


def test_a_zip_bomb_is_refused_before_inflating(tmp_path):
    import zipfile

    torch.save({"format": "asrkd-checkpoint-v1", "w": torch.zeros(16 * 2**20)}, tmp_path / "plain.pt")  # 64 MiB
    with (
        zipfile.ZipFile(tmp_path / "plain.pt") as src,
        zipfile.ZipFile(tmp_path / "bomb.pt", "w", compression=zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert (tmp_path / "bomb.pt").stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"refused: its compressed entries would inflate to 0.1 GiB"):
        load_checkpoint(tmp_path / "bomb.pt")


def test_model_kwargs_cannot_make_us_allocate_beyond_the_weights(tmp_path):
    """kwargs that ask for ~3 GiB of parameters: refused after a shapes-only (meta) build, with
    the process never growing anywhere near that (checked in a child process's peak RSS)."""
    import subprocess
    import sys

    path = Path(make_teacher(tmp_path / "s.pt").split(":", 1)[1])
    state = load_checkpoint(path)
    state["model_kwargs"] = dict(state["model_kwargs"], d_model=8192, ffn_dim=32768, num_layers=2)
    torch.save(state, tmp_path / "big.pt")
    code = (
        "import resource, sys, torch; from asrkd.models.checkpoint import load_model\n"
        "try:\n    load_model(sys.argv[1])\nexcept Exception as e:\n    print(e)\n"
        "print('peak_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "big.pt")], capture_output=True, text=True, timeout=300
    ).stdout
    assert "its weights do not match its model_kwargs" in out, out
    assert int(out.rsplit("peak_mb", 1)[1]) < 1500, out


# --------------------------------------------------------------------------- second attack round


def test_outputs_never_overwrite_inputs_named_through_specs(tmp_path, corpus, capsys):
    import shutil

    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    ref = tmp_path / "ref.pt"
    shutil.copy(ckpt, ref)
    keep = {
        p: p.read_bytes()
        for p in (ref, corpus, *[Path(json.loads(x)["audio"]) for x in corpus.read_text().splitlines()])
    }
    audio0 = Path(json.loads(corpus.read_text().splitlines()[0])["audio"])
    out = str(tmp_path / "h.txt")
    attempts = [
        [
            "decode",
            "--checkpoint",
            ckpt,
            "--manifest",
            str(corpus),
            "--out",
            out,
            "--no-progress",
            "--emission-delay-ref",
            f"forced-align:{ref}",
            "--json",
            str(ref),
        ],
        ["decode", "--checkpoint", ckpt, "--manifest", str(corpus), "--out", str(audio0), "--no-progress"],
        [
            "cache-teacher",
            "--teacher",
            f"asrkd:{ref}",
            "--manifest",
            str(corpus),
            "--out",
            str(tmp_path / "c"),
            "--report",
            str(ref),
            "--quiet",
            "--num-workers",
            "0",
        ],
    ]
    for argv in attempts:
        capsys.readouterr()
        assert cli_main(argv) != 0, argv
        err = capsys.readouterr().err
        assert "destroy" in err, (argv, err)
    for path, data in keep.items():
        assert path.read_bytes() == data, path


def test_teacher_adapt_refuses_to_replace_the_whisper_weights(tmp_path, corpus, capsys):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"stand-in for model.bin")  # refused before anything is read
    assert (
        cli_main(
            [
                "teacher-adapt",
                "--teacher",
                f"whisper:{weights}",
                "--train",
                str(corpus),
                "--tokenizer",
                str(tmp_path / "tok.json"),
                "--out",
                str(weights),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "destroy" in capsys.readouterr().err and weights.read_bytes() == b"stand-in for model.bin"


def test_train_refuses_outputs_over_its_inputs(tmp_path, capsys):
    import shutil

    import yaml
    from test_train import base_config

    m = make_corpus(tmp_path, "train", 6)
    exp = tmp_path / "exp"
    exp.mkdir()
    teacher = Path(make_teacher(exp / "best.pt").split(":", 1)[1])
    before = teacher.read_bytes()
    cfg = base_config(tmp_path, m, train={"epochs": 1}, teacher={"spec": f"asrkd:{teacher}"}, loss={"kd_weight": 0.5})
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(conf)]) == 1
    assert "exp_dir/best.pt" in capsys.readouterr().err and teacher.read_bytes() == before
    shutil.copy(m, exp / "history.json")
    cfg2 = base_config(tmp_path, m, exp / "history.json", train={"epochs": 1})
    conf.write_text(yaml.safe_dump(cfg2))
    assert cli_main(["train", "--config", str(conf)]) == 1
    assert "data.dev" in capsys.readouterr().err and (exp / "history.json").read_bytes() == m.read_bytes()


def test_report_refuses_to_overwrite_what_it_reads(tmp_path, capsys):
    exp = tmp_path / "exp"
    (exp / "student_kd").mkdir(parents=True)
    hist = exp / "student_kd" / "history.json"
    hist.write_text('{"history": [], "best": null}\n')
    assert cli_main(["report", "--exp", str(exp), "--out", str(hist)]) == 1
    assert "destroy" in capsys.readouterr().err and json.loads(hist.read_text())["history"] == []
    (exp / "decode" / "teacher").mkdir(parents=True)
    (exp / "decode" / "teacher" / "wer.json").write_text("{not json")
    assert cli_main(["report", "--exp", str(exp)]) == 1
    assert "wer.json: not a readable JSON file" in capsys.readouterr().err
    assert cli_main(["report", "--exp", str(tmp_path / "nope")]) == 1
    assert "no such experiment folder" in capsys.readouterr().err


def test_resume_refuses_another_front_end_and_keeps_config(tmp_path, capsys):
    import yaml
    from test_train import base_config

    m = make_corpus(tmp_path, "train", 6)
    cfg = base_config(tmp_path, m, train={"epochs": 1})
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    assert cli_main(["train", "--config", str(conf)]) == 0
    exp = Path(cfg["exp_dir"])
    before = (exp / "config.yaml").read_text()
    capsys.readouterr()
    assert cli_main(["train", "--config", str(conf), "--resume", "train.epochs=2", "data.features.n_mels=80"]) == 1
    err = capsys.readouterr().err
    assert "data.features differ from the checkpoint's front-end" in err and "n_mels 40 -> 80" in err, err
    assert (exp / "config.yaml").read_text() == before
    # a finished run resumed with other settings does nothing, and says so without rewriting its config
    assert cli_main(["train", "--config", str(conf), "--resume", "train.log_every=7"]) == 0
    assert (exp / "config.yaml").read_text() == before
    # `--resume train.epochs=2` reads the override as an override (not as a checkpoint path)
    assert cli_main(["train", "--config", str(conf), "--resume", "train.epochs=2"]) == 0
    assert yaml.safe_load((exp / "config.yaml").read_text())["train"]["epochs"] == 2
    # a checkpoint that is not a training one cannot be resumed, said in one line
    teacher = make_teacher(tmp_path / "t.pt").split(":", 1)[1]
    capsys.readouterr()
    assert cli_main(["train", "--resume", teacher]) == 1
    assert "not one `asrkd train` wrote" in capsys.readouterr().err


def test_decode_runtime_errors_exit_1_usage_errors_2(tmp_path, corpus, capsys):
    ckpt = make_teacher(tmp_path / "s.pt").split(":", 1)[1]
    base = ["decode", "--manifest", str(corpus), "--out", str(tmp_path / "h.txt"), "--no-progress"]
    assert cli_main(base + ["--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert cli_main(base + ["--checkpoint", ckpt, "--streaming", "--chunk-ms", "nan"]) == 2
    assert "--chunk-ms must be a positive number" in capsys.readouterr().err
