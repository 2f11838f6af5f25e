"""``asrkd teacher-adapt``: transfer a Whisper encoder to character CTC on a manifest.

The encoder stays frozen except, optionally, its top ``--unfreeze-blocks`` blocks, so the
frozen part runs once per utterance: its outputs are computed once, kept in memory (fp16),
and the CTC head (+ top blocks) trains on them for many epochs. On 2 CPU cores Whisper
tiny.en encodes ~60-80x faster than real time, so 1.5 h of audio costs ~1.5 min once, and
each later epoch costs only the head.

Result: an asrkd checkpoint (``arch="whisper_ctc"``, full encoder + head, the tokenizer),
loaded with ``load_teacher("asrkd:teacher.pt")`` or ``asrkd.models.checkpoint.load_model``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from asrkd.data.sampler import duration_batches

HELP = "train a CTC head (optionally the top encoder blocks) on a Whisper teacher: the mini recipe's teacher"

MAX_SECONDS = 30.0  # Whisper's window: longer utterances are skipped (and counted) here
MIN_SECONDS = 0.025


# --------------------------------------------------------------------------- data
def read_manifest(path: str | Path, rejects) -> tuple[list, int]:
    """Labelled utterances of a manifest (bad lines go to ``rejects``) and the number of
    unlabelled ones, which cannot train a CTC head and are skipped."""
    from asrkd.data.manifest import load_manifest

    utts = load_manifest(path, rejects)
    labelled = [u for u in utts if u.has_text]
    return labelled, len(utts) - len(labelled)


# --------------------------------------------------------------------------- model pieces
class CachedEncoder:
    """Frozen lower part of a :class:`~asrkd.models.teachers.whisper.WhisperCTC`: its outputs per utterance.

    With ``unfreeze = K`` the cache holds the residual stream entering block ``n_layer - K``
    (positions already added); with ``K = 0`` the final encoder output.
    """

    def __init__(self, model, unfreeze: int):
        n_layer = model.encoder.n_layer
        if not 0 <= unfreeze <= n_layer:
            raise ValueError(f"--unfreeze-blocks must be in [0, {n_layer}], got {unfreeze}")
        self.model, self.split = model, n_layer - unfreeze

    @torch.no_grad()
    def __call__(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.model.encoder
        feats, frames = self.model.frontend(waves, lengths)
        x, out_lengths = enc.embed(feats, frames)
        x = enc.run_blocks(x, out_lengths, 0, self.split)
        if self.split == enc.n_layer:
            x = enc.finish(x, out_lengths)
        return x, out_lengths


def trainable_forward(model, split: int, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits from cached activations: top blocks (if any) + final LayerNorm + head."""
    enc = model.encoder
    if split < enc.n_layer:
        x = enc.finish(enc.run_blocks(x, lengths, split), lengths)
    return model.head(x, lengths)


def greedy_ctc(logits: torch.Tensor, lengths: torch.Tensor, blank: int) -> list[list[int]]:
    """Best-path CTC: argmax per frame, repeats merged, blanks removed."""
    best = logits.argmax(-1)
    out = []
    for row, n in zip(best, lengths.tolist()):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append([i for i in ids if i != blank])
    return out


def _time_mask(x: torch.Tensor, lengths: torch.Tensor, masks: int, width: float, gen: torch.Generator) -> torch.Tensor:
    """Zero ``masks`` random spans of up to ``width`` x length frames per utterance (SpecAugment-style)."""
    if masks <= 0 or width <= 0:
        return x
    B, T, _ = x.shape
    keep = torch.ones(B, T, dtype=torch.bool)
    for b, n in enumerate(lengths.tolist()):
        max_w = max(1, int(width * n))
        for _ in range(masks):
            w = int(torch.randint(0, max_w + 1, (1,), generator=gen))
            s = int(torch.randint(0, max(1, n - w + 1), (1,), generator=gen))
            keep[b, s : s + w] = False
    return x * keep[:, :, None].to(x.dtype)


# --------------------------------------------------------------------------- stages
def encode_all(encoder: CachedEncoder, utts: list, max_seconds: float, rejects, desc: str, progress: bool):
    """Load audio and run the frozen encoder part once: ``(kept utterances, {id: activations fp16})``.

    Utterances longer than 30 s, shorter than 25 ms, or whose audio cannot be read go to ``rejects``.
    """
    from tqdm import tqdm

    from asrkd.data.audio import AudioError

    ok = []
    for u in utts:
        if u.duration > MAX_SECONDS:
            rejects.add(u.id, "too_long", f"{u.duration:.1f} s: Whisper encodes at most {MAX_SECONDS:.0f} s")
        elif u.duration < MIN_SECONDS:
            rejects.add(u.id, "too_short", f"{u.duration:.3f} s: the Whisper front-end needs {MIN_SECONDS} s")
        else:
            ok.append(u)
    cache: dict[str, torch.Tensor] = {}
    batches = duration_batches([u.duration for u in ok], max_seconds)
    batch_seconds = [sum(ok[i].duration for i in batch) for batch in batches]
    # the total adds the same per-batch sums in the same order as the updates: the bar ends exactly full
    bar = tqdm(total=sum(batch_seconds), desc=desc, unit="s", disable=not progress, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}]")
    for batch, seconds in zip(batches, batch_seconds):
        loaded = []
        for i in batch:
            u = ok[i]
            try:
                wave = u.load_audio()
            except AudioError as err:
                rejects.add(u.id, err.kind, err.reason)
                continue
            if wave.numel() < MIN_SECONDS * 16000:
                rejects.add(u.id, "too_short", f"{wave.numel()} samples: the Whisper front-end needs {MIN_SECONDS} s")
                continue
            if wave.numel() > MAX_SECONDS * 16000:  # the manifest's duration was wrong
                rejects.add(u.id, "too_long", f"{wave.numel() / 16000:.1f} s of audio: Whisper encodes at most "
                                              f"{MAX_SECONDS:.0f} s")
                continue
            loaded.append((u, wave))
        bar.update(seconds)
        if not loaded:
            continue
        lengths = torch.tensor([w.numel() for _, w in loaded])
        pad = torch.zeros(len(loaded), int(lengths.max()))
        for j, (_, w) in enumerate(loaded):
            pad[j, : w.numel()] = w
        x, out_lengths = encoder(pad, lengths)
        for j, (u, _) in enumerate(loaded):
            cache[u.id] = x[j, : out_lengths[j]].to(torch.float16).clone()
    bar.close()
    return [u for u in utts if u.id in cache], cache


def _collate(ids: Sequence[str], cache: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([cache[i].size(0) for i in ids])
    x = torch.zeros(len(ids), int(lengths.max()), cache[ids[0]].size(1))
    for j, i in enumerate(ids):
        x[j, : lengths[j]] = cache[i].float()
    return x, lengths


@torch.no_grad()
def evaluate(model, split: int, utts: list, cache, tokenizer, max_frames: int) -> dict[str, Any]:
    """Greedy-CTC WER/CER (asrkd.eval.scoring.score, sclite counting) against normalised references."""
    from asrkd.eval.scoring import score

    model.eval()
    hyps: dict[str, str] = {}
    frames = [cache[u.id].size(0) for u in utts]
    for batch in duration_batches(frames, max_frames):
        ids = [utts[i].id for i in batch]
        x, lengths = _collate(ids, cache)
        logits = trainable_forward(model, split, x, lengths)
        for uid, seq in zip(ids, greedy_ctc(logits, lengths, tokenizer.blank_id)):
            hyps[uid] = tokenizer.decode(seq)
    refs = {u.id: tokenizer.normalize(u.text) for u in utts}
    result = score(refs, hyps)
    return {"wer": result["wer"], "cer": result["cer"], "utterances": result["utterances"], "hyps": hyps}


def train(
    model,
    split: int,
    train_utts: list,
    train_cache: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
    *,
    tokenizer,
    dev: tuple[list, dict[str, torch.Tensor]] | None,
    epochs: int,
    deadline: float | None,
    lr: float,
    encoder_lr: float,
    weight_decay: float,
    max_frames: int,
    time_masks: int,
    time_mask_width: float,
    seed: int,
    progress: bool,
    log=print,
) -> list[dict[str, Any]]:
    """Train head (+ top blocks) with CTC on cached activations; keeps the best dev-CER weights.

    Schedule: linear warm-up over the first 5 %, then cosine decay, where progress is the
    larger of (steps done / steps planned) and (time used / time budget); training stops
    when it reaches 1.
    """
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(seed)
    enc = model.encoder
    top = [p for b in enc.blocks[split:] for p in b.parameters()] + (list(enc.ln_post.parameters()) if split < enc.n_layer else [])
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if top:
        groups.append({"params": top, "lr": encoder_lr})
    trainable = [p for g in groups for p in g["params"]]
    model.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in groups]

    frames = [train_cache[u.id].size(0) for u in train_utts]
    batches = duration_batches(frames, max_frames)
    total_steps = max(1, epochs * len(batches))
    start = time.monotonic()
    budget = None if deadline is None else max(deadline - start, 1e-3)
    if deadline is not None and deadline <= start:
        log("the time budget is spent already (encoding took it): training one epoch")

    def progress_frac(step: int) -> float:
        frac = step / total_steps
        if budget is not None:
            frac = max(frac, (time.monotonic() - start) / budget)
        return frac

    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    step = 0
    done = False
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(batches), generator=gen).tolist()
        bar = tqdm(order, desc=f"epoch {epoch}", disable=not progress, file=sys.stderr, leave=False)
        loss_sum, n_sum = 0.0, 0
        for bi in bar:
            frac = progress_frac(step)
            if frac >= 1.0:
                if epoch > 1:
                    done = True
                    break
                frac = step / len(batches)  # budget gone in epoch 1: schedule that one epoch fully
            scale = min(1.0, frac / 0.05) if frac < 0.05 else 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - 0.05) / 0.95)))
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * max(scale, 0.01)
            ids = [train_utts[i].id for i in batches[bi]]
            x, lengths = _collate(ids, train_cache)
            x = _time_mask(x, lengths, time_masks, time_mask_width, gen)
            logits = trainable_forward(model, split, x, lengths)
            log_probs = logits.float().log_softmax(-1).transpose(0, 1)
            tgt = [targets[i] for i in ids]
            tgt_lengths = torch.tensor([len(t) for t in tgt])
            loss = F.ctc_loss(log_probs, torch.tensor([c for t in tgt for c in t]), lengths, tgt_lengths,
                              blank=tokenizer.blank_id, reduction="sum", zero_infinity=True) / max(1, int(tgt_lengths.sum()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, 5.0)
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * int(tgt_lengths.sum())
            n_sum += int(tgt_lengths.sum())
            bar.set_postfix(loss=f"{loss_sum / max(1, n_sum):.3f}")
        bar.close()
        rec: dict[str, Any] = {"epoch": epoch, "step": step, "loss": loss_sum / max(1, n_sum), "elapsed_s": round(time.monotonic() - start, 1)}
        if dev is not None and dev[0]:
            ev = evaluate(model, split, dev[0], dev[1], tokenizer, max_frames)
            rec.update(dev_cer=ev["cer"], dev_wer=ev["wer"])
            if best is None or ev["cer"] < best[0]:
                best = (ev["cer"], {k: v.detach().clone() for k, v in model.state_dict().items()})
        history.append(rec)
        dev_txt = f"  dev CER {rec['dev_cer']:.2f}%  WER {rec['dev_wer']:.2f}%" if "dev_cer" in rec else ""
        log(f"epoch {epoch:3d}  loss/char {rec['loss']:.4f}{dev_txt}  ({rec['elapsed_s']:.0f} s)")
        if done or progress_frac(step) >= 1.0:
            break
    if best is not None:
        model.load_state_dict(best[1])
    model.requires_grad_(False)
    model.eval()
    return history


# --------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="whisper-tiny.en",
                   help="whisper-tiny.en (default, offline), whisper:PATH (ct2 model.bin, openai .pt, HF dir), "
                        "or an adapted teacher checkpoint (asrkd:CKPT) to continue training")
    p.add_argument("--train", required=True, help="training manifest (JSONL, with text)")
    p.add_argument("--dev", help="dev manifest: CER/WER after each epoch; the best-CER epoch is kept")
    p.add_argument("--tokenizer", required=True,
                   help="saved asrkd tokenizer; if the file does not exist, a CharTokenizer is built from the "
                        "training texts and saved there")
    p.add_argument("--out", required=True, help="output checkpoint (written atomically)")
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs over the cached training set (default 40)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget of the whole command, encoding included; the LR schedule follows it "
                        "and training stops at it (after at least one epoch)")
    p.add_argument("--unfreeze-blocks", type=int, default=0, help="also train the top K encoder blocks (default 0)")
    p.add_argument("--lr", type=float, default=2e-3, help="head learning rate (AdamW, default 2e-3)")
    p.add_argument("--encoder-lr", type=float, default=1e-4, help="learning rate of unfrozen blocks (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--head-layers", type=int, default=2, help="conv layers in the CTC head (0 = linear; default 2)")
    p.add_argument("--head-hidden", type=int, default=256)
    p.add_argument("--head-kernel", type=int, default=5)
    p.add_argument("--dropout", type=float, default=0.3, help="head dropout (default 0.3)")
    p.add_argument("--time-masks", type=int, default=2, help="time masks per utterance on cached activations (default 2)")
    p.add_argument("--time-mask-width", type=float, default=0.1, help="max width of each, as a fraction of the length")
    p.add_argument("--max-seconds-per-batch", type=float, default=60.0,
                   help="padded audio seconds per batch (encoding and training; default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _tokenizer(path: str, texts: list[str], log):
    from asrkd.data.tokenizer import CharTokenizer, load_tokenizer

    p = Path(path)
    if p.is_file():
        return load_tokenizer(p)
    tok = CharTokenizer.build(texts)
    tok.save(p)
    log(f"built a character tokenizer of {len(tok)} symbols from the training texts: {p}")
    return tok


def _load_model(spec: str, vocab_size: int, args):
    from asrkd.models.teachers.whisper import build_whisper_ctc, default_whisper_path

    head = dict(head_layers=args.head_layers, head_hidden=args.head_hidden, head_kernel=args.head_kernel, head_dropout=args.dropout)
    if spec == "whisper-tiny.en":
        return build_whisper_ctc(default_whisper_path(), vocab_size, seed=args.seed, **head), spec
    if spec.startswith("whisper:"):
        return build_whisper_ctc(spec.split(":", 1)[1], vocab_size, seed=args.seed, **head), spec
    path = spec.split(":", 1)[1] if spec.startswith("asrkd:") else spec
    if Path(path).suffix in {".pt", ".pth", ".ckpt"} or spec.startswith("asrkd:"):
        from asrkd.models.checkpoint import load_model

        model, state = load_model(path)
        if state["arch"] != "whisper_ctc":
            raise ValueError(f"{path} holds a {state['arch']!r} model; teacher-adapt trains whisper_ctc models")
        if model.vocab_size != vocab_size:
            raise ValueError(f"{path} has {model.vocab_size} outputs but the tokenizer has {vocab_size} symbols")
        return model, state.get("adapt", {}).get("source", spec)
    raise ValueError(f"--teacher {spec!r}: expected whisper-tiny.en, whisper:PATH or an asrkd whisper_ctc checkpoint")


def run(args: argparse.Namespace) -> int:
    from asrkd.models.checkpoint import save_checkpoint

    from asrkd.atomic import refuse_overwrite
    from asrkd.models.teachers import spec_file

    refuse_overwrite({"--out": args.out, "--tokenizer": args.tokenizer},
                     {"--train": args.train, "--dev": args.dev, "--teacher": spec_file(args.teacher)})
    t0 = time.monotonic()
    deadline = None if args.minutes is None else t0 + 60.0 * args.minutes
    progress = not args.no_progress

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from asrkd.data.features import ctc_min_frames
    from asrkd.data.rejects import Rejects
    from asrkd.data.tokenizer import TokenizerError

    rejects = {"train": Rejects(), "dev": Rejects()}
    train_utts, unlabelled_train = read_manifest(args.train, rejects["train"])
    dev_utts, unlabelled_dev = read_manifest(args.dev, rejects["dev"]) if args.dev else ([], 0)
    for name, n in (("train", unlabelled_train), ("dev", unlabelled_dev)):
        if n:
            log(f"{name}: {n} unlabelled utterances skipped (a CTC head needs transcripts)")
    if not train_utts:
        raise ValueError(f"{args.train} has no labelled utterances (a CTC head needs transcripts)\n"
                         f"{rejects['train'].summary()}")
    tokenizer = _tokenizer(args.tokenizer, [u.text for u in train_utts], log)
    model, source = _load_model(args.teacher, len(tokenizer), args)
    model.eval()
    encoder = CachedEncoder(model, args.unfreeze_blocks)
    log(f"teacher {source}: encoder {sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f} M params, "
        f"head {sum(p.numel() for p in model.head.parameters()) / 1e6:.2f} M, vocab {len(tokenizer)}, "
        f"training the head{f' + top {args.unfreeze_blocks} blocks' if args.unfreeze_blocks else ''}")

    # Labels first: an utterance that cannot be tokenized is not worth encoding.
    targets: dict[str, list[int]] = {}
    for name, utts in (("train", train_utts), ("dev", dev_utts)):
        kept = []
        for u in utts:
            try:
                ids = tokenizer.encode(u.text)
            except TokenizerError as err:
                rejects[name].add(u.id, "oov_chars", str(err))
                continue
            if not ids:
                rejects[name].add(u.id, "empty_text", "nothing left after text normalisation")
                continue
            targets[u.id] = ids
            kept.append(u)
        if name == "train":
            train_utts = kept
        else:
            dev_utts = kept

    t_enc = time.monotonic()
    train_utts, train_cache = encode_all(encoder, train_utts, args.max_seconds_per_batch, rejects["train"], "encode train", progress)
    dev_cache: dict[str, torch.Tensor] = {}
    if dev_utts:
        dev_utts, dev_cache = encode_all(encoder, dev_utts, args.max_seconds_per_batch, rejects["dev"], "encode dev", progress)
    audio_s = sum(u.duration for u in train_utts) + sum(u.duration for u in dev_utts)
    enc_s = time.monotonic() - t_enc
    log(f"encoded {len(train_utts)} train + {len(dev_utts)} dev utterances ({audio_s / 3600:.2f} h) in {enc_s:.0f} s "
        f"({audio_s / max(enc_s, 1e-9):.0f}x real time)")

    kept = []
    for u in train_utts:
        need, have = ctc_min_frames(targets[u.id]), train_cache[u.id].size(0)
        if need > have:  # spoken too fast for 50 Hz character CTC: the loss would be infinite
            rejects["train"].add(u.id, "too_short_for_ctc", f"{need} CTC frames needed, {have} encoder frames")
        else:
            kept.append(u)
    train_utts = kept
    for name, rej in rejects.items():
        if len(rej):
            log(rej.summary(title=f"{name}: skipped"))
    if not train_utts:
        raise ValueError(f"no usable training utterance left in {args.train} (see the skip counts above)")

    frames_per_batch = int(args.max_seconds_per_batch * model.frame_rate)
    history = train(
        model, encoder.split, train_utts, train_cache, targets, tokenizer=tokenizer,
        dev=(dev_utts, dev_cache) if dev_utts else None, epochs=args.epochs, deadline=deadline, lr=args.lr,
        encoder_lr=args.encoder_lr, weight_decay=args.weight_decay, max_frames=frames_per_batch,
        time_masks=args.time_masks, time_mask_width=args.time_mask_width, seed=args.seed, progress=progress, log=log,
    )
    summary: dict[str, Any] = {"source": source, "epochs": len(history), "train_utterances": len(train_utts),
                               "train_hours": sum(u.duration for u in train_utts) / 3600,
                               "unfreeze_blocks": args.unfreeze_blocks, "wall_s": round(time.monotonic() - t0, 1),
                               "skipped_train": rejects["train"].counts(), "skipped_dev": rejects["dev"].counts(),
                               "unlabelled_train": unlabelled_train, "unlabelled_dev": unlabelled_dev, "history": history}
    if dev_utts:
        ev = evaluate(model, encoder.split, dev_utts, dev_cache, tokenizer, frames_per_batch)
        summary.update(dev_cer=ev["cer"], dev_wer=ev["wer"], dev_utterances=ev["utterances"])
        log(f"dev (best epoch): %CER {ev['cer']:.2f}  %WER {ev['wer']:.2f}  on {ev['utterances']} utterances")
    config = {k: v for k, v in vars(args).items() if not k.startswith("_") and not callable(v)}
    save_checkpoint(args.out, {
        "arch": "whisper_ctc",
        "model_kwargs": model.model_kwargs,
        "model": model.state_dict(),
        "tokenizer": tokenizer.to_dict(),
        "features": None,  # waveform-input model: its Whisper front-end is part of it
        "cmvn": None,
        "adapt": summary,
        "config": config,
    })
    log(f"saved {args.out} ({time.monotonic() - t0:.0f} s in all)")
    return 0
