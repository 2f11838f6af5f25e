"""A student run's files in ``exp_dir``: checkpoints written and read back, and the guards
around them (outputs never over inputs; a resume that does not fit is one line).

Every checkpoint (``last.pt``, ``best.pt``) is written atomically (temporary file, fsync,
rename: a kill leaves the old file or the new one) and holds plain data and tensors only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from asrkd.atomic import atomic_write, refuse_overwrite
from asrkd.data import FeatureConfig, load_tokenizer
from asrkd.models.checkpoint import load_checkpoint, save_checkpoint, weights_hash
from asrkd.train.distributed import gather_objects
from asrkd.train.run import Run, TrainingError
from asrkd.train.state import capture_rng

RUN_FILES = ("last.pt", "best.pt", "config.yaml", "history.json", "train.log", "rejected.jsonl")


def save_run(run: Run, names: list[str], epoch: int, batches_done: int) -> None:
    """Write the run to ``exp_dir/<name>`` for each of ``names`` (rank 0) and ``history.json``.
    Every rank sends its RNG state and a hash of its parameters, which must agree across ranks
    (a collective: all ranks call it together)."""
    rngs = gather_objects(capture_rng(), run.ddp)
    hashes = gather_objects(weights_hash(run.model), run.ddp)
    if len(set(hashes)) > 1:
        raise TrainingError(f"parameters differ across ranks at step {run.progress.step}: {hashes}")
    if not run.main:
        return
    state = {
        **run.checkpoint_meta,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "sampler": run.sampler.state_dict(batches_done=batches_done),
        "loss_rng": run.objective.loss_fn.generator.get_state(),
        "rng": rngs,
        "rank_weights": hashes,
        **run.progress.state(),
        "epoch": epoch,
        "batches_done": batches_done,
        "elapsed_s": run.progress.elapsed_s + time.time() - run.t_start,
    }
    for name in names:
        save_checkpoint(run.exp / name, state)
    write_json(run.exp / "history.json", {"history": run.progress.history, "best": run.progress.best})


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint ``asrkd train`` wrote (one that can be resumed), or a one-line error."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("config", "optimizer", "sampler", "rng", "step", "epoch") if k not in ckpt]
    if missing:
        raise TrainingError(
            f"--resume {path}: an asrkd checkpoint, but not one `asrkd train` wrote (no "
            f"{', '.join(missing)}): only a run's last.pt / best.pt can be resumed"
        )
    return ckpt


def load_run_state(path, ckpt: dict[str, Any], model, optimizer, sampler, loss_fn) -> None:
    """Model, optimizer, sampler and loss RNG from a checkpoint; ``TrainingError`` saying what
    does not fit the current config (model size, data) instead of a state-dict traceback."""
    parts = (
        ("model", model.load_state_dict, "model (model.arch / model.size / overrides changed?)"),
        ("optimizer", optimizer.load_state_dict, "optimizer state"),
        ("sampler", sampler.load_state_dict, "batch order (the training data or batching changed?)"),
        ("loss_rng", loss_fn.generator.set_state, "loss generator state"),
    )
    for key, load, what in parts:
        try:
            load(ckpt[key])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrainingError(f"--resume {path}: its {what} does not fit this run: {first}") from None


def check_same_front_end(path, d: dict[str, Any], features: FeatureConfig, tokenizer) -> None:
    """A resumed run keeps the features and the vocabulary it was trained with; a config that
    asks for others is refused instead of being listed as a change that does not happen."""
    wanted = FeatureConfig.from_dict(d["features"] or {}).to_dict()
    have = features.to_dict()
    changed = [
        f"{k} {have.get(k)!r} -> {wanted.get(k)!r}"
        for k in sorted(set(have) | set(wanted))
        if have.get(k) != wanted.get(k)
    ]
    if changed:
        raise TrainingError(
            f"--resume {path}: data.features differ from the checkpoint's front-end "
            f"({'; '.join(changed)}); a resumed run keeps its features: start a new run "
            "(another exp_dir) to change them"
        )
    if d["tokenizer"] and load_tokenizer(d["tokenizer"]).to_dict() != tokenizer.to_dict():
        raise TrainingError(
            f"--resume {path}: data.tokenizer {d['tokenizer']} is not the vocabulary the run was "
            "trained with; start a new run to change it"
        )


def refuse_outputs_over_inputs(cfg: dict[str, Any], exp: Path, resume_from) -> None:
    """The files a run writes into ``exp_dir`` must not be its data, tokenizer or teacher
    (``teacher.spec: exp/best.pt`` would be overwritten by the run it teaches)."""
    from asrkd.models.teachers import spec_file

    d, t = cfg["data"], cfg["teacher"]
    inputs = {
        "model.init": cfg["model"]["init"],
        "data.train": d["train"],
        "data.dev": d["dev"],
        "data.tokenizer": d["tokenizer"],
        "teacher.spec": spec_file(t["spec"]) if t["spec"] else None,
    }
    outputs = {f"exp_dir/{name}": exp / name for name in RUN_FILES}
    if resume_from is not None:  # resuming from exp_dir/last.pt rewrites it: that is the point
        outputs = {k: v for k, v in outputs.items() if Path(v).resolve() != Path(resume_from).resolve()}
    refuse_overwrite(outputs, inputs)
