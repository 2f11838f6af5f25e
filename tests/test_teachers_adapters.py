"""Teacher adapters on tiny random models saved in each adapter's format, and load_teacher's errors."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from asrkd.models.acoustic import AcousticModel
from asrkd.models.teachers import SPEC_FORMS, load_teacher
from asrkd.models.teachers.torchaudio_ctc import normalize_waves

TINY_W2V = dict(
    extractor_mode="layer_norm",
    extractor_conv_layer_config=[(8, 10, 5), (8, 3, 2), (8, 2, 2)],  # stride 20: 800 frames/s
    extractor_conv_bias=True,
    encoder_embed_dim=16,
    encoder_projection_dropout=0.0,
    encoder_pos_conv_kernel=8,
    encoder_pos_conv_groups=4,
    encoder_num_layers=2,
    encoder_num_heads=2,
    encoder_attention_dropout=0.0,
    encoder_ff_interm_features=32,
    encoder_ff_interm_dropout=0.0,
    encoder_dropout=0.0,
    encoder_layer_norm_first=True,
    encoder_layer_drop=0.0,
)
LABELS = ["-", "|", "A", "B", "C"]


def _waves(lengths=(1600, 1100)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), max(lengths), generator=g) * 0.1
    lengths_t = torch.tensor(lengths)
    x[torch.arange(x.size(1))[None, :] >= lengths_t[:, None]] = 0.0
    return x, lengths_t


def _check_frozen(teacher: AcousticModel) -> None:
    assert isinstance(teacher, AcousticModel) and teacher.frozen and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def _tiny_torchaudio(num_out: int):
    import torchaudio

    torch.manual_seed(0)
    return torchaudio.models.wav2vec2_model(**TINY_W2V, aux_num_out=num_out).eval()


# ----------------------------------------------------------------------- torchaudio state dict
def test_torchaudio_state_dict_with_labels_and_config(tmp_path):
    model = _tiny_torchaudio(len(LABELS))
    path = tmp_path / "w2v.pt"
    torch.save({"state_dict": model.state_dict(), "labels": LABELS, "config": TINY_W2V}, path)
    teacher = load_teacher(f"torchaudio-arch:wav2vec2_model:{path}")
    _check_frozen(teacher)
    assert teacher.vocab == LABELS and teacher.blank_id == 0 and teacher.frame_rate == 800.0
    x, lengths = _waves()
    logits, out_lengths = teacher(x, lengths)
    with torch.no_grad():
        for i in range(2):
            ref, ref_len = model(x[i : i + 1, : lengths[i]], lengths[i : i + 1])
            assert out_lengths[i] == ref_len[0] == ref.size(1)
            torch.testing.assert_close(logits[i, : out_lengths[i]], ref[0], atol=1e-5, rtol=1e-5)


def test_torchaudio_plain_state_dict_sidecar_labels_and_normalisation(tmp_path):
    model = _tiny_torchaudio(len(LABELS))
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="no labels"):
        load_teacher(f"torchaudio-arch:wav2vec2_model:{path}", config=TINY_W2V)
    (tmp_path / "plain.labels.json").write_text(json.dumps(LABELS))
    teacher = load_teacher(f"torchaudio-arch:wav2vec2_model:{path}", config=TINY_W2V, normalize_waveform=True)
    assert teacher.vocab == LABELS
    x, lengths = _waves()
    logits, out_lengths = teacher(x, lengths)
    with torch.no_grad():
        one = x[1:2, : lengths[1]]
        ref, _ = model(torch.nn.functional.layer_norm(one, one.shape), lengths[1:2])
    torch.testing.assert_close(logits[1, : out_lengths[1]], ref[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="6 labels for a model with 5"):
        load_teacher(f"torchaudio-arch:wav2vec2_model:{path}", config=TINY_W2V, labels=LABELS + ["D"])


def test_normalize_waves_ignores_padding():
    x, lengths = _waves()
    x[1, lengths[1] :] = 5.0
    y = normalize_waves(x, lengths)
    one = x[1, : lengths[1]]
    torch.testing.assert_close(y[1, : lengths[1]], torch.nn.functional.layer_norm(one, one.shape), atol=1e-5, rtol=0)
    assert torch.all(y[1, lengths[1] :] == 0)


def test_torchaudio_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown torchaudio architecture 'nope'.*wav2vec2_base"):
        load_teacher(f"torchaudio-arch:nope:{tmp_path / 'x.pt'}")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_teacher(f"torchaudio-arch:hubert_base:{tmp_path / 'missing.pt'}")
    with pytest.raises(ValueError, match="torchaudio-arch:ARCH:PATH"):
        load_teacher("torchaudio-arch:hubert_base")
    torch.save({"encoder.x": torch.zeros(1)}, tmp_path / "noaux.pt")
    with pytest.raises(ValueError, match="aux.weight"):
        load_teacher(f"torchaudio-arch:hubert_base:{tmp_path / 'noaux.pt'}")


# ----------------------------------------------------------------------- torchaudio bundles
@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    d = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(d))
    return d


def test_torchaudio_bundle_without_cached_weights_says_where_to_put_them(hub_dir):
    expected = hub_dir / "checkpoints" / "wav2vec2_fairseq_base_ls960_asr_ls960.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_teacher("torchaudio:WAV2VEC2_ASR_BASE_960H")
    msg = str(err.value)
    assert str(expected) in msg
    assert "https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960_asr_ls960.pth" in msg
    assert not expected.exists()  # nothing downloaded


def test_torchaudio_bundle_errors():
    with pytest.raises(ValueError, match="unknown torchaudio CTC bundle 'NOPE'.*WAV2VEC2_ASR_BASE_960H"):
        load_teacher("torchaudio:NOPE")
    with pytest.raises(ValueError, match="no CTC output layer"):
        load_teacher("torchaudio:WAV2VEC2_BASE")


def test_torchaudio_bundle_from_cache(hub_dir, monkeypatch):
    """A bundle whose (tiny) weights sit in the hub cache loads without network."""
    import torchaudio.pipelines as pipelines

    labels = tuple("|ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    bundle = dataclasses.replace(
        pipelines.WAV2VEC2_ASR_BASE_10M,
        _path="asrkd_tiny_test.pth",
        _params={**TINY_W2V, "aux_num_out": 29},
        _labels=labels,
    )
    monkeypatch.setattr(pipelines, "ASRKD_TINY_TEST", bundle, raising=False)
    model = _tiny_torchaudio(32)  # fairseq ASR weights carry 3 unused classes that torchaudio drops
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(model.state_dict(), hub_dir / "checkpoints" / "asrkd_tiny_test.pth")
    teacher = load_teacher("torchaudio:ASRKD_TINY_TEST")
    _check_frozen(teacher)
    assert teacher.vocab == ["-", *labels] and teacher.frame_rate == 800.0
    x, lengths = _waves()
    logits, out_lengths = teacher(x, lengths)
    keep = [i for i in range(32) if i not in (1, 2, 3)]
    with torch.no_grad():
        ref, _ = model(x[:1, : lengths[0]], lengths[:1])
    torch.testing.assert_close(logits[0, : out_lengths[0]], ref[0][:, keep], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- Hugging Face
@pytest.mark.parametrize("arch", ["Wav2Vec2ForCTC", "HubertForCTC"])
def test_hf_ctc(tmp_path, arch):
    transformers = pytest.importorskip("transformers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6, "'": 7}
    config_cls = {"Wav2Vec2ForCTC": transformers.Wav2Vec2Config, "HubertForCTC": transformers.HubertConfig}[arch]
    cfg = config_cls(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8, 8),
        conv_stride=(5, 2, 2),
        conv_kernel=(10, 3, 2),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        pad_token_id=0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
    )
    torch.manual_seed(0)
    model = getattr(transformers, arch)(cfg).eval()
    d = tmp_path / "hf"
    model.save_pretrained(d)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json")).save_pretrained(d)
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    fe.save_pretrained(d)

    teacher = load_teacher(f"hf:{d}")
    _check_frozen(teacher)
    assert teacher.vocab == list(vocab) and teacher.blank_id == 0 and teacher.frame_rate == 800.0
    x, lengths = _waves()
    logits, out_lengths = teacher(x, lengths)
    for i in range(2):
        inputs = fe(x[i, : lengths[i]].numpy(), sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            ref = model(**inputs).logits
        assert out_lengths[i] == ref.size(1)
        torch.testing.assert_close(logits[i, : out_lengths[i]], ref[0], atol=1e-4, rtol=1e-4)


def test_hf_without_transformers_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"asrkd\[hf\]"):
        load_teacher(f"hf:{tmp_path}")


def test_hf_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nodir"):
        load_teacher(f"hf:{tmp_path / 'nodir'}")


# ----------------------------------------------------------------------- spec errors
@pytest.mark.parametrize("spec", ["nope", "whisper-huge", "bert:foo", "", "model.onnx"])
def test_unknown_spec_lists_accepted_forms(spec):
    with pytest.raises(ValueError) as err:
        load_teacher(spec)
    assert "accepted teacher specs" in str(err.value) and "torchaudio:BUNDLE" in str(err.value)


def test_missing_files_are_named(tmp_path):
    for spec in (f"asrkd:{tmp_path / 'a.pt'}", str(tmp_path / "b.pt"), f"whisper:{tmp_path / 'c'}"):
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            load_teacher(spec)


def test_unexpected_option_and_foreign_pt(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither an asrkd checkpoint nor an openai-whisper"):
        load_teacher(str(tmp_path / "other.pt"))
    with pytest.raises(TypeError, match="bogus"):
        load_teacher("whisper-tiny.en", bogus=1)
    assert "hf:DIR" in SPEC_FORMS
