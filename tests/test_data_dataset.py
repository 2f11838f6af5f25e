from __future__ import annotations

import json

import numpy as np
import soundfile as sf
import torch

from asrkd.data.dataset import ASRDataset, build_dataloader, collate
from asrkd.data.features import FeatureConfig, FeaturePipeline, GlobalCMVN, SpecAugment
from asrkd.data.manifest import Utterance, load_manifest
from asrkd.data.rejects import RejectRecord, Rejects
from asrkd.data.sampler import DurationBatchSampler
from asrkd.data.tokenizer import CharTokenizer

torch.set_num_threads(1)


def _wav(path, seconds, seed=0, nan=False):
    x = (0.1 * np.random.RandomState(seed).randn(int(seconds * 16000))).astype(np.float32)
    if nan:
        x[7] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT" if nan else "PCM_16")
    return str(path)


def _corpus(tmp_path):
    """A manifest with good items and every kind of bad one, as JSONL (as the trainer reads it)."""
    good = [
        {
            "id": f"g{i}",
            "audio": _wav(tmp_path / f"g{i}.wav", 1.0 + 0.25 * i, i),
            "duration": 1.0 + 0.25 * i,
            "text": "hello world",
        }
        for i in range(6)
    ]
    unl = {"id": "unl", "audio": _wav(tmp_path / "unl.wav", 1.2, 9), "duration": 1.2}
    (tmp_path / "junk.wav").write_text("not audio")
    rows = good + [
        unl,
        {"id": "missing", "audio": str(tmp_path / "nope.wav"), "duration": 1.0, "text": "a"},
        {"id": "junk", "audio": str(tmp_path / "junk.wav"), "duration": 1.0, "text": "a"},
        {"id": "nan", "audio": _wav(tmp_path / "nan.wav", 1.0, nan=True), "duration": 1.0, "text": "a"},
        {"id": "oov", "audio": good[0]["audio"], "duration": 1.0, "text": "stra\u00dfe"},
        {"id": "empty", "audio": good[0]["audio"], "duration": 1.0, "text": "  "},
        {
            "id": "short",
            "audio": _wav(tmp_path / "short.wav", 0.3),
            "duration": 0.3,
            "text": "far too long a transcript",
        },
        # the manifest claims 2 s, the file holds 0.3 s (cut after prepare): caught when loaded
        {"id": "cut", "audio": str(tmp_path / "short.wav"), "duration": 2.0, "text": "far too long a transcript"},
        # 24 labels fit 1.0 s (24 frames after 4x) but not the 0.96 s the file holds
        {
            "id": "tight",
            "audio": _wav(tmp_path / "tight.wav", 0.96),
            "duration": 1.0,
            "text": "abcdefghijklmnopqrstuvwx",
        },
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    return path


def _dataset(tmp_path, **kw):
    rejects = Rejects()
    utts = load_manifest(_corpus(tmp_path), rejects)
    ds = ASRDataset(
        utts,
        CharTokenizer.english(),
        FeaturePipeline(FeatureConfig(), GlobalCMVN.identity()),
        subsampling=4,
        rejects=rejects,
        **kw,
    )
    return ds, rejects


def test_manifest_level_checks_are_counted(tmp_path):
    ds, rejects = _dataset(tmp_path)
    assert rejects.counts() == {"malformed_line": 1, "empty_text": 1, "oov_chars": 1, "too_short_for_ctc": 1}
    assert set(ds.ids) == {"g0", "g1", "g2", "g3", "g4", "g5", "unl", "missing", "junk", "nan", "cut", "tight"}
    assert len(ds.durations) == len(ds)


def test_items_and_load_time_rejects(tmp_path):
    ds, _ = _dataset(tmp_path)
    items = {ds.ids[i]: ds[i] for i in range(len(ds))}
    for uid, kind in [
        ("missing", "missing_file"),
        ("junk", "unreadable"),
        ("nan", "nan_audio"),
        ("cut", "duration_mismatch"),
        ("tight", "too_short_for_ctc"),
    ]:
        assert isinstance(items[uid], RejectRecord) and items[uid].kind == kind, uid
        assert uid in items[uid].reason
    g = items["g4"]
    assert g["wave"].shape == (32000,) and g["feats"].shape == (198, 80)
    assert CharTokenizer.english().decode(g["targets"].tolist()) == "hello world" and g["has_text"]
    u = items["unl"]
    assert not u["has_text"] and u["targets"].numel() == 0

    batch = collate([items["g0"], items["missing"], items["g4"], items["unl"]])
    assert batch["size"] == 3 and batch["ids"] == ["g0", "g4", "unl"]
    assert batch["waves"].shape == (3, 32000) and batch["wave_lengths"].tolist() == [16000, 32000, 19200]
    assert batch["feats"].shape == (3, 198, 80) and batch["feat_lengths"].tolist() == [98, 198, 118]
    assert batch["targets"].shape == (3, 11) and batch["target_lengths"].tolist() == [11, 11, 0]
    assert batch["has_text"].tolist() == [True, True, False]
    assert (batch["waves"][0, 16000:] == 0).all() and (batch["feats"][0, 98:] == 0).all()
    assert [r.id for r in batch["rejected"]] == ["missing"]
    empty = collate([items["missing"]])
    assert empty["size"] == 0 and empty["waves"].shape[0] == 0 and len(empty["rejected"]) == 1


def test_dataloader_with_workers_delivers_everything_and_reports_rejects(tmp_path):
    ds, rejects = _dataset(tmp_path, train=True, speed_factors=(0.9, 1.0, 1.1))
    ds.features.specaug = SpecAugment()
    sampler = DurationBatchSampler(ds.durations, max_seconds=5.0, seed=0, ids=ds.ids)
    loader = build_dataloader(ds, sampler, num_workers=2)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in loader:
            rejects.extend(batch["rejected"])  # what the training loop does
            seen.extend(batch["ids"])
            if batch["size"]:
                assert batch["feats"].shape[0] == batch["size"] and batch["feats"].shape[2] == 80
                assert torch.isfinite(batch["feats"]).all()
                assert (batch["feat_lengths"] <= batch["feats"].shape[1]).all()
    good = {"g0", "g1", "g2", "g3", "g4", "g5", "unl"}
    assert sorted(seen) == sorted(list(good) * 2)  # each good item once per epoch
    counts = rejects.counts()
    # rejected again in epoch 2, counted once
    assert counts["missing_file"] == 1 and counts["unreadable"] == 1 and counts["nan_audio"] == 1
    assert counts["duration_mismatch"] == 1
    # "short" at build time; "tight" when loaded (speed perturbation's 1.1 rejects it at build time here)
    assert counts["too_short_for_ctc"] == 2
    assert "missing_file" in rejects.summary()


def test_dataset_without_features_or_tokenizer(tmp_path):
    path = _wav(tmp_path / "a.wav", 1.0)
    ds = ASRDataset([Utterance("a", path, 1.0, text="whatever \u00df")], tokenizer=None, features=None)
    item = ds[0]
    assert "feats" not in item and item["targets"].numel() == 0
    batch = collate([item])
    assert "feats" not in batch and batch["waves"].shape == (1, 16000)


def test_train_and_dev_datasets_can_share_one_pipeline(tmp_path):
    path = _wav(tmp_path / "a.wav", 1.0)
    utts = [Utterance("a", path, 1.0, text="hi")]
    front = FeaturePipeline(FeatureConfig(), GlobalCMVN.identity(), SpecAugment(time_width=20, max_time_ratio=0.5))
    dev = ASRDataset(utts, CharTokenizer.english(), front, train=False)
    train = ASRDataset(utts, CharTokenizer.english(), front, train=True)
    assert not dev.features.training and train.features.training
    torch.manual_seed(0)
    assert torch.equal(dev[0]["feats"], dev[0]["feats"])  # no SpecAugment on dev
    assert any(not torch.equal(train[0]["feats"], dev[0]["feats"]) for _ in range(5))
