"""Trainer configuration: YAML file + ``key=value`` overrides on top of :data:`DEFAULTS`.

Every key the trainer reads is in :data:`DEFAULTS` (documented in ``docs/training.md`` and
the mini recipe's ``conf/*.yaml``); an unknown key is an error naming the nearest valid
ones, so a typo never silently trains with a default. The sections listed in
:data:`OPEN_SECTIONS` are free-form dicts handed to a builder that checks them itself
(student constructor arguments, ``FeatureConfig`` fields, SpecAugment arguments).
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; learning rates are written that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)

DEFAULTS: dict[str, Any] = {
    "exp_dir": "exp/student",       # checkpoints, history.json, train.log, tensorboard/
    "seed": 0,
    "data": {
        "train": None,              # training manifest (JSONL); required
        "dev": None,                # dev manifest with text: WER/CER after each epoch, picks best.pt
        "tokenizer": None,          # saved tokenizer (JSON); None: characters of the training texts
        "features": {},             # FeatureConfig fields (n_mels, hop_ms, ...)
        "cmvn_utterances": 1000,    # utterances for the global CMVN statistics
        "specaug": {"freq_masks": 2, "freq_width": 27, "time_masks": 2, "time_width": 40,
                    "max_time_ratio": 0.1},  # null: off
        "speed_perturb": None,      # e.g. [0.9, 1.0, 1.1]; not with teacher.cache
        "min_duration": None,       # seconds
        "max_duration": None,
        "max_seconds": 120.0,       # padded audio seconds per batch (per rank)
        "max_batch_size": None,
        "num_buckets": 10,
        "num_workers": 2,
    },
    "model": {
        "arch": "conformer",        # conformer | emformer
        "size": "xs",               # xs | s | m
        "overrides": {},            # any student constructor argument (dropout, chunk_size, ...)
    },
    "teacher": {
        "cache": None,              # folder written by `asrkd cache-teacher`
        "spec": None,               # teacher run in the loop (or, with cache, checked against it)
    },
    "loss": {
        "ctc_weight": 1.0,
        "kd_weight": 0.0,           # λ; > 0 needs a teacher
        "temperature": 1.0,
        "shift": 0,                 # streaming delay of the teacher, student frames
        "blank_mode": "none",       # none | threshold | select
        "blank_threshold": 0.5,
        "blank_weight": 0.1,
        "resample": "ctc",          # teacher -> student frame rate: ctc (keeps spikes) | average
        "unmapped": "drop",         # teacher symbols the student lacks: drop, or a student symbol
    },
    "optim": {
        "lr": 1.0e-3,               # peak learning rate
        "weight_decay": 0.01,       # AdamW; not applied to biases and norms
        "betas": [0.9, 0.98],
        "eps": 1.0e-8,
        "schedule": "cosine",       # cosine (warm-up + cosine) | noam | constant (warm-up + flat)
        "warmup_steps": 500,
        "min_lr_ratio": 0.02,       # cosine floor, fraction of lr
        "total_steps": None,        # schedule length; None: epochs x optimizer steps per epoch
        "clip_grad_norm": 5.0,      # None: no clipping
        "accum_steps": 1,           # batches per optimizer step
    },
    "train": {
        "epochs": 10,
        "max_steps": None,          # stop after this many optimizer steps (the schedule is unchanged)
        "device": "auto",           # auto | cpu | cuda | cuda:N
        "amp": "auto",              # auto (bf16 on CUDA, off on CPU) | bf16 | off
        "threads": None,            # torch intra-op threads per process; None: torch's default
        "log_every": 50,            # optimizer steps between log lines / TensorBoard points
        "eval_every_steps": None,   # extra dev evaluations between epoch ends
        "save_every_steps": None,   # extra last.pt saves between epoch ends
        "max_nonfinite": 20,        # consecutive NaN/Inf steps before the run stops
        "progress": True,           # tqdm bar (rank 0)
        "tensorboard": True,        # scalars under exp_dir/tensorboard
    },
}

#: Sections whose keys are not checked here (the builder they go to checks them).
OPEN_SECTIONS = ("data.features", "data.specaug", "model.overrides")


class ConfigError(ValueError):
    """A bad configuration: unknown key, missing value, wrong value."""


def _check_keys(cfg: Mapping[str, Any], ref: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in ref:
            near = difflib.get_close_matches(key, list(ref), n=3)
            hint = f"; did you mean {', '.join(prefix + n for n in near)}?" if near else ""
            raise ConfigError(f"unknown config key {path!r}{hint} (valid under {prefix.rstrip('.') or 'the top'}: "
                              f"{', '.join(sorted(ref))})")
        if path in OPEN_SECTIONS:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping (or null), got {value!r}")
            continue
        if isinstance(ref[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            _check_keys(value, ref[key], path + ".")


def _merge(base: dict[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    for key, value in update.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            _merge(base[key], value, path + ".")
        else:
            base[key] = copy.deepcopy(value)
    return base


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def apply_overrides(cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        _check_keys(nested, DEFAULTS)
        _merge(cfg, nested)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`DEFAULTS` <- ``base`` (e.g. a checkpoint's config) <- the YAML file <- overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if base is not None:
        _check_keys(base, DEFAULTS)
        _merge(cfg, base)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            user = _yaml_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(user, Mapping):
            raise ConfigError(f"{path}: the config must be a mapping at the top level")
        try:
            _check_keys(user, DEFAULTS)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        _merge(cfg, user)
    return apply_overrides(cfg, overrides)


def validate(cfg: Mapping[str, Any]) -> None:
    """Checks across keys that no single builder makes."""
    d, t, lo, o, tr = cfg["data"], cfg["teacher"], cfg["loss"], cfg["optim"], cfg["train"]
    if not d["train"]:
        raise ConfigError("data.train (the training manifest) is required")
    if lo["kd_weight"] > 0 and not (t["cache"] or t["spec"]):
        raise ConfigError("loss.kd_weight > 0 needs a teacher: set teacher.cache (a cache-teacher folder) "
                          "or teacher.spec (run it in the loop)")
    if t["cache"] and d["speed_perturb"]:
        raise ConfigError("data.speed_perturb changes the audio the cached teacher saw: use teacher.spec "
                          "(teacher in the loop) or no speed perturbation with teacher.cache")
    if lo["ctc_weight"] <= 0 and lo["kd_weight"] <= 0:
        raise ConfigError("loss.ctc_weight and loss.kd_weight are both 0: nothing to train")
    if o["schedule"] not in ("cosine", "noam", "constant"):
        raise ConfigError(f"optim.schedule must be cosine, noam or constant, got {o['schedule']!r}")
    if int(o["accum_steps"]) < 1:
        raise ConfigError(f"optim.accum_steps must be >= 1, got {o['accum_steps']}")
    if tr["amp"] not in ("auto", "bf16", "off", False, None):
        raise ConfigError(f"train.amp must be auto, bf16 or off, got {tr['amp']!r}")
    if int(tr["epochs"]) < 1:
        raise ConfigError(f"train.epochs must be >= 1, got {tr['epochs']}")
    if int(tr["max_nonfinite"]) < 1:
        raise ConfigError(f"train.max_nonfinite must be >= 1, got {tr['max_nonfinite']}")


def diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs (for resume warnings)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def dump(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)
