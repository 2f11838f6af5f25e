"""asrkd: distil large pretrained acoustic models into small streaming ASR students.

Packages by role (``docs/internals.md``): :mod:`asrkd.ops` (the fused KD op), :mod:`asrkd.data`,
:mod:`asrkd.models` (students, teachers, checkpoints, export), :mod:`asrkd.kd` (alignment, loss,
teacher cache), :mod:`asrkd.train`, :mod:`asrkd.eval` (search, decoding, scoring, report) and
:mod:`asrkd.cli`.
"""

from asrkd import _compat

_compat.install()

__version__ = "0.1.0"
