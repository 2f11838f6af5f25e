"""Knowledge distillation: the teacher aligned to the student (:mod:`asrkd.kd.align`: vocabulary
map, frame-rate resampling, streaming shift, blank-aware weights), the loss
(:mod:`asrkd.kd.loss`: CTC + the fused KD op) and the teacher cache (:mod:`asrkd.kd.cache`)."""
