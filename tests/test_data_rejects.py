"""Rejects count items: one skipped utterance is one record, whichever stages skip it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from asrkd.data.features import FeatureConfig, compute_cmvn
from asrkd.data.manifest import Utterance
from asrkd.data.rejects import Rejects
from asrkd.data.sampler import DurationBatchSampler


def test_an_item_skipped_by_two_stages_is_counted_once():
    r = Rejects()
    assert r.add("u1", "truncated", "u1: short file")
    assert not r.add("u1", "too_long", "u1: does not fit a batch")  # the same item, skipped again
    assert r.add("u1", "duplicate_id", "m.jsonl:9: duplicate id u1")  # another line with the same id: an item
    assert r.add("u2", "too_long", "u2: long")
    assert r.counts() == {"duplicate_id": 1, "truncated": 1, "too_long": 1} and len(r) == 3
    assert r.ids("too_long") == ["u2"]


def test_cmvn_and_sampler_count_a_wrong_duration_once(tmp_path):
    """What train does: CMVN statistics read every utterance, then the sampler drops those too
    long for a batch; an entry declaring 10 s for a 1 s file hit both."""
    utts = []
    for i in range(3):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, (0.1 * np.random.RandomState(i).randn(16000)).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", str(path), 10.0 if i == 2 else 1.0))
    rejects = Rejects()
    compute_cmvn(utts, FeatureConfig(n_mels=40), rejects=rejects)
    DurationBatchSampler(
        [u.duration for u in utts], 5.0, ids=[u.id for u in utts], rank=0, world_size=1
    ).record_too_long(rejects)
    assert len(rejects) == 1 and rejects.ids(rejects.records[0].kind) == ["u2"], rejects.records


def test_train_reject_summary_counts_items(tmp_path):
    """18 utterances, one of them (durlong) declaring 10 s for a short file: 1 rejected, not 2."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import base_config, make_corpus

    from asrkd.train.loop import train

    manifest = make_corpus(tmp_path, "train", 18, seed=0)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[3].update(id="durlong", duration=10.0)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train(base_config(tmp_path, manifest, train={"epochs": 1}))
    assert sum(summary["rejected"].values()) == 1, summary["rejected"]
    report = (Path(tmp_path) / "exp" / "rejected.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in report] == ["durlong"]
