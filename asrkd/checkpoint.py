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
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import torch

from asrkd.atomic import atomic_write

FORMAT = "asrkd-checkpoint-v1"
_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}
# Modules whose import registers builders; imported lazily so `import asrkd` stays light.
_BUILDER_MODULES = ("asrkd.students", "asrkd.teachers")


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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one,
    never a truncated one (temporary file in the same folder, fsync, rename)."""
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an asrkd checkpoint (missing format={FORMAT!r})")
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model stored in an asrkd checkpoint; returns ``(model, checkpoint_dict)``."""
    state = load_checkpoint(path, map_location)
    model = build_model(state["arch"], **state.get("model_kwargs", {}))
    model.load_state_dict(state["model"])
    return model, state
