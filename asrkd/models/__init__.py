"""Acoustic models: the streaming students (:mod:`asrkd.models.students`), adapters that load
pretrained teachers (:mod:`asrkd.models.teachers`), the checkpoint format and model registry
(:mod:`asrkd.models.checkpoint`) and TorchScript export (:mod:`asrkd.models.export`)."""
