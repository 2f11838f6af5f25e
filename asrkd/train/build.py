"""Building a student's training run from its config: :func:`build_run` and its parts.

In the order :func:`build_run` calls them (the order matters for exact resume: every random
draw happens where it always did): set-up (threads, ``exp_dir``, log, seeds, the checkpoint
to resume), data (manifests, tokenizer, front end, CMVN), teacher (a ``cache-teacher`` folder
or a model run in the loop), student, loss, datasets and loaders, optimizer and schedule, and
last the resumed state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asrkd.atomic import remove_stale_temporaries
from asrkd.data import (
    ASRDataset,
    AugmentConfig,
    CharTokenizer,
    DurationBatchSampler,
    FeatureConfig,
    FeaturePipeline,
    GlobalCMVN,
    Rejects,
    SpecAugment,
    WaveAugment,
    build_dataloader,
    compute_cmvn,
    filter_by_duration,
    load_manifest,
    load_tokenizer,
)
from asrkd.kd.align import VocabMap
from asrkd.kd.cache import CacheKeyError, TeacherCache, teacher_fingerprint
from asrkd.kd.loss import DistillationLoss
from asrkd.models.students import ARCHS, build_student, count_parameters
from asrkd.train.checkpointing import (
    check_same_front_end,
    load_run_state,
    refuse_outputs_over_inputs,
    save_run,
    training_checkpoint,
)
from asrkd.train.config import ConfigError, diff
from asrkd.train.distributed import DistInfo, broadcast_object
from asrkd.train.run import DevSet, Log, LoopConfig, Objective, Progress, Run, TrainingError
from asrkd.train.schedule import build_scheduler, resume_scheduler
from asrkd.train.state import SeededItems, restore_rng, seed_everything


@dataclass
class Data:
    """The training utterances and the front end they are read with."""

    train_utts: list
    tokenizer: Any
    features: FeatureConfig
    cmvn: GlobalCMVN
    rejects: Rejects


@dataclass
class Teacher:
    """Where the KD targets come from (``cache`` or ``model``; both None: CTC only)."""

    cache: TeacherCache | None = None
    model: torch.nn.Module | None = None
    vocab: list[str] | None = None
    blank_id: int | None = None
    frame_rate: float | None = None


def build_run(cfg: dict[str, Any], resume_from, ddp: DistInfo) -> Run:
    """The whole run ``cfg`` describes, resumed from ``resume_from`` (a checkpoint) if given."""
    t_start = time.time()
    exp, log, amp_dtype, ckpt = start(cfg, resume_from, ddp)
    data = build_data(cfg, ckpt, resume_from, ddp, log)
    teacher = build_teacher(cfg, data, ddp.device, log)
    model = build_model(cfg, data, ddp, log, init=ckpt is None)
    loss_fn = build_loss(cfg, model, data.tokenizer, teacher, log)
    objective = Objective(
        loss_fn,
        input_dim=data.features.n_mels,
        device=ddp.device,
        amp_dtype=amp_dtype,
        dummy_frames=model.subsampling * max(1, getattr(model, "chunk_size", 1)),
        cache=teacher.cache,
        teacher=teacher.model,
    )
    train_ds, sampler, items, loader = build_train_loader(cfg, data, model, ddp)
    dev = build_dev(cfg, data, model, log) if ddp.is_main else None
    hours = sum(train_ds.durations) / 3600
    log(
        f"data: {len(train_ds)} training utterances ({hours:.2f} h, {sum(u.has_text for u in train_ds.utterances)} "
        f"labelled), {len(sampler)} batches per epoch per rank; dev: {len(dev.refs) if dev else 0} utterances"
    )
    optimizer = build_optimizer([(list(model.parameters()), cfg["optim"]["lr"])], cfg["optim"])
    loop = LoopConfig.from_config(cfg)
    total_steps = int(cfg["optim"]["total_steps"] or loop.epochs * math.ceil(len(sampler) / loop.accum_steps))
    o = cfg["optim"]
    scheduler = build_scheduler(optimizer, o["schedule"], o["warmup_steps"], total_steps, o["min_lr_ratio"])
    run = Run(
        loop=loop,
        ddp=ddp,
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        items=items,
        loader=loader,
        tokenizer=data.tokenizer,
        rejects=data.rejects,
        log=log,
        save=save_run,
        dev=dev,
        amp_dtype=amp_dtype,
        sample_rate=data.features.sample_rate,
        last_checkpoint=str(exp / "last.pt"),
        t_start=t_start,
        exp=exp,
        checkpoint_meta=checkpoint_meta(cfg, model, data, teacher, ddp),
    )
    if ckpt is not None:
        resume(run, ckpt, resume_from)
    return run


def start(cfg: dict[str, Any], resume_from, ddp: DistInfo):
    """Threads, ``exp_dir``, the log, the seeds and the checkpoint to resume from (or None)."""
    tr = cfg["train"]
    if tr["threads"]:
        torch.set_num_threads(int(tr["threads"]))
    exp = Path(cfg["exp_dir"])
    if ddp.is_main:
        refuse_outputs_over_inputs(cfg, exp, resume_from)
        exp.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(exp)  # of checkpoint writes a kill interrupted
    log = Log(exp / "train.log", quiet=not ddp.is_main)
    use_bf16 = tr["amp"] == "bf16" or (tr["amp"] == "auto" and ddp.device.type == "cuda")
    amp_dtype = torch.bfloat16 if use_bf16 else None
    seed_everything(int(cfg["seed"]))
    ckpt = training_checkpoint(resume_from) if resume_from else None
    if ckpt is not None:
        changed = diff(ckpt["config"], cfg)
        log(
            f"resuming from {resume_from} (epoch {ckpt['epoch']}, batch {ckpt['batches_done']}, step {ckpt['step']})"
            + (f"; config changes: {'; '.join(changed)}" if changed else "")
        )
    elif ddp.is_main and (exp / "last.pt").exists():
        log(f"note: starting from scratch; the checkpoints in {exp} will be replaced (use --resume to continue)")
    log(
        f"world size {ddp.world_size} ({ddp.backend or 'single process'}), device {ddp.device}, "
        f"amp {amp_dtype or 'off'}, threads {torch.get_num_threads()}"
    )
    return exp, log, amp_dtype, ckpt


def build_data(cfg: dict[str, Any], ckpt, resume_from, ddp: DistInfo, log: Log) -> Data:
    """Training utterances (duration-filtered), tokenizer, features and CMVN; a resumed run
    keeps the checkpoint's tokenizer, features and CMVN."""
    d = cfg["data"]
    rejects = Rejects()
    train_utts = filter_by_duration(load_manifest(d["train"], rejects), d["min_duration"], d["max_duration"], rejects)
    if not train_utts:
        raise TrainingError(f"no usable training utterance in {d['train']}\n{rejects.summary()}")
    if ckpt is not None:
        tokenizer = load_tokenizer(ckpt["tokenizer"])
    elif d["tokenizer"]:
        tokenizer = load_tokenizer(d["tokenizer"])
    else:
        tokenizer = CharTokenizer.build([u.text for u in train_utts if u.has_text])
    features = FeatureConfig.from_dict(ckpt["features"] if ckpt is not None else (d["features"] or {}))
    if ckpt is not None:
        check_same_front_end(resume_from, d, features, tokenizer)
        cmvn = GlobalCMVN.from_dict(ckpt["cmvn"])
    else:  # computed once (rank 0) and shared: every rank must normalise alike
        stats = _cmvn_stats(train_utts, features, d, rejects) if ddp.is_main else None
        cmvn = GlobalCMVN.from_dict(broadcast_object(stats, ddp))
    return Data(train_utts, tokenizer, features, cmvn, rejects)


def _cmvn_stats(utts, features: FeatureConfig, d: dict[str, Any], rejects: Rejects) -> dict[str, Any]:
    try:
        return compute_cmvn(utts, features, max_utterances=d["cmvn_utterances"], rejects=rejects).to_dict()
    except ValueError:  # every utterance it looked at had bad audio
        raise TrainingError(
            f"no usable training utterance in {d['train']}: none of those read for the CMVN "
            f"statistics (up to data.cmvn_utterances) has usable audio\n{rejects.summary()}"
        ) from None


def build_teacher(cfg: dict[str, Any], data: Data, device: torch.device, log: Log) -> Teacher:
    """The teacher's cache (checked against the training entries, and the teacher spec if
    given) or the teacher model; without KD, unlabelled utterances are left out of ``data``."""
    t, use_kd = cfg["teacher"], cfg["loss"]["kd_weight"] > 0
    if use_kd and t["cache"]:
        cache = _open_cache(t)
        data.train_utts = cache.check_entries(data.train_utts, data.rejects)
        log(
            f"teacher: cache {t['cache']} ({cache.kind}{'' if cache.kind == 'dense' else f', k={cache.topk}'}, "
            f"{len(cache)} utterances, key {cache.key[:12]}, made with {cache.teacher['spec']!r})"
        )
        return Teacher(cache=cache, vocab=cache.vocab, blank_id=cache.blank_id, frame_rate=cache.frame_rate)
    if use_kd:
        from asrkd.models.teachers import load_teacher

        model = load_teacher(t["spec"]).to(device)
        log(f"teacher: {t['spec']} in the loop ({count_parameters(model) / 1e6:.2f} M parameters)")
        return Teacher(model=model, vocab=model.vocab, blank_id=model.blank_id, frame_rate=model.frame_rate)
    if t["cache"] or t["spec"]:
        log("note: loss.kd_weight is 0, the teacher is not used")
    unlabelled = [u.id for u in data.train_utts if not u.has_text]
    if unlabelled:  # a CTC-only run cannot learn from them (label-free KD needs a teacher)
        log(f"note: {len(unlabelled)} unlabelled training utterances left out: no teacher (e.g. {unlabelled[0]})")
        data.train_utts = [u for u in data.train_utts if u.has_text]
    return Teacher()


def _open_cache(t: dict[str, Any]) -> TeacherCache:
    try:
        cache = TeacherCache.open(t["cache"])
    except CacheKeyError:
        raise
    except (FileNotFoundError, ValueError) as err:  # no cache there, or an unfinished one
        raise TrainingError(f"teacher.cache: {err}") from None
    if t["spec"]:
        from asrkd.models.teachers import load_teacher

        cache.check_teacher(teacher_fingerprint(load_teacher(t["spec"])))
    return cache


def build_model(cfg: dict[str, Any], data: Data, ddp: DistInfo, log: Log, init: bool = True) -> torch.nn.Module:
    """The student, with the same initial weights on every rank: seeded, then (``init`` and
    ``model.init``) copied from a checkpoint by name and shape; a resumed run skips that."""
    m, seed = cfg["model"], int(cfg["seed"])
    torch.manual_seed(seed)  # the same initial weights on every rank, whatever ran before
    overrides = {"input_dim": data.features.n_mels, "feature_rate": data.features.frame_rate, **(m["overrides"] or {})}
    try:
        model = build_student(m["arch"], m["size"], len(data.tokenizer), **overrides).to(ddp.device)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    if init and m["init"]:
        from asrkd.models.checkpoint import init_from_checkpoint

        if not Path(m["init"]).is_file():
            raise ConfigError(f"model.init: no such checkpoint: {m['init']}")
        log(init_from_checkpoint(model, m["init"], strict=bool(m["init_strict"])).summary())
    torch.manual_seed(seed + ddp.rank)  # dropout masks differ across ranks
    log(
        f"student: {m['arch']} {m['size']}, {count_parameters(model) / 1e6:.2f} M parameters, "
        f"{model.frame_rate:g} frames/s, vocabulary {len(data.tokenizer)}, "
        f"latency {model.algorithmic_latency_ms:.0f} ms"
    )
    return model


def build_loss(cfg: dict[str, Any], model, tokenizer, teacher: Teacher, log: Log) -> DistillationLoss:
    lo, use_kd = cfg["loss"], teacher.vocab is not None
    vocab_map = None
    if use_kd and list(teacher.vocab) != list(tokenizer.tokens):
        vocab_map = VocabMap.from_vocabs(
            teacher.vocab,
            tokenizer.tokens,
            teacher_blank_id=teacher.blank_id,
            student_blank_id=tokenizer.blank_id,
            unmapped=lo["unmapped"],
        )
    loss_fn = DistillationLoss(
        ctc_weight=lo["ctc_weight"],
        kd_weight=lo["kd_weight"],
        temperature=lo["temperature"],
        shift=lo["shift"],
        blank_mode=lo["blank_mode"],
        blank_threshold=lo["blank_threshold"],
        blank_weight=lo["blank_weight"],
        vocab_map=vocab_map,
        student_frame_rate=model.frame_rate if use_kd else None,
        teacher_frame_rate=teacher.frame_rate if use_kd else None,
        resample=lo["resample"],
        blank_id=tokenizer.blank_id,
        seed=int(cfg["seed"]),
    )
    log(f"loss: {loss_fn.extra_repr()}")
    return loss_fn


def build_train_loader(cfg: dict[str, Any], data: Data, model, ddp: DistInfo):
    """Training dataset, its batch sampler (this rank's shard), the seeded items and the loader."""
    d, seed = cfg["data"], int(cfg["seed"])
    specaug = SpecAugment(**d["specaug"]) if d["specaug"] else None
    front = FeaturePipeline(data.features, data.cmvn, specaug)
    # training audio only (dev is scored on clean audio); it keeps lengths, so a teacher cache still fits
    augment = WaveAugment(AugmentConfig.from_dict(d["augment"])) if d["augment"] else None
    train_ds = ASRDataset(
        data.train_utts,
        data.tokenizer,
        front,
        train=True,
        subsampling=model.subsampling,
        speed_factors=d["speed_perturb"],
        rejects=data.rejects,
        augment=augment,
    )
    if len(train_ds) == 0:
        raise TrainingError(f"no usable training utterance in {d['train']}\n{data.rejects.summary()}")
    sampler = DurationBatchSampler(
        train_ds.durations,
        d["max_seconds"],
        seed=seed,
        num_buckets=d["num_buckets"],
        max_batch_size=d["max_batch_size"],
        ids=train_ds.ids,
    )
    sampler.record_too_long(data.rejects)
    items = SeededItems(train_ds, seed)
    loader = build_dataloader(items, sampler, num_workers=d["num_workers"], pin_memory=ddp.device.type == "cuda")
    # Iterators draw their worker base seed from this generator, not the global RNG that
    # dropout uses, so starting an iterator (every epoch, and on resume) leaves it alone.
    loader.generator = torch.Generator().manual_seed(seed)
    return train_ds, sampler, items, loader


def build_dev(cfg: dict[str, Any], data: Data, model, log: Log) -> DevSet | None:
    """The dev set (rank 0 only): every labelled utterance of ``data.dev`` is a reference,
    also those the dataset rejects (they are scored as missing hypotheses)."""
    d = cfg["data"]
    if not d["dev"]:
        return None
    rejects = Rejects()
    utts = load_manifest(d["dev"], rejects)
    dev_utts = [u for u in utts if u.has_text]
    if len(dev_utts) < len(utts):
        log(f"note: {len(utts) - len(dev_utts)} dev utterances have no text and are not scored")
    front = FeaturePipeline(data.features, data.cmvn)
    dev_ds = ASRDataset(dev_utts, data.tokenizer, front, train=False, subsampling=model.subsampling, rejects=rejects)
    sampler = DurationBatchSampler(
        dev_ds.durations, d["max_seconds"], shuffle=False, rank=0, world_size=1, ids=dev_ds.ids
    )
    sampler.record_too_long(rejects)
    loader = build_dataloader(dev_ds, sampler, num_workers=d["num_workers"])
    loader.generator = torch.Generator().manual_seed(int(cfg["seed"]))
    return DevSet(loader, {u.id: u.text for u in dev_utts}, rejects)


def build_optimizer(groups: list[tuple[list[torch.nn.Parameter], float]], o: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW over ``(parameters, lr)`` groups; no weight decay on biases and norms (< 2 dims)."""
    param_groups = []
    for params, lr in groups:
        param_groups += [
            {"params": [p for p in params if p.dim() >= 2], "lr": lr, "weight_decay": o["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "lr": lr, "weight_decay": 0.0},
        ]
    param_groups = [g for g in param_groups if g["params"]]
    return torch.optim.AdamW(param_groups, lr=groups[0][1], betas=tuple(o["betas"]), eps=o["eps"])


def checkpoint_meta(cfg: dict[str, Any], model, data: Data, teacher: Teacher, ddp: DistInfo) -> dict[str, Any]:
    """What every checkpoint of the run records besides its changing state: enough for
    ``asrkd decode`` / ``load_teacher("asrkd:CKPT")`` to rebuild the model and its front end."""
    m, t = cfg["model"], cfg["teacher"]
    arch = ARCHS[m["arch"].removesuffix("_ctc")][0]
    return {
        "arch": arch,
        "model_kwargs": model.model_kwargs,
        "tokenizer": data.tokenizer.to_dict(),
        "features": data.features.to_dict(),
        "cmvn": data.cmvn.to_dict(),
        "config": cfg,
        "world_size": ddp.world_size,
        "frame_rate": model.frame_rate,
        "params": count_parameters(model),
        "teacher": {"cache": t["cache"], "cache_key": teacher.cache.key if teacher.cache else None, "spec": t["spec"]},
    }


def resume(run: Run, ckpt: dict[str, Any], path) -> None:
    """Continue ``run`` from ``ckpt``: weights, optimizer, batch order, loss generator, the
    schedule at the step reached, the progress, and every RNG (last: nothing after this may
    draw from them before the loop)."""
    if len(ckpt["rng"]) != run.ddp.world_size:
        raise TrainingError(
            f"--resume {path}: saved by {len(ckpt['rng'])} processes, now "
            f"{run.ddp.world_size}: resume with the same number of processes"
        )
    load_run_state(path, ckpt, run.model, run.optimizer, run.sampler, run.objective.loss_fn)
    resume_scheduler(run.scheduler, ckpt["step"])
    run.progress = Progress.from_checkpoint(ckpt)
    restore_rng(ckpt["rng"][run.ddp.rank])
