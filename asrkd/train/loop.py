"""The trainer: :func:`train` a streaming student with CTC + λ·KD, read top to bottom.

:func:`train` builds the run from its config (:func:`asrkd.train.build.build_run`: data,
teacher, student, loss, loaders, optimizer, schedule, resume), then :func:`fit` runs the
epochs: :func:`train_one_epoch` takes optimizer steps (:func:`train_step`: forward, loss,
backward over ``optim.accum_steps`` batches, a skipped step for a NaN/Inf loss, clipping,
AdamW, schedule) and logs; :func:`finish_epoch` scores the dev set (:func:`evaluate`), keeps
the history and writes the checkpoints (``last.pt``, ``best.pt``: the lowest dev CER). The
config keys are in :data:`asrkd.train.config.DEFAULTS` and ``docs/training.md``; the
command line is :mod:`asrkd.cli.train`.

Teacher adaptation (:mod:`asrkd.train.adapt`) runs the same :func:`fit` on another
:class:`~asrkd.train.run.Run`: a CTC head on cached frozen-encoder outputs.

Exact resume: a checkpoint holds the model, optimizer, scheduler, sampler position, the
loss's generator and every rank's Python/NumPy/torch RNG states; data augmentation is
seeded per item (:class:`~asrkd.train.state.SeededItems`) and the DataLoader draws
its worker seeds from its own generator, so a run resumed from any checkpoint reaches
the same parameters as one never interrupted (CPU, same thread count).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from itertools import islice
from typing import Any

import torch

from asrkd.atomic import write_text
from asrkd.eval.scoring import TextNormalizer, score
from asrkd.eval.search import greedy_decode
from asrkd.kd.loss import ctc_loss
from asrkd.train.build import build_run
from asrkd.train.checkpointing import training_checkpoint
from asrkd.train.config import dump, validate
from asrkd.train.distributed import DistInfo, all_reduce, broadcast_object, gather_objects, init_distributed, shutdown
from asrkd.train.run import Run, Stats, TrainingError, autocast, progress_bar

#: how dev hypotheses and references are compared: as ``asrkd wer --normalize`` does
DEV_NORMALIZER = TextNormalizer(normalize=True)


def train(cfg: dict[str, Any], resume_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says (a full config, see :func:`asrkd.train.config.load_config`).

    ``resume_from``: a checkpoint written by this trainer (``last.pt``) to continue exactly.
    Returns a summary: ``history`` (per-epoch metrics), ``best``, ``step``, checkpoint paths,
    ``nonfinite_skipped``, ``rejected`` (counts), ``wall_s``.
    """
    validate(cfg)
    ddp = init_distributed(cfg["train"]["device"])
    clean = False
    try:
        summary = _train(cfg, resume_from, ddp)
        clean = True
        return summary
    finally:
        shutdown(ddp, clean=clean)


def _train(cfg: dict[str, Any], resume_from, ddp: DistInfo) -> dict[str, Any]:
    run = build_run(cfg, resume_from, ddp)
    p = run.progress
    if p.epoch >= run.loop.epochs or (run.loop.max_steps and p.step >= run.loop.max_steps):
        run.log(f"nothing to do: the run already reached epoch {p.epoch}, step {p.step}")
        return summary(run)
    if run.main:  # only now: a resume that fails or does nothing leaves the run's config as it was
        write_text(run.exp / "config.yaml", dump(cfg))
    if ddp.enabled:
        device_ids = [ddp.device] if ddp.device.type == "cuda" else None
        run.net = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    if run.main and cfg["train"]["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        run.tb = SummaryWriter(str(run.exp / "tensorboard"))
    o = cfg["optim"]
    run.log(
        f"training: {run.loop.epochs} epochs, {math.ceil(len(run.sampler) / run.loop.accum_steps)} optimizer "
        f"steps per epoch, schedule {o['schedule']} over {run.scheduler.lr_lambdas[0].total} steps, "
        f"accum {run.loop.accum_steps}, peak lr {o['lr']:g}"
    )
    fit(run)
    if run.tb:
        run.tb.close()
    return wrap_up(run)


def fit(run: Run) -> None:
    """The epochs, from where ``run.progress`` stands to ``run.loop.epochs`` or a stop."""
    for epoch in range(run.progress.epoch, run.loop.epochs):
        stop = train_one_epoch(run, epoch)
        finish_epoch(run, epoch)
        if stop:
            run.log(f"stopping: {stop}")
            break


def train_one_epoch(run: Run, epoch: int) -> str | None:
    """Optimizer steps over this rank's batches of ``epoch`` (from ``batches_done`` on a
    resume), with log lines, and dev evaluations and saves between epoch ends as configured.
    Returns why the run stops early (``train.max_steps``, the time budget), or None."""
    lp, p = run.loop, run.progress
    run.sampler.set_epoch(epoch)
    run.items.epoch = epoch
    n_batches = len(run.sampler)
    if epoch != p.epoch:
        p.batches_done, p.epoch_stats = 0, Stats().state()
    p.epoch = epoch
    epoch_stats, window = Stats.from_state(p.epoch_stats), _LogWindow()
    run.net.train()
    bar = progress_bar(run.main and lp.progress, n_batches, p.batches_done, f"epoch {epoch + 1}/{lp.epochs}")
    batches = iter(run.loader)
    stop = None
    while p.batches_done < n_batches and not stop:
        n = min(lp.accum_steps, n_batches - p.batches_done)  # batches in this optimizer step
        grad_norm, stats = train_step(run, islice(batches, n), n)
        bar.update(n)
        if stats is not None:
            epoch_stats.merge(stats)
            window.stats.merge(stats)
        p.batches_done, p.epoch_stats = p.batches_done + n, epoch_stats.state()
        at_end = p.batches_done == n_batches
        if lp.log_every and (p.step % lp.log_every == 0 or at_end):
            _log_step(run, epoch, grad_norm, window, bar)
            window = _LogWindow()
        stop = _stop_reason(run, epoch, at_end)
        if not at_end and not stop:
            if lp.eval_every_steps and p.step % lp.eval_every_steps == 0 and run.main:
                evaluate_dev(run)
            if lp.save_every_steps and p.step % lp.save_every_steps == 0:
                run.save(run, ["last.pt"], epoch, p.batches_done)
    bar.close()
    return stop


def train_step(run: Run, batches: Iterable[dict[str, Any]], n: int) -> tuple[torch.Tensor, Stats | None]:
    """One optimizer step over ``n`` batches (gradient accumulation: each loss is divided by
    ``n``; DDP synchronises the gradients on the last one only). The step is skipped on every
    rank when any rank saw a NaN/Inf loss or gradient norm, or when bad audio left the
    batches empty on every rank (the gradients are all zero). The schedule follows steps
    taken and skipped alike. Returns the gradient norm and the batches' stats (None if skipped)."""
    stats = Stats()
    for i, batch in enumerate(batches):
        run.rejects.extend(batch["rejected"])
        sync = not run.ddp.enabled or i == n - 1
        with nullcontext() if sync else run.net.no_sync():
            loss, out = run.objective(run.net, batch)
            (loss / n).backward()
        stats.add(loss, out, batch["size"], float(batch["wave_lengths"].sum()) / run.sample_rate)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.loop.clip_grad_norm)
    flags = torch.tensor(
        [float(not (stats.finite and math.isfinite(float(grad_norm)))), float(stats.sums["utts"])], device=run.device
    )
    bad, most_utts = all_reduce(flags, run.ddp, op="max").tolist()
    taken = not bad and most_utts > 0
    if taken:
        run.optimizer.step()
        run.progress.nonfinite_run = 0
    elif bad:
        _count_nonfinite(run)
    else:
        run.log(f"step {run.progress.step + 1}: no usable utterance on any rank (bad audio), step skipped")
    run.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()" after a skipped step
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        run.scheduler.step()
    run.progress.step += 1
    return grad_norm, stats if taken else None


def _count_nonfinite(run: Run) -> None:
    p = run.progress
    p.nonfinite_skipped += 1
    p.nonfinite_run += 1
    run.log(
        f"step {p.step + 1}: non-finite loss or gradient, step skipped "
        f"({p.nonfinite_run} in a row, {p.nonfinite_skipped} in all)"
    )
    if p.nonfinite_run >= run.loop.max_nonfinite:
        raise TrainingError(
            f"{p.nonfinite_run} optimizer steps in a row had a NaN/Inf loss or gradient "
            f"(train.max_nonfinite={run.loop.max_nonfinite}); stopping at step {p.step + 1}. "
            "Lower optim.lr, keep optim.clip_grad_norm, check the data; the last good "
            f"checkpoint is {run.last_checkpoint}"
        )


class _LogWindow:
    """The steps since the last log line: their stats and when they began."""

    def __init__(self) -> None:
        self.stats, self.t0 = Stats(), time.time()


def _log_step(run: Run, epoch: int, grad_norm: torch.Tensor, window: _LogWindow, bar) -> None:
    """The progress bar's figures, a log line and TensorBoard points for the steps since the
    last log line (a collective: all ranks call it together)."""
    g = window.stats.reduced(run.ddp, run.device)
    seconds = max(time.time() - window.t0, 1e-9)
    rate = g["seconds"] / seconds
    if not (run.main and g["utts"]):
        return
    step, lr = run.progress.step, run.scheduler.get_last_lr()[0]
    bar.set_postfix_str(
        f"loss {g['loss']:.3f} ctc {g['ctc']:.3f} kd {g['kd']:.3f} lr {lr:.2e} "
        f"{g['utts'] / seconds:.1f} utt/s {rate:.0f}x audio"
    )
    if run.tb:
        for k in ("loss", "ctc", "kd"):
            run.tb.add_scalar(f"train/{k}", g[k], step)
        run.tb.add_scalar("train/lr", lr, step)
        run.tb.add_scalar("train/grad_norm", float(grad_norm), step)
        run.tb.add_scalar("train/audio_x_realtime", rate, step)
        run.tb.add_scalar("train/nonfinite_skipped", run.progress.nonfinite_skipped, step)
    bar.write_log(
        f"step {step}  epoch {epoch + 1}  loss {g['loss']:.4f}  ctc {g['ctc']:.4f}  "
        f"kd {g['kd']:.4f}  lr {lr:.3e}  |g| {float(grad_norm):.2f}  {rate:.1f}x audio"
    )


def _stop_reason(run: Run, epoch: int, at_end: bool) -> str | None:
    if run.loop.max_steps and run.progress.step >= run.loop.max_steps:
        return f"train.max_steps={run.loop.max_steps} reached"
    # a time budget ends training once it is spent, but never before the first epoch is done
    if run.deadline is not None and (epoch > 0 or at_end) and time.monotonic() >= run.deadline:
        return "the time budget is spent"
    return None


def finish_epoch(run: Run, epoch: int) -> None:
    """End of an epoch (or of the run within one): dev WER/CER, the history entry, the best
    epoch so far, and the checkpoints (``best.pt`` too when the dev CER is the lowest yet,
    or always without a dev set)."""
    p = run.progress
    finished = p.batches_done == len(run.sampler)
    g = Stats.from_state(p.epoch_stats).reduced(run.ddp, run.device)
    res = evaluate_dev(run) if run.main else None
    entry = {
        "epoch": epoch + 1,
        "step": p.step,
        "partial": not finished,
        "train_loss": g["loss"],
        "train_ctc": g["ctc"],
        "train_kd": g["kd"],
        "lr": run.scheduler.get_last_lr()[0],
        "elapsed_s": round(p.elapsed_s + time.time() - run.t_start, 1),
    }
    if res is not None:
        entry.update(dev_wer=res["wer"], dev_cer=res["cer"], dev_ctc=res["ctc"])
    p.history.append(entry)
    names = ["last.pt"]
    if run.main and (res is None or p.best is None or res["cer"] < p.best["dev_cer"]):
        p.best = {
            "epoch": epoch + 1,
            "step": p.step,
            "dev_cer": res["cer"] if res else None,
            "dev_wer": res["wer"] if res else None,
        }
        names.append("best.pt")
    p.best = broadcast_object(p.best, run.ddp)
    run.log(
        f"epoch {epoch + 1}{' (partial)' if not finished else ''}: train loss {g['loss']:.4f} "
        f"(ctc {g['ctc']:.4f}, kd {g['kd']:.4f}) in {time.time() - run.t_start:.0f} s"
        + (f"; dev %WER {res['wer']:.2f} %CER {res['cer']:.2f}" if res else "")
        + (f"; best so far: epoch {p.best['epoch']}" if p.best else "")
    )
    if finished:
        p.epoch, p.batches_done, p.epoch_stats = epoch + 1, 0, Stats().state()
        run.sampler.set_epoch(epoch + 1)
    run.save(run, names, p.epoch, p.batches_done)


def evaluate_dev(run: Run) -> dict[str, Any] | None:
    """:func:`evaluate` on the run's dev set, logged (and to TensorBoard); None without one."""
    if run.dev is None:
        return None
    res = evaluate(run.model, run.dev.loader, run.dev.refs, run.tokenizer, run.device, run.amp_dtype, run.dev.rejects)
    missing = f"{res['missing']} without a hypothesis{' (scored as deletions)' if res['missing'] else ''}"
    run.log(
        f"dev: %WER {res['wer']:.2f}  %CER {res['cer']:.2f}  ctc {res['ctc']:.3f}  ({res['utterances']} "
        f"utterances, {missing}, {res['seconds']:.0f} s)"
    )
    if run.tb:
        for k in ("wer", "cer", "ctc"):
            run.tb.add_scalar(f"dev/{k}", res[k], run.progress.step)
    return res


@torch.no_grad()
def evaluate(model, loader, refs: dict[str, str], tokenizer, device, amp_dtype=None, rejects=None) -> dict[str, Any]:
    """Greedy-decode ``loader`` and score it against ``refs`` (id -> raw transcript) exactly as
    ``asrkd wer --normalize`` does (:func:`asrkd.eval.scoring.score` with
    :data:`DEV_NORMALIZER`): a reference without a hypothesis (its audio was bad, its text
    outside the vocabulary, ...) counts as all deletions.

    Returns ``wer``, ``cer`` (percent), ``ctc`` (mean per-token CTC loss), ``utterances``
    (references scored), ``missing`` (of them without a hypothesis), ``seconds``. Rejected
    items are added to ``rejects``. Leaves the global RNG and the model's mode as they were."""
    was_training = model.training
    model.eval()
    hyps: dict[str, str] = {}
    ctc_sum, ctc_n = 0.0, 0
    t0 = time.time()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for batch in loader:
            if rejects is not None:
                rejects.extend(batch["rejected"])
            if batch["size"] == 0:
                continue
            with autocast(device, amp_dtype):
                logits, lengths = model(batch["feats"].to(device), batch["feat_lengths"].to(device))
            logits = logits.float()
            for uid, ids in zip(batch["ids"], greedy_decode(logits.cpu(), lengths.cpu(), blank=tokenizer.blank_id)):
                hyps[uid] = tokenizer.decode(ids)
            loss, used, _ = ctc_loss(
                logits.log_softmax(-1),
                lengths,
                batch["targets"].to(device),
                batch["target_lengths"].to(device),
                blank=tokenizer.blank_id,
            )
            ctc_sum += float(loss) * int(used)
            ctc_n += int(used)
    model.train(was_training)
    res = score(refs, hyps, normalizer=DEV_NORMALIZER)
    return {
        "wer": res["wer"],
        "cer": res["cer"],
        "ctc": ctc_sum / max(ctc_n, 1),
        "utterances": res["utterances"],
        "missing": res["missing_hyp"],
        "seconds": time.time() - t0,
    }


def wrap_up(run: Run) -> dict[str, Any]:
    """Every rank's rejected items gathered, the reject tables and report (rank 0), the summary."""
    for records in gather_objects(run.rejects.records, run.ddp):
        run.rejects.extend(records)
    result = summary(run)
    if run.main:
        run.log(run.rejects.summary(title="training data: rejected"))
        if run.dev is not None:
            run.log(run.dev.rejects.summary(title="dev data: rejected"))
        if len(run.rejects):
            run.rejects.write_report(run.exp / "rejected.jsonl")
        run.log(
            f"done: {run.progress.step} steps, {run.progress.nonfinite_skipped} skipped (NaN/Inf), "
            f"{result['wall_s']:.0f} s; checkpoints {run.exp / 'last.pt'}, {run.exp / 'best.pt'}"
        )
    return result


def summary(run: Run) -> dict[str, Any]:
    p = run.progress
    return {
        "history": p.history,
        "best": p.best,
        "step": p.step,
        "epoch": p.epoch,
        "nonfinite_skipped": p.nonfinite_skipped,
        "rejected": run.rejects.counts(),
        "last": str(run.exp / "last.pt"),
        "best_path": str(run.exp / "best.pt"),
        "wall_s": time.time() - run.t_start,
    }


__all__ = ["TrainingError", "evaluate", "fit", "train", "training_checkpoint"]
