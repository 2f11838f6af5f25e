"""Training: the loop (:mod:`asrkd.train.loop`: ``train``, ``fit``, ``evaluate``), the run it
trains (:mod:`asrkd.train.run`) and how a student's run is built from its YAML config
(:mod:`asrkd.train.build`, :mod:`asrkd.train.config`) and saved (:mod:`asrkd.train.checkpointing`);
learning-rate schedules, RNG state for exact resume, torch.distributed helpers, and teacher
adaptation on the same loop (:mod:`asrkd.train.adapt`).

``from asrkd.train import train, TrainingError`` works as before the package existed; the
loop is imported on first use, so ``asrkd.train.config`` stays light.
"""

from __future__ import annotations

_LOOP_NAMES = ("TrainingError", "evaluate", "train")


def __getattr__(name: str):
    if name in _LOOP_NAMES:
        from asrkd.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'asrkd.train' has no attribute {name!r}")


__all__ = list(_LOOP_NAMES)
