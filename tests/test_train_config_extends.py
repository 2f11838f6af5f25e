"""A config file may extend another (the mini recipe's student_kd.yaml extends student_ctc.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrkd.train.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_extends_merges_the_base_first(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 3\nloss: {kd_weight: 0.0, temperature: 2.0}\ntrain: {epochs: 7}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "kd.yaml").write_text("extends: ../base.yaml\nloss: {kd_weight: 1.5}\n")
    cfg = load_config(tmp_path / "sub" / "kd.yaml", ["train.epochs=2"])
    assert cfg["seed"] == 3 and cfg["loss"]["temperature"] == 2.0  # from the base
    assert cfg["loss"]["kd_weight"] == 1.5 and cfg["train"]["epochs"] == 2  # the file, then the override
    assert "extends" not in cfg


def test_extends_errors_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="circle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml.*extended by .*c\.yaml"):
        load_config(tmp_path / "c.yaml")
    for bad in ("[1]", "null", "''"):
        (tmp_path / "d.yaml").write_text(f"extends: {bad}\n")
        with pytest.raises(ConfigError, match="must name a YAML file"):
            load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: b2.yaml\nlos: {}\n")
    (tmp_path / "b2.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=r"e\.yaml"):
        load_config(tmp_path / "e.yaml")


def test_mini_recipe_kd_config_differs_from_ctc_only_in_teacher_loss_and_pool():
    conf = ROOT / "recipes" / "mini" / "conf"
    ctc, kd = load_config(conf / "student_ctc.yaml"), load_config(conf / "student_kd.yaml")
    differ = {k for k in ctc if ctc[k] != kd[k]}
    assert differ == {"exp_dir", "teacher", "loss", "data"}
    # data: only the training manifest, which adds the untranscribed pool (KD term only)
    assert {k for k in ctc["data"] if ctc["data"][k] != kd["data"][k]} == {"train"}
    assert kd["data"]["train"] == ctc["data"]["train"].replace("train.jsonl", "train_pool.jsonl")
    assert kd["data"]["augment"] is None and ctc["data"]["augment"] is None
    # the augmentation ablations add the same augmentation to each, and nothing else
    ctc_aug, kd_aug = load_config(conf / "student_ctc_aug.yaml"), load_config(conf / "student_kd_aug.yaml")
    assert ctc_aug["data"]["augment"] == kd_aug["data"]["augment"] and ctc_aug["data"]["augment"]["noise"]
    for base, aug in ((ctc, ctc_aug), (kd, kd_aug)):
        assert {k for k in base if base[k] != aug[k]} == {"exp_dir", "data"}
        assert {k for k in base["data"] if base["data"][k] != aug["data"][k]} == {"augment"}
    assert kd["teacher"]["cache"] == "exp/mini/cache/train"  # where run.sh's cache stage writes it
    assert ctc["loss"]["kd_weight"] == 0 and kd["loss"]["kd_weight"] > 0
