"""Students: checkpoint round trip, TorchScript export and the ``asrkd export`` command."""

from __future__ import annotations

import pytest
import torch

from asrkd.cli import main as cli_main
from asrkd.models.checkpoint import load_model, register_model, save_checkpoint
from asrkd.models.export import check_export, load_exported, save_scripted, script_student
from asrkd.models.students import ConformerCTC, EmformerCTC, build_student

ATOL = 1e-4
TINY = dict(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, frontend_channels=8, dropout=0.0)
MODELS = {
    "emformer": dict(max_memory_size=2, left_context=6),
    "conformer": dict(kernel_size=5, right_context=2),
}


@register_model("tests_students_not_a_student")
class _NotAStudent(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(arch):
    torch.manual_seed(0)
    return build_student(arch, "xs", 30, **{**TINY, **MODELS[arch]})


def save_student(path, model):
    save_checkpoint(
        path,
        {
            "arch": {EmformerCTC: "emformer_ctc", ConformerCTC: "conformer_ctc"}[type(model)],
            "model_kwargs": model.model_kwargs,
            "model": model.state_dict(),
            "tokenizer": {"type": "char", "tokens": ["<blank>", " ", "a"]},
            "features": {"n_mels": 80, "hop_ms": 10.0},
            "cmvn": {"mean": torch.zeros(3), "std": torch.ones(3)},
        },
    )


@pytest.mark.parametrize("arch", ["emformer", "conformer"])
@torch.no_grad()
def test_checkpoint_round_trip(tmp_path, arch):
    model = tiny(arch).eval()
    save_student(tmp_path / "student.pt", model)
    loaded, state = load_model(tmp_path / "student.pt")
    assert type(loaded) is type(model) and state["model_kwargs"] == model.model_kwargs
    loaded.eval()
    feats, lengths = torch.randn(2, 117, 80), torch.tensor([117, 61])
    ref, ref_lengths = model(feats, lengths)
    got, got_lengths = loaded(feats, lengths)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    assert torch.equal(got_lengths, ref_lengths)


@pytest.mark.parametrize("arch", ["emformer", "conformer"])
@torch.no_grad()
def test_torchscript_export_gives_same_logits(tmp_path, arch):
    model = tiny(arch).eval()
    scripted = script_student(model)
    assert check_export(model, scripted) <= ATOL
    path = tmp_path / "student.ts"
    save_scripted(scripted, path, {"note": "test"})
    loaded, meta = load_exported(path)
    assert meta == {"note": "test"}
    # Batch streaming with a padded stream, through the loaded module's own API.
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([150, 71])
    ref, out_lengths = model(feats, lengths)
    state = loaded.init_state(2)
    outs = []
    for t0 in range(0, 150, loaded.chunk_frames):
        chunk = feats[:, t0 : t0 + loaded.chunk_frames]
        out, state = loaded.stream_step(chunk, state, (lengths - t0).clamp(0, chunk.size(1)))
        outs.append(out)
    outs.append(loaded.stream_flush(state))
    got = torch.cat(outs, dim=1)
    assert got.shape == ref.shape
    for i in range(2):
        k = int(out_lengths[i])
        torch.testing.assert_close(got[i, :k], ref[i, :k], atol=ATOL, rtol=0)
    full, _ = loaded(feats, lengths)
    torch.testing.assert_close(full, ref, atol=ATOL, rtol=0)
    assert loaded.algorithmic_latency_ms == model.algorithmic_latency_ms


def test_export_cli(tmp_path, capsys):
    model = tiny("conformer")
    save_student(tmp_path / "student.pt", model)
    out = tmp_path / "exported" / "student.ts"
    assert cli_main(["export", "--checkpoint", str(tmp_path / "student.pt"), "--out", str(out)]) == 0
    assert "logit difference" in capsys.readouterr().out
    module, meta = load_exported(out)
    assert meta["arch"] == "conformer_ctc" and meta["model_kwargs"] == model.model_kwargs
    assert meta["tokenizer"]["tokens"] == ["<blank>", " ", "a"] and meta["cmvn"]["std"] == [1.0, 1.0, 1.0]
    assert meta["algorithmic_latency_ms"] == model.algorithmic_latency_ms
    assert meta["chunk_frames"] == model.chunk_frames
    feats = torch.randn(1, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(
            module(feats, torch.tensor([64]))[0], model.eval()(feats, torch.tensor([64]))[0], atol=ATOL, rtol=0
        )


def test_export_cli_errors(tmp_path, capsys):
    out = str(tmp_path / "x.ts")
    assert cli_main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", out]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    other = _NotAStudent()
    save_checkpoint(
        tmp_path / "other.pt",
        {"arch": "tests_students_not_a_student", "model_kwargs": {"width": 4}, "model": other.state_dict()},
    )
    assert cli_main(["export", "--checkpoint", str(tmp_path / "other.pt"), "--out", out]) == 1
    assert "not a streaming student" in capsys.readouterr().err
    save_checkpoint(tmp_path / "unknown.pt", {"arch": "no_such_arch", "model_kwargs": {}, "model": {}})
    assert cli_main(["export", "--checkpoint", str(tmp_path / "unknown.pt"), "--out", out]) == 1
    assert "unknown model arch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["export", "--checkpoint", str(tmp_path / "other.pt"), "--out", out, "--format", "tflite"])
