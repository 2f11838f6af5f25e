"""Pieces of the trainer (:mod:`asrkd.train`) that would clutter its top-to-bottom loop:
the YAML config with dotted overrides, learning-rate schedules, torch.distributed helpers,
RNG state capture and per-item seeding of data augmentation."""
