"""asrkd checkpoints: atomic writes, and a registry that rebuilds models from them.

A checkpoint is a ``torch.save`` dict with at least::

    {"format": "asrkd-checkpoint-v1",
     "arch": "<registered builder name>", "model_kwargs": {...},   # rebuilds the module
     "model": state_dict,
     "tokenizer": tokenizer.to_dict() | None,
     "features": feature-config dict | None, "cmvn": cmvn dict | None,
     ...}                                                       # trainer adds optimizer, step, ...

Model classes register a builder with :func:`register_model`; :func:`load_model` turns
any such checkpoint back into a module (students, adapted teachers, anything trained here).

**Loading never runs code from the file.** Every ``.pt`` asrkd opens goes through
:func:`safe_load`: ``torch.load(weights_only=True)``, which rebuilds tensors, containers and
plain values only, plus the NumPy RNG-state arrays that checkpoints written before this
version hold. A file that needs anything else is refused with :class:`CheckpointError`, naming
the file and the objects it asks for. Files you made yourself with other tools and trust can
be loaded with ``trust=True``, ``with trusted_checkpoints():`` or the commands'
``--trust-checkpoint``; never by default.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import os
import pickle
import re
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from asrkd.atomic import atomic_write

FORMAT = "asrkd-checkpoint-v1"
_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}
# Modules whose import registers builders; imported lazily so `import asrkd` stays light.
_BUILDER_MODULES = ("asrkd.models.students", "asrkd.models.teachers")


def register_model(name: str):
    """Decorator: ``@register_model("conformer_ctc")`` on a class or builder function."""

    def deco(fn):
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"model builder {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def _ensure_builders() -> None:
    for mod in _BUILDER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def build_model(arch: str, **kwargs) -> torch.nn.Module:
    _ensure_builders()
    if arch not in _BUILDERS:
        raise KeyError(f"unknown model arch {arch!r}; registered: {sorted(_BUILDERS)}")
    return _BUILDERS[arch](**kwargs)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


_TRUST = contextvars.ContextVar("asrkd_trust_checkpoints", default=False)


@contextmanager
def trusted_checkpoints(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`safe_load` fully unpickles files (the ``--trust-checkpoint`` opt-in)."""
    token = _TRUST.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST.reset(token)


def _numpy_rng_globals() -> list[Any]:
    """What pickled ``np.random.get_state()`` arrays need (checkpoints written before RNG
    states were stored as tensors): the array type, its dtype and NumPy's array rebuilder."""
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), core.multiarray._reconstruct]


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The Python objects a refused pickle asks for."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: take the names from the error itself
        names = []
    text = str(err)
    return names or re.findall(r"\bGLOBAL ([\w.]+)", text) or re.findall(r"Unsupported class ([\w.]+)", text)


# torch.save never compresses; a .pt whose entries inflate far beyond the file is a zip bomb.
_MAX_INFLATION = 16


def _check_archive(path: Path) -> None:
    """Refuse what ``torch.load`` should not even start on: a TorchScript archive (not a
    checkpoint) and a zip whose entries inflate far beyond the file's size."""
    if not zipfile.is_zipfile(path):
        return  # legacy torch.save format or not a torch file: torch.load decides
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (broken zip archive: {err})") from None
    if any(i.filename.endswith(("/constants.pkl", "/code/__torch__.py")) or "/code/" in i.filename for i in infos):
        raise CheckpointError(
            f"{path} is a TorchScript export (e.g. from `asrkd export`), not a checkpoint: "
            "load it with asrkd.models.export.load_exported"
        )
    inflated = sum(i.file_size for i in infos if i.compress_type != zipfile.ZIP_STORED)
    if inflated > _MAX_INFLATION * max(path.stat().st_size, 1 << 20):
        raise CheckpointError(
            f"{path}: refused: its compressed entries would inflate to {inflated / 2**30:.1f} GiB "
            f"from a {path.stat().st_size / 2**20:.1f} MiB file (torch.save never compresses)"
        )


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust: bool | None = None) -> Any:
    """``torch.load`` that never executes code from the file (see the module doc); raises
    :class:`CheckpointError` naming ``path`` for a file that is refused or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_archive(path)
    if _TRUST.get() if trust is None else trust:
        warnings.warn(f"{path}: fully unpickled (--trust-checkpoint): any code it holds has run", stacklevel=2)
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_rng_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on pickle protocols
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        wanted = _unsafe_globals(path, err)
        if not wanted:  # not refused: not a pickle torch can read
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_torch_reason(err)})") from None
        raise CheckpointError(
            f"{path}: refused: loading it would run Python code or build objects asrkd does not allow "
            f"({', '.join(wanted)}); asrkd checkpoints hold only tensors and plain data. If you made "
            "this file yourself and trust it, pass --trust-checkpoint (library: trust=True)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_torch_reason(err)})") from None


def _torch_reason(err: Exception) -> str:
    """The informative part of a torch.load error, without its advice to load unsafely."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip()
        and "weights_only" not in ln
        and not ln.strip().startswith(("Weights only load failed", "Please file an issue", "Check the documentation"))
    ]
    return lines[0] if lines else type(err).__name__


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one,
    never a truncated one (temporary file in the same folder, fsync, rename)."""
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust: bool | None = None
) -> dict[str, Any]:
    """An asrkd checkpoint dict, loaded by :func:`safe_load`."""
    state = safe_load(path, map_location, trust=trust)
    if not is_checkpoint(state):
        raise CheckpointError(f"{path} is not an asrkd checkpoint (missing format={FORMAT!r})")
    return state


def is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, trust: bool | None = None):
    """Rebuild the model stored in an asrkd checkpoint; returns ``(model, checkpoint_dict)``."""
    state = load_checkpoint(path, map_location, trust=trust)
    return model_from_state(state, path), state


def model_from_state(state: dict[str, Any], source: str | os.PathLike) -> torch.nn.Module:
    """The module a loaded checkpoint dict describes; ``CheckpointError`` naming ``source``
    when the dict lacks what it needs or its weights do not fit its own architecture."""
    for key in ("arch", "model"):
        if key not in state:
            raise CheckpointError(f"{source}: checkpoint has no {key!r} entry")
    weights, kwargs = state["model"], state.get("model_kwargs", {})
    if not isinstance(weights, dict) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: 'model' and 'model_kwargs' must be dicts")
    try:
        with torch.device("meta"):  # shapes only: a file cannot make us allocate what its weights do not hold
            _check_shapes(build_model(state["arch"], **kwargs), weights, source)
        model = build_model(state["arch"], **kwargs)
        model.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError, ValueError, NotImplementedError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{source}: cannot rebuild its {state['arch']!r} model: {_first_line(err)}") from None
    return model


def _check_shapes(probe: torch.nn.Module, weights: dict[str, Any], source) -> None:
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    problems = [
        f"{k}: {have.get(k, 'missing')} in the file, {shape} for its model_kwargs"
        for k, shape in want.items()
        if have.get(k) != shape
    ]
    problems += [f"{k}: not a parameter of its model" for k in weights if k not in want]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{source}: its weights do not match its model_kwargs: {'; '.join(problems[:3])}{more}")


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()``: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` copied into a model, and what it left as initialised."""

    source: str
    loaded: list[str] = field(default_factory=list)
    loaded_params: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, checkpoint shape, model shape
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def summary(self, limit: int = 5) -> str:
        def some(names) -> str:
            more = f", ... (+{len(names) - limit})" if len(names) > limit else ""
            return ", ".join(names[:limit]) + more

        lines = [
            f"init from {self.source}: loaded {len(self.loaded)} tensors ({self.loaded_params / 1e6:.2f} M values)"
        ]
        if self.mismatched:
            shapes = [f"{n} {tuple(a)} vs {tuple(b)}" for n, a, b in self.mismatched]
            lines.append(f"  kept as initialised, shape differs (checkpoint vs model): {some(shapes)}")
        if self.missing:
            lines.append(f"  kept as initialised, not in the checkpoint: {some(self.missing)}")
        if self.unexpected:
            lines.append(f"  ignored, not in the model: {some(self.unexpected)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "loaded_params": self.loaded_params,
            "missing": self.missing,
            "mismatched": [[n, list(a), list(b)] for n, a, b in self.mismatched],
            "unexpected": self.unexpected,
        }


def init_from_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = False) -> InitReport:
    """Copy the weights of an asrkd checkpoint into ``model`` by parameter name and shape.

    ``strict=False`` copies every tensor whose name and shape match and reports the rest
    (e.g. a student pretrained with another vocabulary: everything but the output layer).
    ``strict=True`` raises :class:`CheckpointError` unless every model tensor is in the file
    with its shape and the file holds nothing else. The checkpoint is read with
    :func:`safe_load` (tensors and plain data only).
    """
    state = load_checkpoint(path)
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: checkpoint has no 'model' weights")
    report = InitReport(str(path))
    own = model.state_dict()
    for name, tensor in own.items():
        have = weights.get(name)
        if not isinstance(have, torch.Tensor):
            report.missing.append(name)
        elif tuple(have.shape) != tuple(tensor.shape):
            report.mismatched.append((name, tuple(have.shape), tuple(tensor.shape)))
        else:
            report.loaded.append(name)
            report.loaded_params += tensor.numel()
    report.unexpected = [k for k in weights if k not in own]
    if not report.loaded:
        raise CheckpointError(f"{path}: no tensor of it fits the model by name and shape (another architecture?)")
    if strict and (report.missing or report.mismatched or report.unexpected):
        raise CheckpointError(f"model.init_strict: {path} does not fit the model\n{report.summary()}")
    with torch.no_grad():
        for name in report.loaded:
            own[name].copy_(weights[name].to(own[name].dtype))
    return report
