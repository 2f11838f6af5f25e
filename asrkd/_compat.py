"""Old module paths (before the layout of ``docs/internals.md``) keep working for one release.

``import asrkd.teachers`` gives :mod:`asrkd.models.teachers` itself (the same module object,
so ``isinstance`` checks and registries agree) with a ``DeprecationWarning`` naming the new
path. The README's "Layout" section lists the moves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "asrkd.checkpoint": "asrkd.models.checkpoint",
    "asrkd.students": "asrkd.models.students",
    "asrkd.students.conformer": "asrkd.models.students.conformer",
    "asrkd.students.emformer": "asrkd.models.students.emformer",
    "asrkd.students.frontend": "asrkd.models.students.frontend",
    "asrkd.students.streaming": "asrkd.models.students.streaming",
    "asrkd.students.export": "asrkd.models.export",
    "asrkd.teachers": "asrkd.models.teachers",
    "asrkd.teachers.ct2": "asrkd.models.teachers.ct2",
    "asrkd.teachers.hf": "asrkd.models.teachers.hf",
    "asrkd.teachers.torchaudio_ctc": "asrkd.models.teachers.torchaudio_ctc",
    "asrkd.teachers.whisper": "asrkd.models.teachers.whisper",
    "asrkd.teachers.adapt": "asrkd.train.adapt",
    "asrkd.align": "asrkd.kd.align",
    "asrkd.losses": "asrkd.kd.loss",
    "asrkd.cache": "asrkd.kd.cache",
    "asrkd.training": "asrkd.train",
    "asrkd.training.config": "asrkd.train.config",
    "asrkd.training.schedule": "asrkd.train.schedule",
    "asrkd.training.state": "asrkd.train.state",
    "asrkd.training.distributed": "asrkd.train.distributed",
    "asrkd.search": "asrkd.eval.search",
    "asrkd.decode": "asrkd.eval.decode",
    "asrkd.metrics": "asrkd.eval.scoring",
    "asrkd.report": "asrkd.eval.report",
    "asrkd.demo": "asrkd.cli.demo",
    "asrkd.data.prepare": "asrkd.cli.prepare",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:  # the new module is already executed
        pass


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # before the path finders: a stale empty folder must not win
