"""Trainer config checks: every key of DEFAULTS gets a type and range check, and a bad value,
bad YAML or a non-UTF-8 file is a ConfigError naming the key (or the file and line)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from test_train import base_config

from asrkd.train import config as config_mod
from asrkd.train.config import DEFAULTS, ConfigError, load_config, validate

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONFIGS = sorted(ROOT.glob("recipes/*/conf/*.yaml"))
# what recipes/librispeech/run.sh sets on the command line (its file leaves the paths null)
RUN_SH_PATHS = [
    "data.train=d/train.jsonl",
    "data.dev=d/dev.jsonl",
    "teacher.cache=c/train",
    "teacher.spec=hf:x",
    "train.device=cuda",
    "train.amp=bf16",
]


@pytest.fixture
def conf(tmp_path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("exp_dir: x\ndata:\n  train: t.jsonl\n")
    return path


# (override, the dotted key the message must name, the value as the message must show it)
BAD_VALUES = [
    # the attack round's cases
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm", "-1"),  # was gradient ascent
    ("loss.ctc_weight=.inf", "loss.ctc_weight", "inf"),  # was every step skipped
    ("data.max_seconds=.nan", "data.max_seconds", "nan"),  # was 0 steps
    ("seed=abc", "seed", "'abc'"),  # was invalid literal for int()
    ("data.train=[1,2]", "data.train", "[1, 2]"),  # was expected str ... not list
    # top level
    ("exp_dir=null", "exp_dir", "None"),
    ("exp_dir=3", "exp_dir", "3"),
    ("seed=1.5", "seed", "1.5"),
    ("seed=true", "seed", "True"),
    ("seed=-1", "seed", "-1"),
    # data
    ("data.dev=3", "data.dev", "3"),
    ("data.tokenizer=[a]", "data.tokenizer", "['a']"),
    ("data.cmvn_utterances=0", "data.cmvn_utterances", "0"),
    ("data.speed_perturb=0.9", "data.speed_perturb", "0.9"),
    ("data.speed_perturb=[0.9,-1]", "data.speed_perturb", "[0.9, -1]"),
    ("data.speed_perturb=[a]", "data.speed_perturb", "['a']"),
    ("data.min_duration=-1", "data.min_duration", "-1"),
    ("data.max_duration=0", "data.max_duration", "0"),
    ("data.max_duration=.inf", "data.max_duration", "inf"),
    ("data.max_seconds=0", "data.max_seconds", "0"),
    ("data.max_seconds=1e400", "data.max_seconds", "inf"),
    ("data.max_seconds=1" + "0" * 400, "data.max_seconds", "1" + "0" * 400),  # an int beyond float
    ("data.max_batch_size=0", "data.max_batch_size", "0"),
    ("data.num_buckets=0", "data.num_buckets", "0"),
    ("data.num_workers=-1", "data.num_workers", "-1"),
    ("data.num_workers=1.5", "data.num_workers", "1.5"),
    ("data.specaug.freq_width=.nan", "data.specaug.freq_width", "nan"),  # the open sections
    ("data.specaug.freq_masks=-1", "data.specaug.freq_masks", "-1"),
    ("data.specaug.time_width=2.5", "data.specaug.time_width", "2.5"),
    ("data.specaug.max_time_ratio=2", "data.specaug.max_time_ratio", "2"),
    ("data.features.hop_ms=.nan", "data.features.hop_ms", "nan"),
    ("model.overrides.dropout=.nan", "model.overrides.dropout", "nan"),
    ("model.overrides.x=[1,.inf]", "model.overrides.x[1]", "inf"),
    # model
    ("model.arch=transformer", "model.arch", "'transformer'"),
    ("model.size=xl", "model.size", "'xl'"),
    ("model.size=1", "model.size", "1"),
    # teacher
    ("teacher.cache=5", "teacher.cache", "5"),
    ("teacher.spec=[x]", "teacher.spec", "['x']"),
    # loss
    ("loss.kd_weight=-1", "loss.kd_weight", "-1"),
    ("loss.ctc_weight=abc", "loss.ctc_weight", "'abc'"),
    ("loss.temperature=0", "loss.temperature", "0"),
    ("loss.temperature=1000", "loss.temperature", "1000"),
    ("loss.shift=-1", "loss.shift", "-1"),
    ("loss.shift=0.5", "loss.shift", "0.5"),
    ("loss.blank_mode=soft", "loss.blank_mode", "'soft'"),
    ("loss.blank_threshold=1.5", "loss.blank_threshold", "1.5"),
    ("loss.blank_weight=-0.1", "loss.blank_weight", "-0.1"),
    ("loss.resample=linear", "loss.resample", "'linear'"),
    ("loss.unmapped=null", "loss.unmapped", "None"),
    ("loss.unmapped=3", "loss.unmapped", "3"),
    # optim
    ("optim.lr=0", "optim.lr", "0"),
    ("optim.lr=.nan", "optim.lr", "nan"),
    ("optim.lr=-3e-4", "optim.lr", "-0.0003"),
    ("optim.weight_decay=-0.1", "optim.weight_decay", "-0.1"),
    ("optim.betas=[0.9]", "optim.betas", "[0.9]"),
    ("optim.betas=[0.9,1.0]", "optim.betas", "[0.9, 1.0]"),
    ("optim.betas=0.9", "optim.betas", "0.9"),
    ("optim.eps=0", "optim.eps", "0"),
    ("optim.schedule=linear", "optim.schedule", "'linear'"),
    ("optim.warmup_steps=-1", "optim.warmup_steps", "-1"),
    ("optim.warmup_steps=2.5", "optim.warmup_steps", "2.5"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio", "2"),
    ("optim.total_steps=0", "optim.total_steps", "0"),
    ("optim.clip_grad_norm=abc", "optim.clip_grad_norm", "'abc'"),
    ("optim.clip_grad_norm=.nan", "optim.clip_grad_norm", "nan"),
    ("optim.accum_steps=0", "optim.accum_steps", "0"),
    # train
    ("train.epochs=0", "train.epochs", "0"),
    ("train.epochs=2.5", "train.epochs", "2.5"),
    ("train.max_steps=0", "train.max_steps", "0"),
    ("train.device=gpu", "train.device", "'gpu'"),
    ("train.amp=fp16", "train.amp", "'fp16'"),
    ("train.amp=true", "train.amp", "True"),
    ("train.threads=0", "train.threads", "0"),
    ("train.log_every=0", "train.log_every", "0"),
    ("train.eval_every_steps=-1", "train.eval_every_steps", "-1"),
    ("train.save_every_steps=1.5", "train.save_every_steps", "1.5"),
    ("train.max_nonfinite=0", "train.max_nonfinite", "0"),
    ("train.progress=maybe", "train.progress", "'maybe'"),
    ("train.tensorboard=1", "train.tensorboard", "1"),
]


@pytest.mark.parametrize("override,key,shown", BAD_VALUES, ids=[case[0][:48] for case in BAD_VALUES])
def test_bad_value_names_key_value_and_what_is_allowed(conf, override, key, shown):
    cfg = load_config(conf, [override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    msg = str(info.value)
    assert f"'{key}'" in msg and f"got {shown}" in msg and "must be" in msg, msg


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["data.min_duration=5", "data.max_duration=2"], r"data.min_duration \(5\) .* data.max_duration \(2\)"),
        (["model.arch=emformer", "model.size=m"], None),  # valid: the size exists for that arch
    ],
)
def test_cross_key_checks(conf, overrides, match):
    cfg = load_config(conf, overrides)
    if match is None:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=match):
            validate(cfg)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"seed: 3\nexp_dir: x\xff\n", r"bad\.yaml, line 2: not UTF-8 text"),
        (b"seed: 3\ndata:\n  train: [a, b\noptim: {}\n", r"bad\.yaml, line \d+, column \d+: not valid YAML"),
        (b"seed: 3\n\tdata: 1\n", r"bad\.yaml, line 2, column 1: not valid YAML"),
        (b"seed: !!python/name:os.system x\n", r"bad\.yaml, line 1, column 7: not valid YAML"),
    ],
)
def test_unreadable_config_file_names_file_and_line(tmp_path, content, match):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_config(bad)


def test_every_default_key_has_a_rule_and_the_defaults_pass():
    def leaves(d, prefix=""):
        for key, value in d.items():
            path = prefix + key
            if isinstance(value, dict) and path not in config_mod.OPEN_SECTIONS:
                yield from leaves(value, path + ".")
            else:
                yield path

    assert set(leaves(DEFAULTS)) == set(config_mod._rules())
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"]["train"] = "t.jsonl"
    validate(cfg)


def test_specaug_keys_are_spec_augments_arguments(conf):
    import inspect

    from asrkd.data.features import SpecAugment

    assert list(config_mod._SPECAUG) == list(inspect.signature(SpecAugment).parameters)
    assert set(DEFAULTS["data"]["specaug"]) == set(config_mod._SPECAUG)
    with pytest.raises(
        ConfigError, match="unknown config key 'data.specaug.freq_mask'.*did you mean data.specaug.freq_masks"
    ):
        validate(load_config(conf, ["data.specaug.freq_mask=3"]))


def test_missing_key_in_a_python_config(conf):
    cfg = load_config(conf)
    del cfg["optim"]["lr"]
    with pytest.raises(ConfigError, match="missing config key 'optim.lr'"):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["optim.clip_grad_norm=null"],
        ["optim.clip_grad_norm=0"],  # no clipping
        ["train.amp=off"],
        ["train.amp=null"],
        ["train.amp=bf16"],
        ["train.device=cuda:1"],
        ["data.speed_perturb=[0.9, 1.0, 1.1]", "data.max_seconds=100", "data.min_duration=0.5", "data.max_duration=20"],
        ["data.cmvn_utterances=null", "data.specaug=null", "data.features=null", "model.overrides=null"],
        ["optim.min_lr_ratio=0.0", "optim.warmup_steps=0", "optim.total_steps=100", "optim.lr=3e-4", "seed=12345"],
        ["train.epochs=6", "optim.lr=3e-3", "loss.temperature=2", "train.device=cpu", "data.num_workers=0"],
        [
            "loss.kd_weight=1",
            "teacher.spec=asrkd:t.pt",
            "loss.ctc_weight=0",
            "loss.blank_mode=select",
            "loss.unmapped=<unk>",
            "model.arch=emformer_ctc",
            "train.eval_every_steps=0",
            "train.threads=1",
        ],
    ],
    ids=lambda o: " ".join(o) or "defaults",
)
def test_valid_values_still_validate(conf, overrides):
    validate(load_config(conf, overrides))


@pytest.mark.parametrize("path", RECIPE_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in RECIPE_CONFIGS])
def test_recipe_configs_validate(path):
    cfg = load_config(path)
    if cfg["data"]["train"] is None:  # a recipe whose run.sh passes the paths
        cfg = load_config(path, RUN_SH_PATHS)
    validate(cfg)
    # the documented override examples
    validate(
        load_config(
            path,
            ["train.epochs=6", "optim.lr=3e-3", "loss.temperature=2", "train.device=cpu", "data.num_workers=1"]
            + RUN_SH_PATHS[:3],
        )
    )


def test_partial_config_checks_values_but_not_missing_paths():
    cfg = load_config(ROOT / "recipes/librispeech/conf/student_kd.yaml")  # data.train, teacher: from run.sh
    validate(cfg, partial=True)
    with pytest.raises(ConfigError, match="data.train"):
        validate(cfg)
    cfg["optim"]["clip_grad_norm"] = -1
    with pytest.raises(ConfigError, match="'optim.clip_grad_norm'.*got -1"):
        validate(cfg, partial=True)


def test_recipe_configs_found():
    assert {p.parent.parent.name for p in RECIPE_CONFIGS} >= {"mini", "librispeech"}


def test_tests_base_config_validates(tmp_path):
    validate(base_config(tmp_path, tmp_path / "train.jsonl", tmp_path / "dev.jsonl"))
    validate(
        base_config(
            tmp_path,
            tmp_path / "train.jsonl",
            data={"max_batch_size": 1, "max_seconds": 2.5},
            optim={"lr": 1e-2, "warmup_steps": 2, "min_lr_ratio": 0.0},
            train={"epochs": 2, "max_steps": 3, "save_every_steps": 1},
        )
    )


def test_message_shows_allowed_values(conf):
    with pytest.raises(ConfigError, match=re.escape("'optim.schedule' must be one of cosine, noam, constant")):
        validate(load_config(conf, ["optim.schedule=linear"]))
