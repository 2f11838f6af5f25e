"""Knowledge distillation: the teacher aligned to the student (:mod:`asrkd.kd.align`: the
teacher's outputs as a :class:`~asrkd.kd.align.TeacherOutput`, vocabulary map, frame-rate
resampling, streaming shift, blank-aware weights), the loss (:mod:`asrkd.kd.loss`: CTC + the
fused KD op) and the teacher cache (:mod:`asrkd.kd.cache`; its command is
:mod:`asrkd.cli.cache_teacher`)."""
