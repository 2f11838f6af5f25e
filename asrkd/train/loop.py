"""``asrkd train``: train a streaming student with CTC + λ·KD.

::

    asrkd train --config recipes/mini/conf/student_kd.yaml [key=value ...]     # dotted keys
    asrkd train --config conf.yaml --resume                    # continue EXP_DIR/last.pt
    torchrun --nproc_per_node 4 -m asrkd.cli train --config conf.yaml      # DDP

Read top to bottom, :func:`train` is the whole recipe: set-up (process group, seeds),
data (manifests, tokenizer, front end, CMVN), teacher (a ``cache-teacher`` folder or a
model run in the loop), student, loss, optimizer and schedule, resume, then the loop
(forward, loss, backward, a skipped step for a NaN/Inf loss, clipping, AdamW, schedule,
logging, dev WER/CER, atomic checkpoints). The config keys are in
:data:`asrkd.train.config.DEFAULTS` and ``docs/training.md``.

Exact resume: a checkpoint holds the model, optimizer, scheduler, sampler position, the
loss's generator and every rank's Python/NumPy/torch RNG states; data augmentation is
seeded per item (:class:`~asrkd.train.state.SeededItems`) and the DataLoader draws
its worker seeds from its own generator, so a run resumed from any checkpoint reaches
the same parameters as one never interrupted (CPU, same thread count).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from asrkd.atomic import atomic_write, refuse_overwrite, remove_stale_temporaries, write_text
from asrkd.kd.cache import CacheKeyError, TeacherCache, teacher_fingerprint
from asrkd.models.checkpoint import load_checkpoint, save_checkpoint, weights_hash
from asrkd.data import (ASRDataset, CharTokenizer, DurationBatchSampler, FeatureConfig, FeaturePipeline,
                        GlobalCMVN, Rejects, SpecAugment, build_dataloader, compute_cmvn, filter_by_duration,
                        load_manifest, load_tokenizer)
from asrkd.kd.loss import DistillationLoss, VocabMap, ctc_loss
from asrkd.eval.scoring import score
from asrkd.eval.search import greedy_decode
from asrkd.models.students import ARCHS, build_student, count_parameters
from asrkd.train.config import ConfigError, diff, dump, load_config, validate
from asrkd.train.distributed import (DistInfo, all_reduce, broadcast_object, gather_objects, init_distributed,
                                        shutdown)
from asrkd.train.schedule import build_scheduler, resume_scheduler
from asrkd.train.state import SeededItems, capture_rng, restore_rng, seed_everything

HELP = "train a streaming student: CTC + λ·KD from a cached or in-the-loop teacher (DDP via torchrun)"


class TrainingError(RuntimeError):
    """The run cannot go on (too many NaN/Inf steps in a row, ranks out of step, ...)."""


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
    d, m, t, lo, o, tr = (cfg[k] for k in ("data", "model", "teacher", "loss", "optim", "train"))
    t_start = time.time()

    # ---------------------------------------------------------------- set-up
    device, main = ddp.device, ddp.is_main
    if tr["threads"]:
        torch.set_num_threads(int(tr["threads"]))
    exp = Path(cfg["exp_dir"])
    if main:
        _refuse_outputs_over_inputs(cfg, exp, resume_from)
        exp.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(exp)  # of checkpoint writes a kill interrupted
    log = _Log(exp / "train.log" if main else None)
    amp_dtype = torch.bfloat16 if tr["amp"] == "bf16" or (tr["amp"] == "auto" and device.type == "cuda") else None
    seed = int(cfg["seed"])
    seed_everything(seed)
    ckpt = training_checkpoint(resume_from) if resume_from else None
    if ckpt is not None:
        changed = diff(ckpt["config"], cfg)
        log(f"resuming from {resume_from} (epoch {ckpt['epoch']}, batch {ckpt['batches_done']}, step {ckpt['step']})"
            + (f"; config changes: {'; '.join(changed)}" if changed else ""))
    elif main and (exp / "last.pt").exists():
        log(f"note: starting from scratch; the checkpoints in {exp} will be replaced (use --resume to continue)")
    log(f"world size {ddp.world_size} ({ddp.backend or 'single process'}), device {device}, "
        f"amp {amp_dtype or 'off'}, threads {torch.get_num_threads()}")

    # ---------------------------------------------------------------- data: manifests, tokenizer, front end
    rejects = Rejects()
    train_utts = load_manifest(d["train"], rejects)
    train_utts = filter_by_duration(train_utts, d["min_duration"], d["max_duration"], rejects)
    if not train_utts:
        raise TrainingError(f"no usable training utterance in {d['train']}\n{rejects.summary()}")
    if ckpt is not None:
        tokenizer = load_tokenizer(ckpt["tokenizer"])
    elif d["tokenizer"]:
        tokenizer = load_tokenizer(d["tokenizer"])
    else:
        tokenizer = CharTokenizer.build([u.text for u in train_utts if u.has_text])
    feat_cfg = FeatureConfig.from_dict(ckpt["features"] if ckpt is not None else (d["features"] or {}))
    if ckpt is not None:
        _check_same_front_end(resume_from, ckpt, d, feat_cfg, tokenizer)
        cmvn = GlobalCMVN.from_dict(ckpt["cmvn"])
    else:  # computed once (rank 0) and shared: every rank must normalise alike
        stats = _cmvn_stats(train_utts, feat_cfg, d, rejects) if main else None
        cmvn = GlobalCMVN.from_dict(broadcast_object(stats, ddp))

    # ---------------------------------------------------------------- teacher: cache or in the loop
    use_kd = lo["kd_weight"] > 0
    cache = teacher = None
    if use_kd and t["cache"]:
        try:
            cache = TeacherCache.open(t["cache"])
        except CacheKeyError:
            raise
        except (FileNotFoundError, ValueError) as err:  # no cache there, or an unfinished one
            raise TrainingError(f"teacher.cache: {err}") from None
        if t["spec"]:
            from asrkd.models.teachers import load_teacher

            cache.check_teacher(teacher_fingerprint(load_teacher(t["spec"])))
        train_utts = cache.check_entries(train_utts, rejects)
        t_vocab, t_blank, t_rate = cache.vocab, cache.blank_id, cache.frame_rate
        log(f"teacher: cache {t['cache']} ({cache.kind}{'' if cache.kind == 'dense' else f', k={cache.topk}'}, "
            f"{len(cache)} utterances, key {cache.key[:12]}, made with {cache.teacher['spec']!r})")
    elif use_kd:
        from asrkd.models.teachers import load_teacher

        teacher = load_teacher(t["spec"]).to(device)
        t_vocab, t_blank, t_rate = teacher.vocab, teacher.blank_id, teacher.frame_rate
        log(f"teacher: {t['spec']} in the loop ({count_parameters(teacher) / 1e6:.2f} M parameters)")
    elif t["cache"] or t["spec"]:
        log("note: loss.kd_weight is 0, the teacher is not used")
    if not use_kd:
        unlabelled = [u.id for u in train_utts if not u.has_text]
        if unlabelled:  # a CTC-only run cannot learn from them (label-free KD needs a teacher)
            log(f"note: {len(unlabelled)} unlabelled training utterances left out: no teacher (e.g. {unlabelled[0]})")
            train_utts = [u for u in train_utts if u.has_text]

    # ---------------------------------------------------------------- student
    torch.manual_seed(seed)  # the same initial weights on every rank, whatever ran before
    overrides = {"input_dim": feat_cfg.n_mels, "feature_rate": feat_cfg.frame_rate, **(m["overrides"] or {})}
    try:
        model = build_student(m["arch"], m["size"], len(tokenizer), **overrides).to(device)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    torch.manual_seed(seed + ddp.rank)  # dropout masks differ across ranks
    arch_name = ARCHS[m["arch"][: -len("_ctc")] if m["arch"].endswith("_ctc") else m["arch"]][0]
    log(f"student: {m['arch']} {m['size']}, {count_parameters(model) / 1e6:.2f} M parameters, "
        f"{model.frame_rate:g} frames/s, vocabulary {len(tokenizer)}, latency {model.algorithmic_latency_ms:.0f} ms")

    # ---------------------------------------------------------------- loss
    vocab_map = None
    if use_kd and list(t_vocab) != list(tokenizer.tokens):
        vocab_map = VocabMap.from_vocabs(t_vocab, tokenizer.tokens, teacher_blank_id=t_blank,
                                         student_blank_id=tokenizer.blank_id, unmapped=lo["unmapped"])
    loss_fn = DistillationLoss(
        ctc_weight=lo["ctc_weight"], kd_weight=lo["kd_weight"], temperature=lo["temperature"], shift=lo["shift"],
        blank_mode=lo["blank_mode"], blank_threshold=lo["blank_threshold"], blank_weight=lo["blank_weight"],
        vocab_map=vocab_map, student_frame_rate=model.frame_rate if use_kd else None,
        teacher_frame_rate=t_rate if use_kd else None, resample=lo["resample"], blank_id=tokenizer.blank_id,
        seed=seed)
    log(f"loss: {loss_fn.extra_repr()}")

    # ---------------------------------------------------------------- datasets, sampler, loaders
    specaug = SpecAugment(**d["specaug"]) if d["specaug"] else None
    front = FeaturePipeline(feat_cfg, cmvn, specaug)
    train_ds = ASRDataset(train_utts, tokenizer, front, train=True, subsampling=model.subsampling,
                          speed_factors=d["speed_perturb"], rejects=rejects)
    if len(train_ds) == 0:
        raise TrainingError(f"no usable training utterance in {d['train']}\n{rejects.summary()}")
    sampler = DurationBatchSampler(train_ds.durations, d["max_seconds"], seed=seed, num_buckets=d["num_buckets"],
                                   max_batch_size=d["max_batch_size"], ids=train_ds.ids)
    sampler.record_too_long(rejects)
    items = SeededItems(train_ds, seed)
    loader = build_dataloader(items, sampler, num_workers=d["num_workers"], pin_memory=device.type == "cuda")
    # Iterators draw their worker base seed from this generator, not the global RNG that
    # dropout uses, so starting an iterator (every epoch, and on resume) leaves it alone.
    loader.generator = torch.Generator().manual_seed(seed)
    dev_loader = dev_refs = None
    dev_rejects = Rejects()
    if d["dev"] and main:
        dev_utts = load_manifest(d["dev"], dev_rejects)
        dev_refs = {u.id: tokenizer.normalize(u.text) for u in dev_utts if u.has_text}
        if len(dev_refs) < len(dev_utts):
            log(f"note: {len(dev_utts) - len(dev_refs)} dev utterances have no text and are not scored")
        dev_ds = ASRDataset([u for u in dev_utts if u.has_text], tokenizer, front, train=False,
                            subsampling=model.subsampling, rejects=dev_rejects)
        dev_sampler = DurationBatchSampler(dev_ds.durations, d["max_seconds"], shuffle=False, rank=0, world_size=1,
                                           ids=dev_ds.ids)
        dev_sampler.record_too_long(dev_rejects)
        dev_loader = build_dataloader(dev_ds, dev_sampler, num_workers=d["num_workers"])
        dev_loader.generator = torch.Generator().manual_seed(seed)
    hours = sum(train_ds.durations) / 3600
    log(f"data: {len(train_ds)} training utterances ({hours:.2f} h, {sum(u.has_text for u in train_ds.utterances)} "
        f"labelled), {len(sampler)} batches per epoch per rank; dev: {len(dev_refs) if dev_refs else 0} utterances")

    # ---------------------------------------------------------------- optimizer and schedule
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on biases and norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
    accum = int(o["accum_steps"])
    epochs = int(tr["epochs"])
    steps_per_epoch = math.ceil(len(sampler) / accum)
    total_steps = int(o["total_steps"] or epochs * steps_per_epoch)
    scheduler = build_scheduler(optimizer, o["schedule"], o["warmup_steps"], total_steps, o["min_lr_ratio"])

    # ---------------------------------------------------------------- resume
    run = {"epoch": 0, "batches_done": 0, "step": 0, "history": [], "best": None, "nonfinite_skipped": 0,
           "nonfinite_run": 0, "epoch_stats": _Stats().state(), "elapsed_s": 0.0}
    if ckpt is not None:
        if len(ckpt["rng"]) != ddp.world_size:
            raise TrainingError(f"--resume {resume_from}: saved by {len(ckpt['rng'])} processes, now "
                                f"{ddp.world_size}: resume with the same number of processes")
        _load_run_state(resume_from, ckpt, model, optimizer, sampler, loss_fn)
        resume_scheduler(scheduler, ckpt["step"])
        run.update({k: ckpt[k] for k in run})
        restore_rng(ckpt["rng"][ddp.rank])  # last: nothing after this may draw from the RNGs before the loop
    if run["epoch"] >= epochs or (tr["max_steps"] and run["step"] >= tr["max_steps"]):
        log(f"nothing to do: the run already reached epoch {run['epoch']}, step {run['step']}")
        return _summary(run, exp, rejects, t_start)
    if main:  # only now: a resume that fails or does nothing leaves the run's config as it was
        write_text(exp / "config.yaml", dump(cfg))
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ddp.enabled else model
    tb = _tensorboard(exp) if main and tr["tensorboard"] else None

    # ---------------------------------------------------------------- helpers bound to this run
    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    dummy_frames = model.subsampling * max(1, getattr(model, "chunk_size", 1))

    def forward_loss(batch: dict[str, Any]):
        """Forward + loss for one batch. A batch left empty on this rank by bad audio still
        runs a zero-weighted forward, so every rank joins the gradient all-reduce."""
        if batch["size"] == 0:
            feats = torch.zeros(1, dummy_frames, feat_cfg.n_mels, device=device)
            with autocast():
                logits, _ = net(feats, torch.tensor([dummy_frames], device=device))
            return logits.float().sum() * 0.0, None
        with autocast():
            logits, out_lengths = net(batch["feats"].to(device, non_blocking=True),
                                      batch["feat_lengths"].to(device, non_blocking=True))
        teacher_kw: dict[str, Any] = {}
        if cache is not None:
            teacher_kw = cache.loss_inputs(batch["ids"], device)
        elif teacher is not None:
            with autocast():
                t_logits, t_lengths = teacher(batch["waves"].to(device, non_blocking=True),
                                              batch["wave_lengths"].to(device, non_blocking=True))
            teacher_kw.update(teacher_logits=t_logits, teacher_lengths=t_lengths)
        out = loss_fn(logits, out_lengths, batch["targets"].to(device), batch["target_lengths"].to(device),
                      has_text=batch["has_text"].to(device), **teacher_kw)
        return out.loss, out

    def save(path_names: list[str], epoch: int, batches_done: int) -> None:
        """Write the run to ``exp/<name>`` atomically (rank 0); every rank sends its RNG state
        and a hash of its parameters, which must agree across ranks."""
        rngs = gather_objects(capture_rng(), ddp)
        hashes = gather_objects(weights_hash(model), ddp)
        if len(set(hashes)) > 1:
            raise TrainingError(f"parameters differ across ranks at step {run['step']}: {hashes}")
        if not main:
            return
        state = {
            "arch": arch_name, "model_kwargs": model.model_kwargs, "model": model.state_dict(),
            "tokenizer": tokenizer.to_dict(), "features": feat_cfg.to_dict(), "cmvn": cmvn.to_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(batches_done=batches_done), "loss_rng": loss_fn.generator.get_state(),
            "rng": rngs, "rank_weights": hashes, "config": cfg, "world_size": ddp.world_size,
            "frame_rate": model.frame_rate, "params": count_parameters(model),
            "teacher": {"cache": t["cache"], "cache_key": cache.key if cache else None, "spec": t["spec"]},
            **run, "epoch": epoch, "batches_done": batches_done, "elapsed_s": run["elapsed_s"] + time.time() - t_start,
        }
        for name in path_names:
            save_checkpoint(exp / name, state)
        _write_json(exp / "history.json", {"history": run["history"], "best": run["best"]})

    def dev_eval() -> dict[str, float] | None:
        if dev_loader is None:
            return None
        res = evaluate(model, dev_loader, dev_refs, tokenizer, device, amp_dtype, dev_rejects)
        log(f"dev: %WER {res['wer']:.2f}  %CER {res['cer']:.2f}  ctc {res['ctc']:.3f}  "
            f"({res['utterances']} utterances, {res['seconds']:.0f} s)")
        if tb:
            for k in ("wer", "cer", "ctc"):
                tb.add_scalar(f"dev/{k}", res[k], run["step"])
        return res

    # ---------------------------------------------------------------- the loop
    log(f"training: {epochs} epochs, {steps_per_epoch} optimizer steps per epoch, schedule {o['schedule']} over "
        f"{total_steps} steps, accum {accum}, peak lr {o['lr']:g}")
    clip = float(o["clip_grad_norm"]) if o["clip_grad_norm"] else float("inf")
    stop = None
    for epoch in range(run["epoch"], epochs):
        sampler.set_epoch(epoch)
        items.epoch = epoch
        n_batches = len(sampler)
        done = run["batches_done"] if epoch == run["epoch"] else 0
        ep = _Stats.from_state(run["epoch_stats"]) if epoch == run["epoch"] else _Stats()
        win, logwin = _Stats(), _Stats()
        net.train()
        bar = _progress(main and tr["progress"], n_batches, done, f"epoch {epoch + 1}/{epochs}")
        t_log = time.time()
        for batch in loader:
            done += 1
            rejects.extend(batch["rejected"])
            start = (done - 1) // accum * accum
            window = min(accum, n_batches - start)  # batches in this optimizer step
            last = done == start + window
            with net.no_sync() if ddp.enabled and not last else nullcontext():
                loss, out = forward_loss(batch)
                (loss / window).backward()
            win.add(loss, out, batch["size"], float(batch["wave_lengths"].sum()) / feat_cfg.sample_rate)
            bar.update(1)
            if not last:
                continue

            # -- optimizer step: skipped on every rank when any rank saw a NaN/Inf, or when
            #    bad audio left the batch empty on every rank (gradients are all zero)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            flags = torch.tensor([float(not (win.finite and math.isfinite(float(grad_norm)))),
                                  float(win.sums["utts"])], device=device)
            bad, most_utts = all_reduce(flags, ddp, op="max").tolist()
            if not bad and most_utts == 0:
                log(f"step {run['step'] + 1}: no usable utterance on any rank (bad audio), step skipped")
            elif not bad:
                optimizer.step()
                run["nonfinite_run"] = 0
                ep.merge(win)
                logwin.merge(win)
            else:
                run["nonfinite_skipped"] += 1
                run["nonfinite_run"] += 1
                log(f"step {run['step'] + 1}: non-finite loss or gradient, step skipped "
                    f"({run['nonfinite_run']} in a row, {run['nonfinite_skipped']} in all)")
                if run["nonfinite_run"] >= tr["max_nonfinite"]:
                    raise TrainingError(
                        f"{run['nonfinite_run']} optimizer steps in a row had a NaN/Inf loss or gradient "
                        f"(train.max_nonfinite={tr['max_nonfinite']}); stopping at step {run['step'] + 1}. "
                        "Lower optim.lr, keep optim.clip_grad_norm, check the data; the last good "
                        f"checkpoint is {exp / 'last.pt'}")
            optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule follows steps taken or skipped alike
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                scheduler.step()
            run["step"] += 1
            win = _Stats()

            # -- logging
            if run["step"] % tr["log_every"] == 0 or done == n_batches:
                g = logwin.reduced(ddp, device)
                rate = g["seconds"] / max(time.time() - t_log, 1e-9)
                if main and g["utts"]:
                    lr = scheduler.get_last_lr()[0]
                    bar.set_postfix_str(f"loss {g['loss']:.3f} ctc {g['ctc']:.3f} kd {g['kd']:.3f} lr {lr:.2e} "
                                        f"{g['utts'] / max(time.time() - t_log, 1e-9):.1f} utt/s {rate:.0f}x audio")
                    if tb:
                        for k in ("loss", "ctc", "kd"):
                            tb.add_scalar(f"train/{k}", g[k], run["step"])
                        tb.add_scalar("train/lr", lr, run["step"])
                        tb.add_scalar("train/grad_norm", float(grad_norm), run["step"])
                        tb.add_scalar("train/audio_x_realtime", rate, run["step"])
                        tb.add_scalar("train/nonfinite_skipped", run["nonfinite_skipped"], run["step"])
                    bar.write_log(f"step {run['step']}  epoch {epoch + 1}  loss {g['loss']:.4f}  ctc {g['ctc']:.4f}  "
                                  f"kd {g['kd']:.4f}  lr {lr:.3e}  |g| {float(grad_norm):.2f}  {rate:.1f}x audio")
                logwin, t_log = _Stats(), time.time()

            run["batches_done"], run["epoch"], run["epoch_stats"] = done, epoch, ep.state()
            at_end = done == n_batches
            if tr["max_steps"] and run["step"] >= tr["max_steps"]:
                stop = f"train.max_steps={tr['max_steps']} reached"
            if not at_end and not stop:
                if tr["eval_every_steps"] and run["step"] % tr["eval_every_steps"] == 0 and main:
                    dev_eval()
                if tr["save_every_steps"] and run["step"] % tr["save_every_steps"] == 0:
                    save(["last.pt"], epoch, done)
            if stop:
                break
        bar.close()

        # -- end of epoch (or of the run): dev WER/CER, history, last.pt and best.pt
        finished = done == n_batches
        g = ep.reduced(ddp, device)
        res = dev_eval() if main else None
        entry = {"epoch": epoch + 1, "step": run["step"], "partial": not finished, "train_loss": g["loss"],
                 "train_ctc": g["ctc"], "train_kd": g["kd"], "lr": scheduler.get_last_lr()[0],
                 "elapsed_s": round(run["elapsed_s"] + time.time() - t_start, 1)}
        if res is not None:
            entry.update(dev_wer=res["wer"], dev_cer=res["cer"], dev_ctc=res["ctc"])
        run["history"].append(entry)
        names = ["last.pt"]
        if main and (res is None or run["best"] is None or res["cer"] < run["best"]["dev_cer"]):
            run["best"] = {"epoch": epoch + 1, "step": run["step"], "dev_cer": res["cer"] if res else None,
                           "dev_wer": res["wer"] if res else None}
            names.append("best.pt")
        run["best"] = broadcast_object(run["best"], ddp)
        log(f"epoch {epoch + 1}{' (partial)' if not finished else ''}: train loss {g['loss']:.4f} "
            f"(ctc {g['ctc']:.4f}, kd {g['kd']:.4f}) in {time.time() - t_start:.0f} s"
            + (f"; dev %WER {res['wer']:.2f} %CER {res['cer']:.2f}" if res else "")
            + (f"; best so far: epoch {run['best']['epoch']}" if run["best"] else ""))
        if finished:
            run["epoch"], run["batches_done"], run["epoch_stats"] = epoch + 1, 0, _Stats().state()
            sampler.set_epoch(epoch + 1)
            save(names, epoch + 1, 0)
        else:
            save(names, epoch, done)
        if stop:
            log(f"stopping: {stop}")
            break

    # ---------------------------------------------------------------- wrap-up
    if tb:
        tb.close()
    all_records = gather_objects(rejects.records, ddp)
    for recs in all_records:
        rejects.extend(recs)
    summary = _summary(run, exp, rejects, t_start)
    if main:
        log(rejects.summary(title="training data: rejected"))
        if dev_loader is not None:
            log(dev_rejects.summary(title="dev data: rejected"))
        if len(rejects):
            rejects.write_report(exp / "rejected.jsonl")
        log(f"done: {run['step']} steps, {run['nonfinite_skipped']} skipped (NaN/Inf), "
            f"{summary['wall_s']:.0f} s; checkpoints {exp / 'last.pt'}, {exp / 'best.pt'}")
    return summary


RUN_FILES = ("last.pt", "best.pt", "config.yaml", "history.json", "train.log", "rejected.jsonl")


def _refuse_outputs_over_inputs(cfg: dict[str, Any], exp: Path, resume_from) -> None:
    """The files a run writes into ``exp_dir`` must not be its data, tokenizer or teacher
    (``teacher.spec: exp/best.pt`` would be overwritten by the run it teaches)."""
    from asrkd.models.teachers import spec_file

    d, t = cfg["data"], cfg["teacher"]
    inputs = {"data.train": d["train"], "data.dev": d["dev"], "data.tokenizer": d["tokenizer"],
              "teacher.spec": spec_file(t["spec"]) if t["spec"] else None}
    outputs = {f"exp_dir/{name}": exp / name for name in RUN_FILES}
    if resume_from is not None:  # resuming from exp_dir/last.pt rewrites it: that is the point
        outputs = {k: v for k, v in outputs.items() if Path(v).resolve() != Path(resume_from).resolve()}
    refuse_overwrite(outputs, inputs)


def _check_same_front_end(path, ckpt: dict[str, Any], d: dict[str, Any], feat_cfg: FeatureConfig,
                          tokenizer) -> None:
    """A resumed run keeps the features and the vocabulary it was trained with; a config that
    asks for others is refused instead of being listed as a change that does not happen."""
    wanted = FeatureConfig.from_dict(d["features"] or {}).to_dict()
    have = feat_cfg.to_dict()
    changed = [f"{k} {have.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(have) | set(wanted))
               if have.get(k) != wanted.get(k)]
    if changed:
        raise TrainingError(f"--resume {path}: data.features differ from the checkpoint's front-end "
                            f"({'; '.join(changed)}); a resumed run keeps its features: start a new run "
                            "(another exp_dir) to change them")
    if d["tokenizer"] and load_tokenizer(d["tokenizer"]).to_dict() != tokenizer.to_dict():
        raise TrainingError(f"--resume {path}: data.tokenizer {d['tokenizer']} is not the vocabulary the run was "
                            "trained with; start a new run to change it")


def _cmvn_stats(utts, feat_cfg, d: dict[str, Any], rejects: Rejects) -> dict[str, Any]:
    try:
        return compute_cmvn(utts, feat_cfg, max_utterances=d["cmvn_utterances"], rejects=rejects).to_dict()
    except ValueError:  # every utterance it looked at had bad audio
        raise TrainingError(f"no usable training utterance in {d['train']}: none of those read for the CMVN "
                            f"statistics (up to data.cmvn_utterances) has usable audio\n{rejects.summary()}") from None


def _load_run_state(path, ckpt: dict[str, Any], model, optimizer, sampler, loss_fn) -> None:
    """Model, optimizer, sampler and loss RNG from a checkpoint; ``TrainingError`` saying what
    does not fit the current config (model size, data) instead of a state-dict traceback."""
    parts = (("model", model.load_state_dict, "model (model.arch / model.size / overrides changed?)"),
             ("optimizer", optimizer.load_state_dict, "optimizer state"),
             ("sampler", sampler.load_state_dict, "batch order (the training data or batching changed?)"),
             ("loss_rng", loss_fn.generator.set_state, "loss generator state"))
    for key, load, what in parts:
        try:
            load(ckpt[key])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrainingError(f"--resume {path}: its {what} does not fit this run: {first}") from None


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model, loader, refs: dict[str, str], tokenizer, device, amp_dtype=None,
             rejects: Rejects | None = None) -> dict[str, float]:
    """Greedy-decode ``loader`` and score it against ``refs``: ``wer``, ``cer`` (percent),
    ``ctc`` (mean per-token CTC loss), ``utterances``, ``seconds``. Leaves the global RNG
    and the model's mode as they were."""
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
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                logits, lengths = model(batch["feats"].to(device), batch["feat_lengths"].to(device))
            logits = logits.float()
            for uid, ids in zip(batch["ids"], greedy_decode(logits.cpu(), lengths.cpu(), blank=tokenizer.blank_id)):
                hyps[uid] = tokenizer.decode(ids)
            loss, used, _ = ctc_loss(logits.log_softmax(-1), lengths, batch["targets"].to(device),
                                     batch["target_lengths"].to(device), blank=tokenizer.blank_id)
            ctc_sum += float(loss) * int(used)
            ctc_n += int(used)
    model.train(was_training)
    scored = {u: r for u, r in refs.items() if u in hyps}  # rejected dev items are counted by `rejects`
    res = score(scored, hyps)
    return {"wer": res["wer"], "cer": res["cer"], "ctc": ctc_sum / max(ctc_n, 1), "utterances": res["utterances"],
            "seconds": time.time() - t0}


# ------------------------------------------------------------------------ small helpers


class _Stats:
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

    def merge(self, other: "_Stats") -> None:
        for k in self.KEYS:
            self.sums[k] += other.sums[k]

    def reduced(self, ddp: DistInfo, device) -> dict[str, float]:
        """Averages over every rank's sums (a collective: all ranks call it together)."""
        t = all_reduce(torch.tensor([self.sums[k] for k in self.KEYS], dtype=torch.float64, device=device), ddp)
        s = dict(zip(self.KEYS, t.tolist()))
        n = max(s["utts"], 1.0)
        return {"loss": s["loss"] / n, "ctc": s["ctc"] / n, "kd": s["kd"] / n, "utts": s["utts"],
                "seconds": s["seconds"], "batches": s["batches"]}

    def state(self) -> dict[str, float]:
        return dict(self.sums)

    @classmethod
    def from_state(cls, state: dict[str, float]) -> "_Stats":
        s = cls()
        s.sums.update(state)
        return s


class _Log:
    """Rank 0 prints (through tqdm, so progress bars stay intact) and appends to train.log;
    other ranks stay quiet."""

    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, msg: str) -> None:
        if self.path is None:
            return
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
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


def _progress(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar (loss, rate, ETA) on rank 0, or a stand-in that only prints log lines."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
    bar.write_log = lambda msg: tqdm.write(msg)
    return bar


def _tensorboard(exp: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(exp / "tensorboard"))


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def _summary(run: dict[str, Any], exp: Path, rejects: Rejects, t_start: float) -> dict[str, Any]:
    return {"history": run["history"], "best": run["best"], "step": run["step"], "epoch": run["epoch"],
            "nonfinite_skipped": run["nonfinite_skipped"], "rejected": rejects.counts(),
            "last": str(exp / "last.pt"), "best_path": str(exp / "best.pt"), "wall_s": time.time() - t_start}


# ------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (see docs/training.md); optional with --resume CKPT")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue a run exactly: from CKPT, or (no value) from EXP_DIR/last.pt if it exists")
    p.add_argument("--print-config", action="store_true", help="print the full config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides with dotted keys, values in YAML: optim.lr=3e-4 train.epochs=5")


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """The config (file <- overrides; with only ``--resume CKPT``, the checkpoint's) and the
    checkpoint to resume from."""
    if args.resume not in (None, "auto") and "=" in args.resume and not Path(args.resume).exists():
        # `--resume train.epochs=3`: argparse took the first override as the checkpoint
        args.overrides, args.resume = [args.resume, *args.overrides], "auto"
    ckpt_path = Path(args.resume) if args.resume not in (None, "auto") else None
    base = None
    if args.config is None:
        if ckpt_path is None:
            raise ConfigError("--config is required (or --resume CKPT to continue with the checkpoint's config)")
        base = training_checkpoint(ckpt_path)["config"]
    cfg = load_config(args.config, args.overrides, base=base)
    if args.resume == "auto":
        last = Path(cfg["exp_dir"]) / "last.pt"
        ckpt_path = last if last.is_file() else None
        if ckpt_path is None:
            print(f"--resume: no {last} yet, starting a new run", flush=True)
    elif ckpt_path is not None and not ckpt_path.is_file():
        raise ConfigError(f"--resume: checkpoint not found: {ckpt_path}")
    return cfg, ckpt_path


def training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint ``asrkd train`` wrote (one that can be resumed), or a one-line error."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("config", "optimizer", "sampler", "rng", "step", "epoch") if k not in ckpt]
    if missing:
        raise TrainingError(f"--resume {path}: an asrkd checkpoint, but not one `asrkd train` wrote (no "
                            f"{', '.join(missing)}): only a run's last.pt / best.pt can be resumed")
    return ckpt


def run(args: argparse.Namespace) -> int:
    try:
        cfg, ckpt_path = resolve(args)
        validate(cfg, partial=args.print_config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump(cfg), end="")
        return 0
    train(cfg, ckpt_path)  # other errors: one line from asrkd.cli
    return 0


__all__ = ["TrainingError", "evaluate", "train"]
