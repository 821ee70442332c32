"""DIIP (Diffusion Image Prior): the self-supervised stopping rules, and what they must not do.

The rules on a hand-made loss curve (no model): the slope rule waits for k_min, the noise
rule fires at the noise variance. Then through ``restore_one`` with a tiny untrained prior
at 16²: its DDIM output starts far from any image, so the loss falls fast at first and
flattens later; ``slope_eps`` is raised to 0.1 so the flattening is reached within a
40-iteration cap (the default 0.01 needs a trained prior). Last, the shipped prior on a
held-out photo: DIIP beats its input on noise and never falls below it on JPEG."""

import pytest
import torch
from helpers import make_tiny_prior

from jobs.bench.inversion import psnr
from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.methods.diip import StoppingRules, keep_or_input, laplacian_variance
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one

SIZE = 16
CAP = 40
GAIN_DENOISE_DB = 5.0
CHEAP = ["diip.skip=250", "diip.lr=0.05", f"diip.iters={CAP}", "diip.slope_eps=0.1", "diip.k_min=5",
         "diip.patience=3"]


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), SIZE))


def _feed(rules, losses, k_min=5, noise_var=0.0):
    monitor = StoppingRules(rules, slope_eps=0.01, window=2, k_min=k_min, patience=3, noise_var=noise_var)
    x = torch.zeros(1, 3, 8, 8)
    for k, loss in enumerate(losses, start=1):
        reason = monitor(k, x, torch.tensor([loss]))
        if reason:
            return reason, k
    return None, len(losses)


def test_slope_rule_waits_for_k_min():
    """A bouncing start (the loss doubles at k = 3) must not stop before k_min; a plateau after it does."""
    losses = [3.0, 1.0, 2.0, 0.5, 0.3, 0.2, 0.15, 0.149, 0.1489, 0.1488]
    assert _feed(("slope",), losses, k_min=1) == ("slope", 3)
    assert _feed(("slope",), losses, k_min=5) == ("slope", 9)


def test_noise_rule_fires_at_the_noise_variance():
    losses = [3.0, 1.0, 0.5, 0.2, 0.09, 0.05]
    assert _feed(("slope", "noise"), losses, k_min=10, noise_var=0.1) == ("noise", 5)
    assert _feed(("slope", "noise"), losses, k_min=10, noise_var=0.0) == (None, 6)


def test_keep_or_input_returns_y_for_an_output_worse_than_y():
    """A good estimate of a held-out crop is kept; an output with twice the input's noise
    (what DIIP returned before its rules were fixed) is estimated worse than y and replaced."""
    x, _ = random_crops(HELDOUT_PHOTOS, 2, 32, seed=2)
    sigma = 2 * 25 / 255
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    garbage = x + 2 * sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    out, kept = keep_or_input(torch.cat([x[:1], garbage[1:]]), y, sigma)
    assert kept.tolist() == [True, False]
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], y[1])


def test_keep_or_input_returns_y_where_the_output_strays_from_the_denoised_start():
    """x kept while ‖x − ref‖² ≤ REPRESENT_FRACTION·‖ref − y‖²: a regeneration error of a
    quarter of the denoiser's correction is kept, one as large as the correction is not."""
    y = torch.zeros(2, 3, 8, 8)
    ref = torch.full_like(y, 0.2)  # the denoiser moved every pixel by 0.2
    x = ref + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1)
    out, kept = keep_or_input(x, y, 0.0, ref)
    assert kept.tolist() == [True, False]
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], y[1])


@pytest.mark.parametrize("task,sigma,rules", [("denoise", 25, ["slope", "noise"]),
                                              ("deblur_gauss", 0, ["laplacian"])])
def test_diip_auto_rule_fires_before_cap(prior, task, sigma, rules):
    x, _ = random_crops(HELDOUT_PHOTOS, 1, SIZE, seed=0)
    op = build_operator(task, (3, SIZE, SIZE))
    y = op.degrade(x, sigma, torch.Generator().manual_seed(0))
    x_hat, info = restore_one(y, op, prior, RestoreConfig().with_overrides(CHEAP), method="diip", seed=1)
    assert info["rules"] == rules
    assert info["stop_reason"] in rules and info["iterations"] < CAP
    assert 1 <= info["stop_iteration"] <= info["iterations"]
    assert x_hat.shape == x.shape and float(x_hat.abs().max()) <= 1


def test_diip_blind_runs_both_rules_and_upsamples_sr(prior):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(random_crops(HELDOUT_PHOTOS, 1, SIZE, seed=1)[0])
    x_hat, info = restore_one(y, op, prior, RestoreConfig().with_overrides(CHEAP + ["diip.rule=both"]),
                              method="diip", seed=0)
    assert x_hat.shape == (1, 3, SIZE, SIZE) and info["rules"] == ["slope", "noise", "laplacian"]
    assert info["stop_reason"] in info["rules"] and info["iterations"] < CAP


def test_laplacian_variance_orders_sharp_above_blurred():
    x, _ = random_crops(HELDOUT_PHOTOS, 1, 32, seed=0)
    blurred = build_operator("deblur_gauss", (3, 32, 32)).A(x)
    assert float(laplacian_variance(x)) > 2 * float(laplacian_variance(blurred))


@pytest.mark.parametrize("task,sigma,gain_db", [("denoise", 25, GAIN_DENOISE_DB), ("jpeg", 0, -0.1)])
def test_diip_beats_its_input_on_a_heldout_photo(task, sigma, gain_db):
    """Blind DIIP with the shipped prior on a held-out 32² crop (σ estimated from y): on
    σ 25 noise it gains at least ``GAIN_DENOISE_DB`` over y (returning y, the old
    behaviour, fails); on JPEG q 15 it must not fall below y (an inverted start that g
    cannot regenerate closely, returned as is, costs 1.6 dB on training crops)."""
    x, _ = random_crops(HELDOUT_PHOTOS, 1, 32, seed=0)
    op = build_operator(task, (3, 32, 32))
    y = op.degrade(x, sigma, torch.Generator().manual_seed(1))
    x_hat, info = restore_one(y, op, load_diffusion_model(), RestoreConfig(), method="diip", seed=0)
    got = float(psnr(x_hat, x)) - float(psnr(y, x))
    print(f"diip on {task}: {got:+.2f} dB over y, stop {info['stop_reason']} at {info['stop_iteration']}")
    assert got >= gain_db
