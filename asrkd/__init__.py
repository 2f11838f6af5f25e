"""asrkd: distil large pretrained acoustic models into small streaming ASR students.

Public modules by role: :mod:`asrkd.ops` (fused KD loss), :mod:`asrkd.data`,
:mod:`asrkd.teachers`, :mod:`asrkd.students`, :mod:`asrkd.losses`.
"""

__version__ = "0.1.0"
