"""Old module paths (before the layout of ``docs/internals.md``) keep working for one release.

``import asrkd.teachers`` gives :mod:`asrkd.models.teachers` itself (the same module object,
so ``isinstance`` checks and registries agree) with a ``DeprecationWarning`` naming the new
path. Names that moved to another module are forwarded from the old one with a warning; names
that were replaced raise an ``ImportError`` that says what replaced them. The README's
"Layout" section lists the moves.
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
    "asrkd.teachers.base": "asrkd.models.acoustic",
    "asrkd.teachers.checkpoint": "asrkd.models.acoustic",
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
# Modules that are gone, and what to use instead.
REMOVED = {
    "asrkd.students.benchmark": "the model-only streaming benchmark is benchmarks/bench_students.py",
}
_ACOUSTIC = "asrkd.models.acoustic.AcousticModel"
# (module, name) -> "module.name" it moved to (forwarded), or None with a replacement note (refused).
NAMES = {
    ("asrkd.eval.decode", "token_emissions"): "asrkd.eval.latency.token_emissions",
    ("asrkd.eval.decode", "match_emissions"): "asrkd.eval.latency.match_emissions",
    ("asrkd.eval.decode", "delay_summary"): "asrkd.eval.latency.delay_summary",
    ("asrkd.eval.decode", "Emission"): "asrkd.eval.latency.Emission",
}
REPLACED = {
    ("asrkd.eval.decode", "Recognizer"): f"{_ACOUSTIC} (.tokens is .vocab, .name is .spec)",
    ("asrkd.eval.decode", "load_recognizer"): "asrkd.models.acoustic.load_acoustic_model",
    ("asrkd.models.teachers", "FrozenTeacher"): f"{_ACOUSTIC}(network, ..., frozen=True)",
    ("asrkd.models.acoustic", "FrozenTeacher"): f"{_ACOUSTIC}(network, ..., frozen=True)",
    ("asrkd.models.acoustic", "FeatureInputCTC"): f"{_ACOUSTIC}(network, ..., frontend=FeaturePipeline(...))",
    ("asrkd.models.acoustic", "teacher_from_state"): f"{_ACOUSTIC}.from_state(state, spec, frozen=True)",
    ("asrkd.models.acoustic", "load_checkpoint_teacher"): "asrkd.models.teachers.load_teacher('asrkd:PATH')",
    ("asrkd.models.students", "AudioStreamer"): f"{_ACOUSTIC}.from_student(model, tokenizer, features).stream()",
    ("asrkd.models.students.streaming", "AudioStreamer"): f"{_ACOUSTIC}.from_student(model, tokenizer, "
    "features).stream()",
}


def _old_name_getattr(module_name: str, old_path: str, previous):
    """A module ``__getattr__`` (PEP 562) answering for names that moved out or were replaced."""

    def __getattr__(name: str):
        moved = NAMES.get((module_name, name))
        if moved is not None:
            where, _, attr = moved.rpartition(".")
            warnings.warn(f"{old_path}.{name} moved to {moved}", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(where), attr)
        replaced = REPLACED.get((module_name, name))
        if replaced is not None:
            raise ImportError(f"{old_path}.{name} was replaced by {replaced}", name=old_path)
        if previous is not None:
            return previous(name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in REMOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name in REMOVED:
            raise ImportError(f"{spec.name} was removed: {REMOVED[spec.name]}", name=spec.name)
        new = MOVED[spec.name]
        # stacklevel 2 names the importer's line: the frames between are importlib's, which the
        # warnings module skips for DeprecationWarning attribution.
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._real_spec = module.__spec__
        if not getattr(module, "_asrkd_old_names", False) and any(m == new for m, _ in (*NAMES, *REPLACED)):
            module.__getattr__ = _old_name_getattr(new, spec.name, module.__dict__.get("__getattr__"))
            module._asrkd_old_names = True
        return module

    def exec_module(self, module) -> None:
        # The new module is already executed; importlib has set its __spec__ to the alias's, which
        # would break importlib.resources and reload for the real name: put the real one back.
        module.__spec__ = self._real_spec


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # before the path finders: a stale empty folder must not win
