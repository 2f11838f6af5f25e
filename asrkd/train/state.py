"""Random state for exact resume: capture/restore, and per-item seeding of the data.

Exact resume (same parameters as an uninterrupted run) needs every random draw after the
checkpoint to repeat. The trainer's own draws (dropout, the loss's ``select`` generator)
come from generators whose states go into the checkpoint. Data augmentation (SpecAugment,
speed perturbation) runs in DataLoader workers whose assignment of batches and RNG
streams depend on where an iterator started; :class:`SeededItems` makes each item's
augmentation a function of ``(seed, epoch, index)`` alone, so it is the same whether the
item is loaded in the main process or a worker, before or after a resume.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, when in use) generator states, as tensors and
    plain values only: checkpoints load with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    if isinstance(keys, torch.Tensor):  # older checkpoints hold the NumPy array itself
        keys = keys.numpy().astype(np.uint32)
    np.random.set_state((kind, keys, *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch."""
    x = (int(seed) * 1_000_003 + int(epoch)) * 1_000_000_007 + int(index)
    return x % (2**63 - 1)


class SeededItems(Dataset):
    """Wraps a dataset: item ``i`` of epoch ``e`` is loaded under ``torch.manual_seed(item_seed(seed, e, i))``
    inside a forked RNG, so its random augmentation does not depend on the process that
    loads it or on what that process loaded before, and the caller's RNG is left untouched.

    Set :attr:`epoch` before creating each epoch's DataLoader iterator (workers copy the
    dataset when the iterator starts).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, self.epoch, index))
            return self.dataset[index]
