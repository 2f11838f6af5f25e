"""Learning-rate schedules as multipliers of the peak rate, for ``torch.optim.lr_scheduler.LambdaLR``.

- ``cosine``: linear warm-up over ``warmup_steps`` to 1, then a half cosine down to
  ``min_lr_ratio`` at ``total_steps`` (flat afterwards).
- ``noam``: linear warm-up to 1 at ``warmup_steps``, then ``sqrt(warmup_steps / step)``
  (the Transformer schedule, normalised so its peak is the configured rate).
- ``constant``: linear warm-up, then 1.
"""

from __future__ import annotations

import math
import time

import torch


class LRSchedule:
    """Picklable ``step -> factor`` (``LambdaLR`` stores it in its state dict)."""

    def __init__(self, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
        if kind not in ("cosine", "noam", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind = kind
        self.warmup = max(0, int(warmup_steps))
        self.total = max(1, int(total_steps))
        self.min_ratio = float(min_lr_ratio)

    def __call__(self, step: int) -> float:
        s = step + 1  # LambdaLR calls with the number of steps taken; the first step gets a nonzero rate
        if self.warmup and s <= self.warmup:
            return s / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "noam":
            return math.sqrt(max(self.warmup, 1) / s)
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (s - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(kind, warmup_steps, total_steps, min_lr_ratio))


def resume_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Continue ``scheduler`` (built from the current config) at optimizer step ``step``.

    Used on resume instead of ``load_state_dict``, which would bring back the schedule the run
    started with (``LambdaLR`` pickles the ``LRSchedule``'s fields): a run resumed with more
    epochs, another ``optim.lr`` or another warm-up follows the new schedule from the step it
    reached. With an unchanged config every rate is the same as without the interruption.
    The optimizer's groups get the rate of that step (``load_state_dict`` of the optimizer
    restored the old one)."""
    scheduler.last_epoch = int(step)
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class TimeBudget:
    """A schedule that follows a wall-clock budget as well as its steps (for ``LambdaLR``).

    At step ``s`` it gives ``schedule(position)`` with ``position = max(s, total_steps · f)``,
    ``f`` the fraction of the time from now to ``deadline`` (a ``time.monotonic()`` time) used
    so far: the schedule ends when the steps or the time run out, whichever comes first. It
    never runs faster than ``min_steps`` steps for the whole schedule (one epoch, say): when
    the time is gone before those are done, those steps still get the whole schedule.
    """

    def __init__(self, schedule: LRSchedule, total_steps: int, deadline: float, min_steps: int = 1):
        self.schedule, self.total, self.min_steps = schedule, max(1, int(total_steps)), max(1, int(min_steps))
        self.start = time.monotonic()
        self.budget = max(deadline - self.start, 1e-3)

    def __call__(self, step: int) -> float:
        used = (time.monotonic() - self.start) / self.budget
        return self.schedule(max(step, self.total * min(used, step / self.min_steps)))
