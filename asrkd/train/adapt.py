"""Teacher adaptation (``asrkd teacher-adapt``): a Whisper encoder transferred to character
CTC on a manifest, trained by the students' loop.

The model is a :class:`~asrkd.models.teachers.whisper.WhisperCTC` whose encoder is frozen
except, optionally, its top ``unfreeze_blocks`` blocks (and the final LayerNorm). The frozen
part does not change, so it runs once per utterance (:func:`encode`): its outputs are kept in
memory (fp16) and are the "features" of the training batches, and the trainable top
(:class:`TopOfWhisper`: top blocks + final LayerNorm + CTC head) is what
:func:`asrkd.train.loop.fit` trains, with the students' step (NaN/Inf skips, clipping, AdamW
without decay on biases and norms), cosine schedule, batch sampler, SpecAugment time masks
(on the cached outputs), dev scoring and best-dev-CER selection. On 2 CPU cores Whisper
tiny.en encodes ~60-80x faster than real time, so 1.5 h of audio costs ~1.5 min once, and each
epoch costs only the trainable top.

Waveform augmentation cannot act on cached outputs, so it is done at encoding time instead:
with ``augment_copies = N`` (``--augment-copies``) every training utterance is also encoded
``N`` times from augmented audio (:class:`~asrkd.data.augment.WaveAugment`, the
``augment`` file's settings or :meth:`~asrkd.data.augment.AugmentConfig.default`; copy ``c``
of item ``i`` is drawn under the seed ``item_seed(seed, c, i)``, so a rerun gives the same
copies), and the copies join the head's training set (N + 1 times the encoding time and the
memory). The dev set stays clean.

Result: an asrkd checkpoint (``arch="whisper_ctc"``, full encoder + head, the tokenizer),
loaded with ``load_teacher("asrkd:teacher.pt")`` or ``asrkd.models.checkpoint.load_model``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asrkd.data import (
    ASRDataset,
    AugmentConfig,
    CharTokenizer,
    DurationBatchSampler,
    Rejects,
    SpecAugment,
    WaveAugment,
    build_dataloader,
    filter_by_duration,
    load_manifest,
    load_tokenizer,
)
from asrkd.data.audio import SAMPLE_RATE
from asrkd.data.sampler import duration_batches
from asrkd.kd.loss import DistillationLoss
from asrkd.train.build import build_optimizer
from asrkd.train.distributed import DistInfo
from asrkd.train.run import DevSet, Log, LoopConfig, Objective, Run
from asrkd.train.schedule import LRSchedule, TimeBudget
from asrkd.train.state import SeededItems

MAX_SECONDS = 30.0  # Whisper's window: longer utterances are skipped (and counted) here
MIN_SECONDS = 0.025
WARMUP = 0.05  # of the schedule: linear warm-up, then cosine decay
MIN_LR_RATIO = 0.01
CLIP_GRAD_NORM = 5.0
BETAS = (0.9, 0.999)  # AdamW's defaults
COPY_SEP = "~aug"  # id of augmented copy c of utterance u: f"{u}{COPY_SEP}{c}"


@dataclass
class AdaptConfig:
    """The settings of a teacher adaptation (the ``asrkd teacher-adapt`` flags)."""

    train: str
    tokenizer: str
    dev: str | None = None
    teacher: str = "whisper-tiny.en"
    epochs: int = 40
    unfreeze_blocks: int = 0
    lr: float = 2e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    head_layers: int = 2
    head_hidden: int = 256
    head_kernel: int = 5
    dropout: float = 0.3
    time_masks: int = 2
    time_mask_width: float = 0.1
    max_seconds_per_batch: float = 60.0
    seed: int = 0
    progress: bool = True
    augment_copies: int = 0  # augmented encodings per training utterance, besides the clean one
    augment: str | None = None  # YAML/JSON file of AugmentConfig settings; None: AugmentConfig.default()


def augment_config(cfg: AdaptConfig) -> AugmentConfig | None:
    """The augmentation of the training copies (None without copies); ``ValueError`` naming
    the flag, the file or the key when the settings are unusable."""
    if isinstance(cfg.augment_copies, bool) or not isinstance(cfg.augment_copies, int) or cfg.augment_copies < 0:
        raise ValueError(f"--augment-copies must be an int >= 0, got {cfg.augment_copies!r}")
    if cfg.augment_copies == 0:
        if cfg.augment is not None:
            raise ValueError("--augment needs --augment-copies N (N >= 1): the clean encoding is never augmented")
        return None
    if cfg.augment is None:
        return AugmentConfig.default()
    import yaml

    try:
        settings = yaml.safe_load(Path(cfg.augment).read_text(encoding="utf-8"))  # YAML reads JSON too
        augment = AugmentConfig.from_dict(settings)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
        raise ValueError(f"--augment {cfg.augment}: {err}") from None
    if not augment.enabled:
        raise ValueError(f"--augment {cfg.augment}: turns every augmentation off; the copies would be clean")
    return augment


# --------------------------------------------------------------------------- the model
def load_adaptable(cfg: AdaptConfig, vocab_size: int) -> tuple[nn.Module, str]:
    """The ``WhisperCTC`` to adapt and the name of its source: pretrained Whisper weights and
    a fresh head (``whisper-tiny.en``, ``whisper:PATH``), or an adapted checkpoint to go on
    training (``asrkd:CKPT`` or a ``.pt`` path)."""
    from asrkd.models.teachers import whisper_weights
    from asrkd.models.teachers.whisper import build_whisper_ctc

    spec = cfg.teacher
    head = {
        "head_layers": cfg.head_layers,
        "head_hidden": cfg.head_hidden,
        "head_kernel": cfg.head_kernel,
        "head_dropout": cfg.dropout,
    }
    weights = whisper_weights(spec)
    if weights is not None:
        return build_whisper_ctc(weights, vocab_size, seed=cfg.seed, **head), spec
    path = Path(spec.removeprefix("asrkd:"))
    if spec.startswith("asrkd:") or path.suffix in {".pt", ".pth", ".ckpt"}:
        from asrkd.models.checkpoint import load_model

        model, state = load_model(path)
        if state["arch"] != "whisper_ctc":
            raise ValueError(f"{path} holds a {state['arch']!r} model; teacher-adapt trains whisper_ctc models")
        if model.vocab_size != vocab_size:
            raise ValueError(f"{path} has {model.vocab_size} outputs but the tokenizer has {vocab_size} symbols")
        return model, state.get("adapt", {}).get("source", spec)
    raise ValueError(
        f"--teacher {spec!r}: expected whisper-tiny.en, whisper-base, whisper:PATH or an asrkd whisper_ctc checkpoint"
    )


class TopOfWhisper(nn.Module):
    """The trainable top of a ``WhisperCTC``: its top ``unfreeze`` encoder blocks (with the
    final LayerNorm when ``unfreeze > 0``) and its CTC head; everything else is frozen.

    ``forward(x (B, T, n_state), lengths (B,)) -> (logits (B, T, V), lengths)`` where ``x``
    is what :meth:`encode_frozen` gives: the residual stream entering block
    ``n_layer - unfreeze`` (the final encoder output when ``unfreeze == 0``).
    """

    def __init__(self, whisper: nn.Module, unfreeze: int):
        super().__init__()
        n_layer = whisper.encoder.n_layer
        if not 0 <= unfreeze <= n_layer:
            raise ValueError(f"--unfreeze-blocks must be in [0, {n_layer}], got {unfreeze}")
        self.whisper, self.split = whisper, n_layer - unfreeze
        whisper.requires_grad_(False)
        for p in self.top_parameters() + list(whisper.head.parameters()):
            p.requires_grad_(True)

    def top_parameters(self) -> list[nn.Parameter]:
        enc = self.whisper.encoder
        if self.split == enc.n_layer:
            return []
        return [p for b in enc.blocks[self.split :] for p in b.parameters()] + list(enc.ln_post.parameters())

    @torch.no_grad()
    def encode_frozen(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.whisper.encoder
        feats, frames = self.whisper.frontend(waves, lengths)
        x, out_lengths = enc.embed(feats, frames)
        x = enc.run_blocks(x, out_lengths, 0, self.split)
        if self.split == enc.n_layer:
            x = enc.finish(x, out_lengths)
        return x, out_lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.whisper.encoder
        if self.split < enc.n_layer:
            x = enc.finish(enc.run_blocks(x, lengths, self.split), lengths)
        return self.whisper.head(x, lengths), lengths


# --------------------------------------------------------------------------- the data
@dataclass
class Encoded:
    """Frozen-encoder outputs of utterances (fp16, ``(T, n_state)`` each), their CTC targets
    and their lengths in samples, in encoding order."""

    ids: list[str] = field(default_factory=list)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: dict[str, list[int]] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


def encode(
    top: TopOfWhisper,
    utts: list,
    tokenizer,
    max_seconds: float,
    rejects: Rejects,
    desc: str,
    progress: bool,
    augment: tuple[WaveAugment, int, int] | None = None,
) -> Encoded:
    """Load, check and tokenize ``utts`` (the students' dataset: bad audio, characters outside
    the vocabulary, too short for 50 Hz CTC go to ``rejects``; so do utterances longer than
    Whisper's 30 s window) and run the frozen part of the encoder once over them.

    ``augment``: ``(wave_augment, seed, copy)``: the audio is augmented first, item ``i``
    under ``item_seed(seed, copy, i)`` (as the training loop seeds its items)."""
    from tqdm import tqdm

    utts = filter_by_duration(utts, MIN_SECONDS, MAX_SECONDS, rejects)
    wave_augment, seed, copy = augment if augment is not None else (None, 0, 0)
    dataset = ASRDataset(
        utts, tokenizer, None, subsampling=2, rejects=rejects, train=wave_augment is not None, augment=wave_augment
    )
    items = SeededItems(dataset, seed)
    items.epoch = copy
    batches = duration_batches(dataset.durations, max_seconds)
    batch_seconds = [sum(dataset.durations[i] for i in batch) for batch in batches]
    # the total adds the same per-batch sums in the same order as the updates: the bar ends exactly full
    bar = tqdm(
        total=sum(batch_seconds),
        desc=desc,
        unit="s",
        disable=not progress,
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]",
    )
    out = Encoded()
    top.eval()
    for batch, seconds in zip(build_dataloader(items, batches, num_workers=0), batch_seconds):
        rejects.extend(batch["rejected"])
        rows = []
        for j, (uid, n) in enumerate(zip(batch["ids"], batch["wave_lengths"].tolist())):
            if n <= MAX_SECONDS * SAMPLE_RATE:
                rows.append(j)
            else:  # the manifest's duration was wrong
                rejects.add(
                    uid, "too_long", f"{n / SAMPLE_RATE:.1f} s of audio: Whisper encodes at most {MAX_SECONDS:.0f} s"
                )
        bar.update(seconds)
        if not rows:
            continue
        lengths = batch["wave_lengths"][rows]
        x, x_lengths = top.encode_frozen(batch["waves"][rows, : int(lengths.max())], lengths)
        for k, j in enumerate(rows):
            uid = batch["ids"][j]
            out.ids.append(uid)
            out.outputs[uid] = x[k, : x_lengths[k]].to(torch.float16).clone()
            out.targets[uid] = batch["targets"][j, : batch["target_lengths"][j]].tolist()
            out.samples[uid] = int(lengths[k])
    bar.close()
    return out


def add_augmented_copies(
    top: TopOfWhisper, clean: Encoded, utts: list, tokenizer, cfg: AdaptConfig, augment: AugmentConfig
) -> Encoded:
    """``clean`` followed by ``cfg.augment_copies`` augmented encodings of each of its
    utterances (ids ``f"{id}{COPY_SEP}{c}"``, ``c`` = 1..N; same targets and lengths)."""
    kept = [u for u in utts if u.id in clean.outputs]  # what was rejected once stays out
    out = Encoded(list(clean.ids), dict(clean.outputs), dict(clean.targets), dict(clean.samples))
    wave_augment, n = WaveAugment(augment), cfg.augment_copies
    for c in range(1, n + 1):
        desc = f"encode train, augmented copy {c}/{n}"
        # the copies' rejects were counted by the clean pass already
        enc = encode(
            top, kept, tokenizer, cfg.max_seconds_per_batch, Rejects(), desc, cfg.progress, (wave_augment, cfg.seed, c)
        )
        for uid in enc.ids:
            key = f"{uid}{COPY_SEP}{c}"
            out.ids.append(key)
            out.outputs[key], out.targets[key], out.samples[key] = enc.outputs[uid], enc.targets[uid], enc.samples[uid]
    return out


class EncodedItems(torch.utils.data.Dataset):
    """:class:`Encoded` utterances as training items for the loop: ``feats`` (the cached
    outputs in float32, with SpecAugment time masks when ``specaug`` is given), ``targets``."""

    def __init__(self, encoded: Encoded, specaug: SpecAugment | None = None):
        self.encoded, self.specaug = encoded, specaug

    def __len__(self) -> int:
        return len(self.encoded.ids)

    @property
    def durations(self) -> list[float]:
        return [self.encoded.samples[i] / SAMPLE_RATE for i in self.encoded.ids]

    def __getitem__(self, index: int) -> dict[str, Any]:
        uid = self.encoded.ids[index]
        feats = self.encoded.outputs[uid].float()
        if self.specaug is not None:
            feats = self.specaug(feats)
        return {
            "id": uid,
            "feats": feats,
            "targets": torch.tensor(self.encoded.targets[uid]),
            "samples": self.encoded.samples[uid],
        }


def collate_encoded(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`EncodedItems` as the loop reads batches (see ``asrkd.data.collate``)."""
    pad = torch.nn.utils.rnn.pad_sequence
    return {
        "ids": [x["id"] for x in items],
        "size": len(items),
        "rejected": [],
        "feats": pad([x["feats"] for x in items], batch_first=True),
        "feat_lengths": torch.tensor([x["feats"].size(0) for x in items]),
        "targets": pad([x["targets"] for x in items], batch_first=True),
        "target_lengths": torch.tensor([x["targets"].numel() for x in items]),
        "has_text": torch.ones(len(items), dtype=torch.bool),
        "wave_lengths": torch.tensor([x["samples"] for x in items]),
    }


def _loader(dataset, cfg: AdaptConfig, shuffle: bool, rejects: Rejects):
    sampler = DurationBatchSampler(
        dataset.durations,
        cfg.max_seconds_per_batch,
        shuffle=shuffle,
        seed=cfg.seed,
        rank=0,
        world_size=1,
        ids=dataset.encoded.ids,
    )
    sampler.record_too_long(rejects)
    items = SeededItems(dataset, cfg.seed)
    return sampler, items, torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate_encoded)


# --------------------------------------------------------------------------- the run
class BestWeights:
    """``Run.save`` of a teacher adaptation: nothing is written while it trains; the weights
    of the best epoch (lowest dev CER; the latest without a dev set) are kept in memory."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def __call__(self, run: Run, names: list[str], epoch: int, batches_done: int) -> None:
        if "best.pt" in names:
            self.state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}


def build_adapt_run(
    top: TopOfWhisper,
    train: Encoded,
    dev: DevSet | None,
    tokenizer,
    cfg: AdaptConfig,
    rejects: Rejects,
    deadline: float | None,
    log,
    save: BestWeights,
) -> Run:
    """The loop's :class:`~asrkd.train.run.Run` for ``top`` on the cached ``train`` outputs."""
    # time masks only (the cached outputs have no frequency axis), each up to time_mask_width of the length
    specaug = (
        SpecAugment(
            freq_masks=0,
            freq_width=0,
            time_masks=cfg.time_masks,
            time_width=top.whisper.encoder.n_ctx,
            max_time_ratio=cfg.time_mask_width,
        )
        if cfg.time_masks > 0
        else None
    )
    sampler, items, loader = _loader(EncodedItems(train, specaug), cfg, True, rejects)
    groups = [(list(top.whisper.head.parameters()), cfg.lr)]
    if top.top_parameters():
        groups.append((top.top_parameters(), cfg.encoder_lr))
    optimizer = build_optimizer(groups, {"weight_decay": cfg.weight_decay, "betas": BETAS, "eps": 1e-8})
    total = max(1, cfg.epochs * len(sampler))
    schedule = LRSchedule("cosine", math.ceil(WARMUP * total), total, MIN_LR_RATIO)
    if deadline is not None:
        schedule = TimeBudget(schedule, total, deadline, min_steps=len(sampler))
    loss_fn = DistillationLoss(ctc_weight=1.0, kd_weight=0.0, blank_id=tokenizer.blank_id, seed=cfg.seed)
    objective = Objective(loss_fn, input_dim=top.whisper.encoder.n_state, dummy_frames=1, device=torch.device("cpu"))
    return Run(
        loop=LoopConfig(epochs=cfg.epochs, clip_grad_norm=CLIP_GRAD_NORM, log_every=None, progress=cfg.progress),
        ddp=DistInfo(),
        model=top,
        objective=objective,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        sampler=sampler,
        items=items,
        loader=loader,
        tokenizer=tokenizer,
        rejects=Rejects(),
        log=log,
        save=save,
        dev=dev,
        deadline=deadline,
        last_checkpoint="(none: teacher-adapt writes --out at the end)",
    )


def dev_set(dev: Encoded, refs: dict[str, str], rejects: Rejects, cfg: AdaptConfig) -> DevSet:
    _, _, loader = _loader(EncodedItems(dev), cfg, False, rejects)
    return DevSet(loader, refs, rejects)


# --------------------------------------------------------------------------- the whole command
def adapt_teacher(
    cfg: AdaptConfig, *, deadline: float | None = None, log: Callable[[str], None] | None = None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Adapt ``cfg.teacher`` on ``cfg.train`` (stopping at ``deadline``, a ``time.monotonic()``
    time, after at least one epoch): returns the trained ``WhisperCTC`` (eval mode, frozen),
    the tokenizer and the summary a checkpoint stores as ``adapt``."""
    from asrkd.train.loop import evaluate, fit

    t0 = time.monotonic()
    log = log or Log(None)
    augment = augment_config(cfg)  # before any work: a bad --augment file fails at once
    torch.manual_seed(cfg.seed)
    rejects = {"train": Rejects(), "dev": Rejects()}
    train_utts, unlabelled_train = _labelled(cfg.train, rejects["train"], "train", log)
    dev_utts, unlabelled_dev = _labelled(cfg.dev, rejects["dev"], "dev", log) if cfg.dev else ([], 0)
    if not train_utts:
        raise ValueError(
            f"{cfg.train} has no labelled utterances (a CTC head needs transcripts)\n{rejects['train'].summary()}"
        )
    tokenizer = _tokenizer(cfg.tokenizer, [u.text for u in train_utts], log)
    whisper, source = load_adaptable(cfg, len(tokenizer))
    top = TopOfWhisper(whisper, cfg.unfreeze_blocks)
    log(
        f"teacher {source}: encoder {sum(p.numel() for p in whisper.encoder.parameters()) / 1e6:.2f} M params, "
        f"head {sum(p.numel() for p in whisper.head.parameters()) / 1e6:.2f} M, vocab {len(tokenizer)}, "
        f"training the head{f' + top {cfg.unfreeze_blocks} blocks' if cfg.unfreeze_blocks else ''}"
    )
    train_enc, dev_enc = _encode_sets(top, train_utts, dev_utts, tokenizer, cfg, rejects, log)
    clean_utts, clean_samples = len(train_enc.ids), sum(train_enc.samples.values())
    if augment is not None:
        t_aug = time.monotonic()
        train_enc = add_augmented_copies(top, train_enc, train_utts, tokenizer, cfg, augment)
        log(
            f"encoded {cfg.augment_copies} augmented copies of each training utterance: "
            f"{len(train_enc.ids)} training items in {time.monotonic() - t_aug:.0f} s"
        )
    dev = dev_set(dev_enc, {u.id: u.text for u in dev_utts}, rejects["dev"], cfg) if dev_utts else None
    best = BestWeights()
    run = build_adapt_run(top, train_enc, dev, tokenizer, cfg, rejects["train"], deadline, log, best)
    for name, rej in rejects.items():
        if len(rej):
            log(rej.summary(title=f"{name}: skipped"))
    if len(run.sampler) == 0:
        raise ValueError(f"no usable training utterance left in {cfg.train} (see the skip counts above)")
    if deadline is not None and deadline <= time.monotonic():
        log("the time budget is spent already (encoding took it): training one epoch")
    fit(run)
    if best.state is not None:
        top.load_state_dict(best.state)
    whisper.requires_grad_(False)
    whisper.eval()
    summary = {
        "source": source,
        "epochs": len(run.progress.history),
        "train_utterances": clean_utts,
        "train_hours": clean_samples / SAMPLE_RATE / 3600,
        "train_items": len(train_enc.ids),  # with the augmented copies
        "augment_copies": cfg.augment_copies,
        "augment": augment.to_dict() if augment is not None else None,
        "unfreeze_blocks": cfg.unfreeze_blocks,
        "wall_s": round(time.monotonic() - t0, 1),
        "skipped_train": rejects["train"].counts(),
        "skipped_dev": rejects["dev"].counts(),
        "unlabelled_train": unlabelled_train,
        "unlabelled_dev": unlabelled_dev,
        "history": [
            {k: h[k] for k in ("epoch", "step", "elapsed_s", "dev_cer", "dev_wer") if k in h}
            | {"loss": h["train_loss"]}
            for h in run.progress.history
        ],
    }
    if dev is not None:
        ev = evaluate(top, dev.loader, dev.refs, tokenizer, run.device)
        summary.update(dev_cer=ev["cer"], dev_wer=ev["wer"], dev_utterances=ev["utterances"])
        log(f"dev (best epoch): %CER {ev['cer']:.2f}  %WER {ev['wer']:.2f}  on {ev['utterances']} utterances")
    return whisper, tokenizer, summary


def _labelled(path: str, rejects: Rejects, name: str, log) -> tuple[list, int]:
    """Labelled utterances of a manifest (bad lines go to ``rejects``) and the number of
    unlabelled ones, which cannot train a CTC head and are skipped."""
    utts = load_manifest(path, rejects)
    labelled = [u for u in utts if u.has_text]
    if len(labelled) < len(utts):
        log(f"{name}: {len(utts) - len(labelled)} unlabelled utterances skipped (a CTC head needs transcripts)")
    return labelled, len(utts) - len(labelled)


def _tokenizer(path: str, texts: list[str], log):
    p = Path(path)
    if p.is_file():
        return load_tokenizer(p)
    tok = CharTokenizer.build(texts)
    tok.save(p)
    log(f"built a character tokenizer of {len(tok)} symbols from the training texts: {p}")
    return tok


def _encode_sets(top, train_utts, dev_utts, tokenizer, cfg: AdaptConfig, rejects, log) -> tuple[Encoded, Encoded]:
    t_enc = time.monotonic()
    sets = [
        encode(top, utts, tokenizer, cfg.max_seconds_per_batch, rejects[name], f"encode {name}", cfg.progress)
        for name, utts in (("train", train_utts), ("dev", dev_utts))
    ]
    audio_s = sum(n for s in sets for n in s.samples.values()) / SAMPLE_RATE
    enc_s = time.monotonic() - t_enc
    log(
        f"encoded {len(sets[0].ids)} train + {len(sets[1].ids)} dev utterances ({audio_s / 3600:.2f} h) in "
        f"{enc_s:.0f} s ({audio_s / max(enc_s, 1e-9):.0f}x real time)"
    )
    return sets[0], sets[1]


def save_adapted(path, whisper: nn.Module, tokenizer, summary: dict[str, Any], config: dict[str, Any]) -> None:
    """The adapted teacher as an asrkd checkpoint (atomic): ``load_teacher("asrkd:PATH")``."""
    from asrkd.models.checkpoint import save_checkpoint

    save_checkpoint(
        path,
        {
            "arch": "whisper_ctc",
            "model_kwargs": whisper.model_kwargs,
            "model": whisper.state_dict(),
            "tokenizer": tokenizer.to_dict(),
            "features": None,  # waveform-input model: its Whisper front-end is part of it
            "cmvn": None,
            "adapt": summary,
            "config": config,
        },
    )
