"""What one training run holds (:class:`Run`), and the small things the loop shares.

A :class:`Run` is built once (:func:`asrkd.train.build.build_run` for a student,
:func:`asrkd.train.adapt.adapt` for a Whisper teacher) and then handed to the loop
(:mod:`asrkd.train.loop`), which reads its parts and advances its :class:`Progress`. Nothing
in the loop knows which of the two it trains: the model and the :class:`Objective` say how a
batch becomes a loss, ``save`` says where checkpoints go.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from asrkd.kd.align import TeacherOutput
from asrkd.train.distributed import DistInfo, all_reduce


class TrainingError(RuntimeError):
    """The run cannot go on (too many NaN/Inf steps in a row, ranks out of step, ...)."""


@dataclass
class LoopConfig:
    """How the loop runs: the ``train.*`` and step-shaping ``optim.*`` settings."""

    epochs: int
    accum_steps: int = 1
    clip_grad_norm: float = math.inf
    log_every: int | None = 50  # None: no step lines, only the epochs'
    eval_every_steps: int | None = None
    save_every_steps: int | None = None
    max_steps: int | None = None
    max_nonfinite: int = 20
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> LoopConfig:
        o, tr = cfg["optim"], cfg["train"]
        return cls(
            epochs=int(tr["epochs"]),
            accum_steps=int(o["accum_steps"]),
            clip_grad_norm=float(o["clip_grad_norm"]) if o["clip_grad_norm"] else math.inf,
            log_every=tr["log_every"],
            eval_every_steps=tr["eval_every_steps"],
            save_every_steps=tr["save_every_steps"],
            max_steps=tr["max_steps"],
            max_nonfinite=tr["max_nonfinite"],
            progress=bool(tr["progress"]),
        )


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint (plain data) and restored on resume."""

    epoch: int = 0  # epochs finished
    batches_done: int = 0  # batches of the current epoch already trained on
    step: int = 0  # optimizer steps taken or skipped
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    nonfinite_skipped: int = 0
    nonfinite_run: int = 0  # skipped in a row
    epoch_stats: dict[str, float] = field(default_factory=lambda: Stats().state())
    elapsed_s: float = 0.0  # of the runs before a resume

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> Progress:
        return cls(**{f.name: ckpt[f.name] for f in fields(cls)})


class Objective:
    """Forward + loss of one batch: ``net(feats, feat_lengths)`` -> logits, then
    ``loss_fn`` (a :class:`~asrkd.kd.loss.DistillationLoss`) with the teacher's outputs, which
    come from a cache (``cache.targets``), from a teacher run on the batch's waveforms, or
    from nowhere (CTC only). Returns ``(loss, DistillationOutput | None)``.

    A batch left empty on this rank by bad audio still runs a zero-weighted forward (of
    ``dummy_frames`` frames of ``input_dim`` features), so every rank joins the gradient
    all-reduce.
    """

    def __init__(
        self,
        loss_fn,
        *,
        input_dim: int,
        dummy_frames: int,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        cache=None,
        teacher=None,
    ):
        self.loss_fn, self.cache, self.teacher = loss_fn, cache, teacher
        self.input_dim, self.dummy_frames = input_dim, dummy_frames
        self.device, self.amp_dtype = device, amp_dtype

    def __call__(self, net: torch.nn.Module, batch: dict[str, Any]):
        device = self.device
        if batch["size"] == 0:
            feats = torch.zeros(1, self.dummy_frames, self.input_dim, device=device)
            with autocast(device, self.amp_dtype):
                logits, _ = net(feats, torch.tensor([self.dummy_frames], device=device))
            return logits.float().sum() * 0.0, None
        with autocast(device, self.amp_dtype):
            logits, out_lengths = net(
                batch["feats"].to(device, non_blocking=True), batch["feat_lengths"].to(device, non_blocking=True)
            )
        out = self.loss_fn(
            logits,
            out_lengths,
            batch["targets"].to(device),
            batch["target_lengths"].to(device),
            has_text=batch["has_text"].to(device),
            teacher=self._teacher_outputs(batch),
        )
        return out.loss, out

    def _teacher_outputs(self, batch: dict[str, Any]) -> TeacherOutput | None:
        if self.cache is not None:
            return self.cache.targets(batch["ids"], self.device)
        if self.teacher is None:
            return None
        with autocast(self.device, self.amp_dtype):
            t_logits, t_lengths = self.teacher(
                batch["waves"].to(self.device, non_blocking=True),
                batch["wave_lengths"].to(self.device, non_blocking=True),
            )
        return TeacherOutput(logits=t_logits, lengths=t_lengths)


@dataclass
class DevSet:
    """The dev data: its loader, the references (raw manifest text of every labelled dev
    utterance, rejected ones included) and where its rejected items are counted."""

    loader: Any
    refs: dict[str, str]
    rejects: Any


@dataclass
class Run:
    """One training run: what the loop needs, built by :mod:`asrkd.train.build` or
    :mod:`asrkd.train.adapt`."""

    loop: LoopConfig
    ddp: DistInfo
    model: torch.nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Any  # a DurationBatchSampler
    items: Any  # the SeededItems the loader reads (its epoch is set per epoch)
    loader: Any
    tokenizer: Any
    rejects: Any  # a Rejects for the training data
    log: Log
    #: writes checkpoints: ``save(run, names, epoch, batches_done)``, called on every rank
    save: Callable[..., None]
    dev: DevSet | None = None
    progress: Progress = field(default_factory=Progress)
    net: torch.nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    amp_dtype: torch.dtype | None = None
    sample_rate: int = 16000  # of batch["wave_lengths"], for the audio seconds in the log
    deadline: float | None = None  # time.monotonic() past which training stops (after one epoch)
    last_checkpoint: str = "last.pt"  # named in the NaN/Inf error
    tb: Any = None  # a TensorBoard SummaryWriter
    t_start: float = field(default_factory=time.time)
    #: the checkpoint entries that do not change during the run (arch, tokenizer, config, ...)
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)
    exp: Path | None = None

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @property
    def device(self) -> torch.device:
        return self.ddp.device

    @property
    def main(self) -> bool:
        return self.ddp.is_main


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


class Stats:
    """Sums over batches for logging: utterance-weighted losses, utterances, audio seconds."""

    KEYS = ("loss", "ctc", "kd", "utts", "seconds", "batches")

    def __init__(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.finite = True

    def add(self, loss: torch.Tensor, out, n: int, seconds: float) -> None:
        if not bool(torch.isfinite(loss.detach())):
            self.finite = False
            return
        if out is None or n == 0:
            return
        self.sums["loss"] += float(out.loss.detach()) * n
        self.sums["ctc"] += float(out.ctc) * n
        self.sums["kd"] += float(out.kd) * n
        self.sums["utts"] += n
        self.sums["seconds"] += seconds
        self.sums["batches"] += 1

    def merge(self, other: Stats) -> None:
        for k in self.KEYS:
            self.sums[k] += other.sums[k]

    def reduced(self, ddp: DistInfo, device) -> dict[str, float]:
        """Averages over every rank's sums (a collective: all ranks call it together)."""
        t = all_reduce(torch.tensor([self.sums[k] for k in self.KEYS], dtype=torch.float64, device=device), ddp)
        s = dict(zip(self.KEYS, t.tolist()))
        n = max(s["utts"], 1.0)
        return {
            "loss": s["loss"] / n,
            "ctc": s["ctc"] / n,
            "kd": s["kd"] / n,
            "utts": s["utts"],
            "seconds": s["seconds"],
            "batches": s["batches"],
        }

    def state(self) -> dict[str, float]:
        return dict(self.sums)

    @classmethod
    def from_state(cls, state: dict[str, float]) -> Stats:
        s = cls()
        s.sums.update(state)
        return s


class Log:
    """Prints (through tqdm, so progress bars stay intact) and appends to ``path`` if given;
    ``quiet`` (the other DDP ranks) prints nothing."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.path, self.quiet = path, quiet

    def __call__(self, msg: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def write_log(self, msg: str) -> None:
        print(msg, flush=True)

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar (loss, rate, ETA), or a stand-in that only prints log lines."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
    bar.write_log = lambda msg: tqdm.write(msg)
    return bar
