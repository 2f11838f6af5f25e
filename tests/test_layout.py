"""The package layout: old module paths still import (same module objects) with a warning."""

from __future__ import annotations

import importlib

import pytest

from asrkd._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_give_the_new_modules_with_a_warning(old):
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_public_api_names_are_where_the_readme_says():
    from asrkd.kd.loss import DistillationLoss  # noqa: F401
    from asrkd.models.students import build_student  # noqa: F401
    from asrkd.models.teachers import load_teacher  # noqa: F401
    from asrkd.ops import kd_kl_div, kd_kl_div_topk  # noqa: F401
    from asrkd.train import TrainingError, train  # noqa: F401


def _fresh_import(old):
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning):
        return importlib.import_module(old)


def test_an_old_path_keeps_the_new_modules_spec_and_names_the_importer(tmp_path):
    import subprocess
    import sys

    module = _fresh_import("asrkd.teachers")
    assert module.__spec__.name == "asrkd.models.teachers" and module.__spec__.origin
    user = tmp_path / "user_script.py"
    user.write_text("import warnings\nwarnings.simplefilter('always')\nimport asrkd.teachers\n")
    err = subprocess.run([sys.executable, str(user)], capture_output=True, text=True, check=True).stderr
    assert "user_script.py:3" in err and "asrkd.teachers moved to asrkd.models.teachers" in err


def test_moved_names_are_forwarded_and_replaced_ones_named():
    from asrkd.eval.latency import token_emissions

    old = _fresh_import("asrkd.decode")
    with pytest.warns(DeprecationWarning, match="asrkd.decode.token_emissions moved to asrkd.eval.latency"):
        assert old.token_emissions is token_emissions
    with pytest.raises(ImportError, match=r"asrkd.decode.Recognizer was replaced by asrkd.models.acoustic.Acoust"):
        old.Recognizer  # noqa: B018
    _fresh_import("asrkd.teachers")
    with pytest.raises(ImportError, match=r"FrozenTeacher was replaced by .*frozen=True"):
        from asrkd.teachers import FrozenTeacher  # noqa: F401
    _fresh_import("asrkd.students")
    with pytest.raises(ImportError, match=r"AudioStreamer was replaced by .*\.stream\(\)"):
        from asrkd.students import AudioStreamer  # noqa: F401
    with pytest.raises(ImportError, match="benchmarks/bench_students.py"):
        importlib.import_module("asrkd.students.benchmark")
