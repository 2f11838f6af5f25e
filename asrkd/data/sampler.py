"""Duration-bucketed batch sampler: bounded padded seconds per batch, per-epoch shuffle,
DDP shards, exact mid-epoch resume."""

from __future__ import annotations

import hashlib
import logging
import random
import struct
from typing import Any, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)


def duration_batches(durations: Sequence[float], max_seconds: float) -> list[list[int]]:
    """Indices in increasing duration, cut so that ``len(batch) × longest ≤ max_seconds``
    (padded audio per batch); an item longer than that is a batch alone. Deterministic; for
    one pass over a set (caching, decoding), where :class:`DurationBatchSampler` is for training."""
    order = sorted(range(len(durations)), key=lambda i: durations[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * durations[i] > max_seconds:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


class DurationBatchSampler:
    """Yields lists of dataset indices (a ``batch_sampler`` for ``torch.utils.data.DataLoader``).

    - **Seconds bound**: a batch of n utterances whose longest lasts d seconds satisfies
      ``n * d <= max_seconds``: the padded audio, which is what costs memory, is bounded.
      Utterances longer than ``max_seconds`` cannot be batched: they are left out and listed
      in :attr:`too_long` (the dataset's ``Rejects`` can record them, see
      :meth:`record_too_long`).
    - **Buckets**: utterances are sorted by duration into ``num_buckets`` buckets of equal
      count; batches are cut inside a bucket so they hold similar lengths.
    - **Shuffle**: every epoch the order within buckets and the order of batches are drawn
      from ``seed + epoch`` (call :meth:`set_epoch`); same seed, same epoch, same batches.
    - **DDP**: every rank plans the same batches and takes every ``world_size``-th one. The
      plan is made a multiple of ``world_size`` by splitting the largest batches, so ranks
      get the same number of batches (no DDP hang) and no utterance is dropped or repeated.
      Only when there are fewer splittable batches than needed are batches repeated
      (counted in :attr:`padded_batches`).
    - **Resume**: ``state_dict(batches_done)`` / ``load_state_dict`` restart the epoch at the
      next batch of the same order.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_seconds: float,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_buckets: int = 10,
        max_batch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        ids: Sequence[str] | None = None,
    ):
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        if rank is None or world_size is None:
            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.durations = [float(d) for d in durations]
        self.ids = list(ids) if ids is not None else None
        self.max_seconds = float(max_seconds)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_buckets = max(1, int(num_buckets))
        self.max_batch_size = max_batch_size
        self.rank, self.world_size = int(rank), int(world_size)
        self.too_long = [i for i, d in enumerate(self.durations) if d > self.max_seconds]
        if self.too_long:
            log.warning(
                "%d utterance(s) longer than max_seconds=%.1f are left out of batching",
                len(self.too_long),
                self.max_seconds,
            )
        self._usable = [i for i, d in enumerate(self.durations) if d <= self.max_seconds]
        if 0 < len(self._usable) < self.world_size:
            raise ValueError(f"{len(self._usable)} utterances cannot feed {self.world_size} ranks")
        self.epoch = 0
        self.padded_batches = 0
        self._skip = 0  # batches of the current epoch already done (resume)
        self._yielded = 0
        self._plan_cache: tuple[int, list[list[int]]] | None = None

    # -- planning -------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (every rank computes the same list)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(self._usable)
        if self.shuffle:
            rng.shuffle(order)  # ties in duration are broken randomly by the stable sort below
        order.sort(key=lambda i: self.durations[i])
        n = len(order)
        batches: list[list[int]] = []
        for b in range(self.num_buckets):
            bucket = order[b * n // self.num_buckets : (b + 1) * n // self.num_buckets]
            if self.shuffle:
                rng.shuffle(bucket)
            batches.extend(self._cut(bucket))
        self.padded_batches = 0
        if self.world_size > 1 and batches:
            batches = self._even_out(batches)
        if self.shuffle:
            rng.shuffle(batches)
        self._plan_cache = (epoch, batches)
        return batches

    def _cut(self, bucket: list[int]) -> list[list[int]]:
        batches, cur, longest = [], [], 0.0
        for i in bucket:
            d = self.durations[i]
            new_longest = max(longest, d)
            full = self.max_batch_size is not None and len(cur) >= self.max_batch_size
            if cur and (new_longest * (len(cur) + 1) > self.max_seconds or full):
                batches.append(cur)
                cur, new_longest = [], d
            cur.append(i)
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def _even_out(self, batches: list[list[int]]) -> list[list[int]]:
        need = (-len(batches)) % self.world_size
        while need:
            biggest = max(range(len(batches)), key=lambda k: (len(batches[k]), -k))
            b = batches[biggest]
            if len(b) < 2:
                break
            batches[biggest : biggest + 1] = [b[: len(b) // 2], b[len(b) // 2 :]]
            need -= 1
        if need:
            # Fewer utterances than it takes: repeat batches so every rank steps the same times.
            self.padded_batches = need
            batches = batches + [list(batches[k % len(batches)]) for k in range(need)]
        return batches

    # -- Sampler protocol -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self._plan(self.epoch)[self.rank :: self.world_size]
        start, self._skip = self._skip, 0
        self._yielded = start
        for batch in mine[start:]:
            self._yielded += 1
            yield list(batch)

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (all of them, resume or not)."""
        return len(self._plan(self.epoch)[self.rank :: self.world_size])

    # -- resume -----------------------------------------------------------------------------
    def _fingerprint(self) -> str:
        h = hashlib.sha1()
        for d in self.durations:
            h.update(struct.pack("<d", d))
        h.update(repr((self.max_seconds, self.num_buckets, self.max_batch_size, self.shuffle)).encode())
        return h.hexdigest()[:16]

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where this rank stands in the epoch.

        ``batches_done``: batches of the current epoch the training loop has consumed. Pass
        it when the DataLoader prefetches (``num_workers > 0``): the sampler itself only
        knows how many batches it has handed out, which runs ahead of the loop.
        """
        return {
            "epoch": self.epoch,
            "batches_done": self._yielded if batches_done is None else int(batches_done),
            "seed": self.seed,
            "world_size": self.world_size,
            "fingerprint": self._fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The next ``__iter__`` continues the saved epoch after its done batches."""
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError(
                "sampler state was saved for other data or batching settings "
                "(durations, max_seconds, buckets differ): cannot resume the same order"
            )
        if state.get("world_size") != self.world_size:
            raise ValueError(
                f"sampler state was saved with world_size={state.get('world_size')}, now {self.world_size}"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._plan_cache = None
        self._skip = int(state["batches_done"])
        self._yielded = self._skip

    def record_too_long(self, rejects) -> None:
        """Count the utterances left out (kind ``too_long``) in a :class:`~asrkd.data.rejects.Rejects`."""
        for i in self.too_long:
            uid = self.ids[i] if self.ids is not None else str(i)
            rejects.add(
                uid,
                "too_long",
                f"{uid}: {self.durations[i]:.2f} s does not fit a batch of max_seconds={self.max_seconds}",
            )


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return 0, 1
