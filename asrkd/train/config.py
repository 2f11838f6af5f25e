"""Trainer configuration: YAML file + ``key=value`` overrides on top of :data:`DEFAULTS`.

Every key the trainer reads is in :data:`DEFAULTS` (documented in ``docs/training.md`` and
the mini recipe's ``conf/*.yaml``); an unknown key is an error naming the nearest valid
ones, so a typo never silently trains with a default. The sections listed in
:data:`OPEN_SECTIONS` are free-form dicts handed to a builder that checks them itself
(student constructor arguments, ``FeatureConfig`` fields, SpecAugment arguments).
:func:`validate` gives every other key a type and range (:func:`_rules`): a value that would
train wrongly (a negative clipping norm, a NaN batch size, an infinite loss weight) is refused
with the key, the value and what is allowed, before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` (no dot) as a string; learning rates are written that way."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: a SafeLoader subclass


DEFAULTS: dict[str, Any] = {
    "exp_dir": "exp/student",  # checkpoints, history.json, train.log, tensorboard/
    "seed": 0,
    "data": {
        "train": None,  # training manifest (JSONL); required
        "dev": None,  # dev manifest with text: WER/CER after each epoch, picks best.pt
        "tokenizer": None,  # saved tokenizer (JSON); None: characters of the training texts
        "features": {},  # FeatureConfig fields (n_mels, hop_ms, ...)
        "cmvn_utterances": 1000,  # utterances for the global CMVN statistics
        "specaug": {
            "freq_masks": 2,
            "freq_width": 27,
            "time_masks": 2,
            "time_width": 40,
            "max_time_ratio": 0.1,
        },  # null: off
        "speed_perturb": None,  # e.g. [0.9, 1.0, 1.1]; not with teacher.cache
        # waveform augmentation of training audio (asrkd.data.augment): sub-dicts noise, reverb,
        # telephone, gain ({} or true: that one's defaults; absent/null: off). Keeps the length,
        # so it may be used with teacher.cache. null: off
        "augment": None,
        "min_duration": None,  # seconds
        "max_duration": None,
        "max_seconds": 120.0,  # padded audio seconds per batch (per rank)
        "max_batch_size": None,
        "num_buckets": 10,
        "num_workers": 2,
    },
    "model": {
        "arch": "conformer",  # conformer | emformer
        "size": "xs",  # xs | s | m
        "overrides": {},  # any student constructor argument (dropout, chunk_size, ...)
        "init": None,  # an asrkd student checkpoint to start from (by parameter name and shape)
        "init_strict": False,  # true: every parameter must be in it with its shape, nothing else
    },
    "teacher": {
        "cache": None,  # folder written by `asrkd cache-teacher`
        "spec": None,  # teacher run in the loop (or, with cache, checked against it)
    },
    "loss": {
        "ctc_weight": 1.0,
        "kd_weight": 0.0,  # λ; > 0 needs a teacher
        "temperature": 1.0,
        "shift": 0,  # streaming delay of the teacher, student frames
        "blank_mode": "none",  # none | threshold | select
        "blank_threshold": 0.5,
        "blank_weight": 0.1,
        "resample": "ctc",  # teacher -> student frame rate: ctc (keeps spikes) | average
        "unmapped": "drop",  # teacher symbols the student lacks: drop, or a student symbol
    },
    "optim": {
        "lr": 1.0e-3,  # peak learning rate
        "weight_decay": 0.01,  # AdamW; not applied to biases and norms
        "betas": [0.9, 0.98],
        "eps": 1.0e-8,
        "schedule": "cosine",  # cosine (warm-up + cosine) | noam | constant (warm-up + flat)
        "warmup_steps": 500,
        "min_lr_ratio": 0.02,  # cosine floor, fraction of lr
        "total_steps": None,  # schedule length; None: epochs x optimizer steps per epoch
        "clip_grad_norm": 5.0,  # None: no clipping
        "accum_steps": 1,  # batches per optimizer step
    },
    "train": {
        "epochs": 10,
        "max_steps": None,  # stop after this many optimizer steps (the schedule is unchanged)
        "device": "auto",  # auto | cpu | cuda | cuda:N
        "amp": "auto",  # auto (bf16 on CUDA, off on CPU) | bf16 | off
        "threads": None,  # torch intra-op threads per process; None: torch's default
        "log_every": 50,  # optimizer steps between log lines / TensorBoard points
        "eval_every_steps": None,  # extra dev evaluations between epoch ends
        "save_every_steps": None,  # extra last.pt saves between epoch ends
        "max_nonfinite": 20,  # consecutive NaN/Inf steps before the run stops
        "progress": True,  # tqdm bar (rank 0)
        "tensorboard": True,  # scalars under exp_dir/tensorboard
    },
}

#: Sections whose keys are not checked here (the builder they go to checks them).
OPEN_SECTIONS = ("data.features", "data.specaug", "data.augment", "model.overrides")


class ConfigError(ValueError):
    """A bad configuration: unknown key, missing value, wrong value."""


def _check_keys(cfg: Mapping[str, Any], ref: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in ref:
            near = difflib.get_close_matches(str(key), list(ref), n=3)
            hint = f"; did you mean {', '.join(prefix + n for n in near)}?" if near else ""
            raise ConfigError(
                f"unknown config key {path!r}{hint} (valid under {prefix.rstrip('.') or 'the top'}: "
                f"{', '.join(sorted(ref))})"
            )
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


def _yaml_problem(path: Path, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None)
    what = ": ".join(str(x) for x in (getattr(err, "context", None), problem) if x) if problem else str(err)
    return f"{path}{where}: not valid YAML: {what}"


def _read_yaml(path: Path) -> Any:
    """The parsed file; a ConfigError naming the file (and the line) when it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
            f"{err.start}); save the config as UTF-8"
        ) from None
    try:
        return _yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_problem(path, err)) from None


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """:data:`DEFAULTS` <- ``base`` (e.g. a checkpoint's config) <- the YAML file (after the file it
    ``extends``, if any) <- overrides."""
    cfg = copy.deepcopy(DEFAULTS)
    if base is not None:
        _check_keys(base, DEFAULTS)
        _merge(cfg, base)
    if path is not None:
        _merge_file(cfg, Path(path), ())
    return apply_overrides(cfg, overrides)


def _merge_file(cfg: dict[str, Any], path: Path, chain: tuple[Path, ...]) -> None:
    """Merge a YAML config into ``cfg``; its top-level ``extends: OTHER.yaml`` (relative to the
    file) is merged first, so a recipe's variant states only what differs from its base."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (extended by {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'extends' goes round in a circle: {' -> '.join(map(str, chain + (path,)))}")
    user = _read_yaml(path) or {}
    if not isinstance(user, Mapping):
        raise ConfigError(f"{path}: the config must be a mapping at the top level")
    user = dict(user)
    has_parent = "extends" in user
    parent = user.pop("extends", None)
    if has_parent:
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{path}: 'extends' must name a YAML file, got {parent!r}")
        _merge_file(cfg, path.parent / parent, chain + (path.resolve(),))
    try:
        _check_keys(user, DEFAULTS)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    _merge(cfg, user)


@dataclass(frozen=True)
class _Rule:
    """What one key accepts: ``ok(value)`` and the words for it in the error message."""

    allowed: str
    ok: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML true is an int to Python


def _is_num(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond the float range (the trainer's float() would fail)
        return False


def _nullable(rule: _Rule, null: str | bool) -> _Rule:
    if not null:
        return rule
    why = f" ({null})" if isinstance(null, str) else ""
    return _Rule(f"{rule.allowed}, or null{why}", lambda v: v is None or rule.ok(v))


def _int(lo: int, *, null: str | bool = False) -> _Rule:
    return _nullable(_Rule(f"an int >= {lo}", lambda v: _is_int(v) and v >= lo), null)


def _num(
    lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False, null: str | bool = False
) -> _Rule:
    if hi is None:
        span = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        span = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def ok(v: Any) -> bool:
        return _is_num(v) and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))

    return _nullable(_Rule(f"a finite number {span}", ok), null)


def _str(*, null: str | bool = False) -> _Rule:
    return _nullable(_Rule("a non-empty string", lambda v: isinstance(v, str) and v != ""), null)


def _choice(*choices: Any, extra: Sequence[Any] = ()) -> _Rule:
    """One of ``choices`` (named in the message); ``extra`` are accepted silently (YAML's ``off`` is False)."""
    names = ", ".join(str(c) for c in choices)
    return _Rule(f"one of {names}", lambda v: any(type(v) is type(c) and v == c for c in (*choices, *extra)))


def _list(item: _Rule, items: str, length: int | None = None, *, null: str | bool = False) -> _Rule:
    """A YAML list (a tuple would not survive :func:`dump`) of ``length`` values ``item`` accepts."""
    n = f"{length} " if length is not None else ""
    return _nullable(
        _Rule(
            f"a list of {n}{items}",
            lambda v: isinstance(v, list) and (length is None or len(v) == length) and all(item.ok(x) for x in v),
        ),
        null,
    )


# what random, numpy (modulo 2**32) and torch.manual_seed all take
_SEED = _Rule("an int in [0, 2**63)", lambda v: _is_int(v) and 0 <= v < 2**63)
_BOOL = _Rule("true or false", lambda v: isinstance(v, bool))
_MAPPING = _Rule("a mapping, or null", lambda v: v is None or isinstance(v, Mapping))
_DEVICE = _Rule(
    "auto, cpu, cuda or cuda:N", lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None
)


@functools.cache
def _rules() -> dict[str, _Rule]:
    """The rule of every key of :data:`DEFAULTS` (the choices come from the modules that use them)."""
    from asrkd.kd.align import BLANK_MODES, RESAMPLE_METHODS
    from asrkd.models.students import ARCHS, SIZES
    from asrkd.ops._validate import TEMPERATURE_RANGE

    sizes = list(dict.fromkeys(s for per_arch in SIZES.values() for s in per_arch))  # model.arch picks among them
    return {
        "exp_dir": _str(),
        "seed": _SEED,
        "data.train": _str(),
        "data.dev": _str(null=True),
        "data.tokenizer": _str(null=True),
        "data.features": _MAPPING,
        "data.specaug": _MAPPING,
        "data.augment": _MAPPING,
        "data.cmvn_utterances": _int(1, null="all"),
        "data.speed_perturb": _list(_num(0, lo_open=True), "finite numbers > 0", null="none"),
        "data.min_duration": _num(0, null="no minimum"),
        "data.max_duration": _num(0, lo_open=True, null="no maximum"),
        "data.max_seconds": _num(0, lo_open=True),
        "data.max_batch_size": _int(1, null="no cap"),
        "data.num_buckets": _int(1),
        "data.num_workers": _int(0),
        "model.arch": _choice(*ARCHS, extra=[f"{a}_ctc" for a in ARCHS]),
        "model.size": _choice(*sizes),
        "model.overrides": _MAPPING,
        "model.init": _str(null=True),
        "model.init_strict": _BOOL,
        "teacher.cache": _str(null=True),
        "teacher.spec": _str(null=True),
        "loss.ctc_weight": _num(0),
        "loss.kd_weight": _num(0),
        "loss.temperature": _num(*TEMPERATURE_RANGE),
        "loss.shift": _int(0),
        "loss.blank_mode": _choice(*BLANK_MODES),
        "loss.blank_threshold": _num(0, 1),
        "loss.blank_weight": _num(0, 1),
        "loss.resample": _choice(*RESAMPLE_METHODS),
        "loss.unmapped": _Rule("drop or a student symbol (a non-empty string)", _str().ok),
        "optim.lr": _num(0, lo_open=True),
        "optim.weight_decay": _num(0),
        "optim.betas": _list(_num(0, 1, hi_open=True), "numbers in [0, 1)", 2),
        "optim.eps": _num(0, lo_open=True),
        "optim.schedule": _choice("cosine", "noam", "constant"),
        "optim.warmup_steps": _int(0),
        "optim.min_lr_ratio": _num(0, 1),
        "optim.total_steps": _int(1, null="epochs x steps per epoch"),
        # 0 is what the trainer has always read as "no clipping"; a negative norm would flip the gradient
        "optim.clip_grad_norm": _num(0, null="0 or null: no clipping"),
        "optim.accum_steps": _int(1),
        "train.epochs": _int(1),
        "train.max_steps": _int(1, null="no limit"),
        "train.device": _DEVICE,
        "train.amp": _choice("auto", "bf16", "off", extra=[False, None]),
        "train.threads": _int(1, null="torch's default"),
        "train.log_every": _int(1),
        "train.eval_every_steps": _int(0, null="0 or null: only at epoch ends"),
        "train.save_every_steps": _int(0, null="0 or null: only at epoch ends"),
        "train.max_nonfinite": _int(1),
        "train.progress": _BOOL,
        "train.tensorboard": _BOOL,
    }


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"missing config key {dotted!r} (a config made by load_config has every key)")
        node = node[part]
    return node


def _check_values(cfg: Mapping[str, Any], partial: bool) -> None:
    for key, rule in _rules().items():
        value = _lookup(cfg, key)
        if key == "data.train" and value is None:
            if partial:
                continue
            raise ConfigError("data.train (the training manifest) is required")
        if not rule.ok(value):
            raise ConfigError(f"config key {key!r} must be {rule.allowed}, got {value!r}")


# SpecAugment's arguments (a section of its own: null turns it off, and keys left out keep SpecAugment's defaults)
_SPECAUG = {
    "freq_masks": _int(0),
    "freq_width": _int(0),
    "time_masks": _int(0),
    "time_width": _int(0),
    "max_time_ratio": _num(0, 1),
}


def _non_finite(value: Any, path: str) -> tuple[str, float] | None:
    """The dotted key and value of a NaN/Inf inside ``value`` (no constructor argument means one), else None."""
    if isinstance(value, Mapping):
        return next((hit for k, v in value.items() if (hit := _non_finite(v, f"{path}.{k}"))), None)
    if isinstance(value, list):
        return next((hit for i, v in enumerate(value) if (hit := _non_finite(v, f"{path}[{i}]"))), None)
    return (path, value) if isinstance(value, float) and not math.isfinite(value) else None


def _check_open_sections(cfg: Mapping[str, Any]) -> None:
    """The builders check their own keys, but not all refuse NaN/Inf; SpecAugment's keys are known here."""
    for section in OPEN_SECTIONS:
        hit = _non_finite(_lookup(cfg, section), section)
        if hit is not None:
            raise ConfigError(f"config key {hit[0]!r} must be a finite number, got {hit[1]!r}")
    specaug = cfg["data"]["specaug"]
    for key, value in (specaug or {}).items():
        if key not in _SPECAUG:
            near = difflib.get_close_matches(str(key), list(_SPECAUG), n=2)
            hint = f"; did you mean {', '.join('data.specaug.' + n for n in near)}?" if near else ""
            raise ConfigError(
                f"unknown config key 'data.specaug.{key}'{hint} (SpecAugment takes {', '.join(_SPECAUG)})"
            )
        if not _SPECAUG[key].ok(value):
            raise ConfigError(f"config key 'data.specaug.{key}' must be {_SPECAUG[key].allowed}, got {value!r}")
    _check_augment(cfg["data"]["augment"])


def _check_augment(augment: Any) -> None:
    """``data.augment`` through the parser the trainer uses, its errors naming the key."""
    if augment is None:
        return
    from asrkd.data.augment import AugmentConfig

    try:
        AugmentConfig.from_dict(augment, prefix="data.augment.")
    except ValueError as err:
        raise ConfigError(str(err).replace("augment key", "config key", 1)) from None


def validate(cfg: Mapping[str, Any], *, partial: bool = False) -> None:
    """Every key's type and range (:func:`_rules`), then the checks across keys that no single builder makes.

    ``partial``: a config whose paths are still to come (``--print-config`` of a recipe file whose
    run.sh passes them): a null ``data.train`` or teacher is no error; every value given is still checked.
    """
    _check_keys(cfg, DEFAULTS)
    _check_values(cfg, partial)
    _check_open_sections(cfg)
    d, m, t, lo = cfg["data"], cfg["model"], cfg["teacher"], cfg["loss"]
    if lo["kd_weight"] > 0 and not (t["cache"] or t["spec"]) and not partial:
        raise ConfigError(
            "loss.kd_weight > 0 needs a teacher: set teacher.cache (a cache-teacher folder) "
            "or teacher.spec (run it in the loop)"
        )
    if t["cache"] and d["speed_perturb"]:
        raise ConfigError(
            "data.speed_perturb changes the audio the cached teacher saw: use teacher.spec "
            "(teacher in the loop) or no speed perturbation with teacher.cache"
        )
    if lo["ctc_weight"] <= 0 and lo["kd_weight"] <= 0:
        raise ConfigError("loss.ctc_weight and loss.kd_weight are both 0: nothing to train")
    if d["min_duration"] is not None and d["max_duration"] is not None and d["min_duration"] > d["max_duration"]:
        raise ConfigError(
            f"data.min_duration ({d['min_duration']}) is above data.max_duration "
            f"({d['max_duration']}): every utterance would be skipped"
        )
    _check_size(m["arch"], m["size"])


def _check_size(arch: str, size: str) -> None:
    from asrkd.models.students import SIZES

    sizes = SIZES[arch.removesuffix("_ctc")]
    if size not in sizes:
        raise ConfigError(
            f"config key 'model.size' must be one of {', '.join(sizes)} for model.arch {arch}, got {size!r}"
        )


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
