"""RestoreConfig: defaults from ADIR Table 1, validated overrides, unknown keys refused,
``--set`` parsed by one function, the paper preset as Table 1, method names from the registry."""

import pytest

from restore_core.config import (
    CHOICES,
    PRESETS,
    RestoreConfig,
    parse_overrides,
    preset_values,
)
from restore_core.errors import ConfigError
from restore_core.methods import PROVIDERS


def test_defaults_follow_table_1():
    cfg = RestoreConfig()
    assert (cfg.adapt_iters, cfg.adapt_lr, cfg.k, cfg.steps) == (400, 1e-4, 20, 1000)
    assert (cfg.lora_rank, cfg.lora_alpha) == (16, 8)


def test_overrides_parse_types_and_nested_sections():
    cfg = RestoreConfig().with_overrides(
        ["steps=50", "adapt_lr=1e-3", "shred.grad=skip-unet", "diip.k_min=3",
         "metrics=psnr,ssim", "guidance_scale=2"])
    assert cfg.steps == 50 and cfg.adapt_lr == 1e-3
    assert cfg.shred.grad == "skip-unet" and cfg.diip.k_min == 3
    assert cfg.metrics == ("psnr", "ssim") and cfg.guidance_scale == 2.0


def test_from_dict_accepts_nested_and_dotted_keys():
    a = RestoreConfig.from_dict({"shred": {"iters": 7}, "indi.steps": 4})
    assert a.shred.iters == 7 and a.indi.steps == 4


@pytest.mark.parametrize("override, fragment", [
    ("stepz=5", "unknown config key 'stepz'"),
    ("shred.nope=1", "unknown config key 'shred.nope'"),
    ("steps=-3", "steps"),
    ("adapt_lr=nan", "adapt_lr"),
    ("steps=abc", "expected an integer"),
    ("method=magic", "accepted: adir"),
    ("shred.grad=sometimes", "accepted: full, skip-unet"),
    ("shred.sphere=maybe", "expected true or false"),
    ("steps", "expected key=value"),
    ("=3", "non-empty key"),
    ("shred..lr=1", "non-empty key"),
    ("steps=[1, 2", "bad value for steps"),
])
def test_bad_overrides_are_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("'", ".")):
        RestoreConfig().with_overrides([override])


def test_presets():
    fast = RestoreConfig.preset("fast")
    assert fast.steps < 1000 and fast.adapt_iters < 400
    with pytest.raises(ConfigError, match="unknown preset 'turbo'; accepted: paper, fast"):
        RestoreConfig.preset("turbo")
    with pytest.raises(ConfigError, match="accepted: paper, fast"):
        preset_values(None)
    values = preset_values("fast")
    values["steps"] = 1
    assert PRESETS["fast"]["steps"] == 100  # a copy


def test_paper_preset_is_table_1_as_written():
    """ADIR Table 1, ADIR-GD: IA iter. 400, LR 1e-4, NN images 20, s = 10, 1000 diffusion
    steps; s used as in Algorithm 1 (mode "paper"), not divided by λ_max; LoRA 16/8, batch 6."""
    cfg = RestoreConfig.preset("paper")
    assert (cfg.adapt_iters, cfg.adapt_lr, cfg.k, cfg.guidance_scale, cfg.steps) == (400, 1e-4, 20, 10.0, 1000)
    assert cfg.guidance_mode == "paper"
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.adapt_batch, cfg.retrieval) == (16, 8, 6, "clip")


def test_method_names_come_from_the_registry():
    assert CHOICES["method"] == tuple(PROVIDERS) and "pinv" in CHOICES["method"]
    assert RestoreConfig().with_overrides(["method=pinv"]).method == "pinv"


def test_parse_overrides_builds_one_nested_dict():
    got = parse_overrides([" steps = 50", "adapt_lr=1e-3", "shred.lr=.5", "restore.k=3", "metrics=[psnr, ssim]",
                           "model=", "shred.sphere=true", "steps=60", "name='1e-3'"])
    assert got == {"steps": 60, "adapt_lr": 1e-3, "shred": {"lr": 0.5, "sphere": True}, "restore": {"k": 3},
                   "metrics": ["psnr", "ssim"], "model": None, "name": "1e-3"}
    assert parse_overrides([]) == {}
    with pytest.raises(ConfigError, match="sets inside 'shred', which is also given a value"):
        parse_overrides(["shred=1", "shred.lr=2"])
    with pytest.raises(ConfigError, match="gives a value to a section"):
        parse_overrides(["shred.lr=2", "shred=1"])
    assert RestoreConfig().updated(parse_overrides(["shred.iters=9"])).shred.iters == 9
