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
