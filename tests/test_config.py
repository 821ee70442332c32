"""RestoreConfig: defaults from ADIR Table 1, validated overrides, unknown keys refused."""

import pytest

from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError


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
])
def test_bad_overrides_are_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("'", ".")):
        RestoreConfig().with_overrides([override])


def test_presets():
    assert RestoreConfig.preset("paper").steps == 1000
    fast = RestoreConfig.preset("fast")
    assert fast.steps < 1000 and fast.adapt_iters < 400
    with pytest.raises(ConfigError, match="accepted: paper, fast"):
        RestoreConfig.preset("turbo")
