from __future__ import annotations

import random
from collections import Counter

import pytest

from asrkd.data.rejects import Rejects
from asrkd.data.sampler import DurationBatchSampler


def _durations(n=300, seed=0):
    rng = random.Random(seed)
    return [round(rng.uniform(0.5, 12.0), 3) for _ in range(n)]


def _check_bound(sampler, batches):
    for b in batches:
        assert len(b) * max(sampler.durations[i] for i in b) <= sampler.max_seconds + 1e-9


def test_epoch_covers_everything_once_and_respects_the_bound():
    durs = _durations() + [25.0, 40.0]  # two too long for any batch
    s = DurationBatchSampler(durs, max_seconds=24.0, seed=1, ids=[f"u{i}" for i in range(len(durs))])
    assert s.too_long == [300, 301]
    rejects = Rejects()
    s.record_too_long(rejects)
    assert rejects.counts() == {"too_long": 2} and rejects.ids("too_long") == ["u300", "u301"]
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(300))  # nothing lost, nothing twice
        _check_bound(s, batches)
        orders.append(flat)
    assert orders[0] != orders[1] != orders[2]
    # buckets: batches hold similar durations
    spread = [max(durs[i] for i in b) - min(durs[i] for i in b) for b in batches if len(b) > 1]
    assert sum(spread) / len(spread) < 2.0
    # same seed + epoch -> same batches; different seed -> different
    s2 = DurationBatchSampler(durs, max_seconds=24.0, seed=1)
    s2.set_epoch(2)
    assert list(s2) == batches
    s3 = DurationBatchSampler(durs, max_seconds=24.0, seed=2)
    s3.set_epoch(2)
    assert list(s3) != batches


def test_no_shuffle_and_max_batch_size():
    durs = [1.0] * 50
    s = DurationBatchSampler(durs, max_seconds=100.0, shuffle=False, max_batch_size=8)
    batches = list(s)
    assert all(len(b) <= 8 for b in batches)
    assert [i for b in batches for i in b] == list(range(50))
    with pytest.raises(ValueError):
        DurationBatchSampler(durs, max_seconds=0)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_are_disjoint_complete_and_equal_length(world):
    durs = _durations(203, seed=world)
    for epoch in range(2):
        per_rank = []
        for rank in range(world):
            s = DurationBatchSampler(durs, max_seconds=30.0, seed=7, rank=rank, world_size=world)
            s.set_epoch(epoch)
            per_rank.append(list(s))
            assert s.padded_batches == 0
            _check_bound(s, per_rank[-1])
        assert len({len(b) for b in per_rank}) == 1  # every rank steps the same number of times
        flat = [i for batches in per_rank for b in batches for i in b]
        assert Counter(flat) == Counter(range(203))


def test_ddp_repeats_batches_only_when_it_must():
    # 3 utterances that each fill a batch, 2 ranks: one batch must run twice
    durs = [10.0, 10.0, 10.0]
    got = []
    for rank in range(2):
        s = DurationBatchSampler(durs, max_seconds=10.0, rank=rank, world_size=2)
        got.append(list(s))
        assert s.padded_batches == 1
    assert len(got[0]) == len(got[1]) == 2
    assert {i for batches in got for b in batches for i in b} == {0, 1, 2}
    with pytest.raises(ValueError, match="cannot feed"):
        DurationBatchSampler([1.0], max_seconds=10.0, rank=0, world_size=2)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_continues_the_same_order(world):
    durs = _durations(150)
    for rank in range(world):
        ref = DurationBatchSampler(durs, max_seconds=20.0, seed=5, rank=rank, world_size=world)
        ref.set_epoch(3)
        full = list(ref)
        a = DurationBatchSampler(durs, max_seconds=20.0, seed=5, rank=rank, world_size=world)
        a.set_epoch(3)
        it = iter(a)
        done = [next(it) for _ in range(4)]
        state = a.state_dict()
        assert state["batches_done"] == 4 and state["epoch"] == 3
        b = DurationBatchSampler(durs, max_seconds=20.0, seed=0, rank=rank, world_size=world)
        b.load_state_dict(state)
        b.set_epoch(3)  # a training loop calls this again on resume: it must not reset
        rest = list(b)
        assert done + rest == full
        # the epoch after the resumed one starts from its beginning
        b.set_epoch(4)
        ref.set_epoch(4)
        assert list(b) == list(ref)
        # with a prefetching DataLoader the loop says how many batches it consumed
        assert a.state_dict(batches_done=2)["batches_done"] == 2


def test_resume_refuses_other_data():
    s = DurationBatchSampler(_durations(50), max_seconds=20.0)
    state = s.state_dict()
    with pytest.raises(ValueError, match="other data"):
        DurationBatchSampler(_durations(51), max_seconds=20.0).load_state_dict(state)
    with pytest.raises(ValueError, match="other data"):
        DurationBatchSampler(_durations(50), max_seconds=25.0).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        DurationBatchSampler(_durations(50), max_seconds=20.0, rank=0, world_size=2).load_state_dict(state)
