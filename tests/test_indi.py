"""InDI ("Inversion by Direct Iteration"): training lowers the loss, N = 1 is one regression step (eq. 5 with
δ = t = 1) for every sampler, p(t) choices, and a model is refused on another task."""

import pytest
import torch
from helpers import make_tiny_prior

from jobs.train.indi import TrainSettings, sample_t, train_indi
from restore_core.config import RestoreConfig
from restore_core.errors import MethodError
from restore_core.models.indi_model import (
    IndiModel,
    build_indi_unet,
    load_indi_model,
    save_indi_model,
)
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one

SIZE = 16


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), SIZE))


@pytest.fixture(scope="module")
def jpeg_model(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("indi"))
    save_indi_model(IndiModel(unet=build_indi_unet((16, 16)), task="jpeg:q=15", eps=0.05), path)
    return path


def test_training_a_few_steps_lowers_heldout_loss():
    settings = TrainSettings(task="jpeg:q=15", steps=12, batch=4, patch=SIZE, lr=2e-3, ema_decay=0.5,
                             channels=(16, 16), pool=48, eval_every=12)
    model, stats = train_indi(settings)
    assert stats["steps"] == 12 and len(stats["eval_loss"]) == 1
    assert stats["eval_loss"][-1] < 0.8 * stats["eval_loss_initial"]
    assert model.task == "jpeg:q=15" and model.eps == settings.eps


@pytest.mark.parametrize("sampler", ["indi", "naive", "cold"])
def test_one_step_equals_direct_regression(prior, jpeg_model, sampler):
    op = build_operator("jpeg", (3, SIZE, SIZE))
    y = op.A(torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1)
    cfg = RestoreConfig().with_overrides([f"indi.model={jpeg_model}", "indi.steps=1", f"indi.sampler={sampler}"])
    x_hat, info = restore_one(y, op, prior, cfg, method="indi", seed=4)
    net = load_indi_model(jpeg_model)
    # x₁ = y + ε·n with n the generator's first draw; x₀ = F(x₁, 1)
    x1 = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = net(x1, 1.0).clamp(-1, 1)
    assert torch.allclose(x_hat, expected, atol=1e-5)
    assert info["steps"] == 1 and info["stop_reason"] == "steps"


def test_more_steps_differ_and_are_deterministic(prior, jpeg_model):
    op = build_operator("jpeg", (3, SIZE, SIZE))
    y = op.A(torch.rand((1, 3, SIZE, SIZE)) * 2 - 1)
    cfg = RestoreConfig().with_overrides([f"indi.model={jpeg_model}", "indi.steps=4", "indi.noise_schedule=inv_sqrt"])
    a, _ = restore_one(y, op, prior, cfg, method="indi", seed=1)
    b, _ = restore_one(y, op, prior, cfg, method="indi", seed=1)
    one, _ = restore_one(y, op, prior, cfg.with_overrides(["indi.steps=1"]), method="indi", seed=1)
    assert torch.equal(a, b) and not torch.allclose(a, one)


@pytest.mark.parametrize("task", ["jpeg:q=30", "deblur_box5"])
def test_model_for_another_task_is_refused(prior, jpeg_model, task):
    op = build_operator(task, (3, SIZE, SIZE))
    y = op.A(torch.zeros((1, 3, SIZE, SIZE)))
    with pytest.raises(MethodError, match="trained for task"):
        restore_one(y, op, prior, RestoreConfig().with_overrides([f"indi.model={jpeg_model}"]), method="indi")


def test_p_t_choices():
    g = torch.Generator().manual_seed(0)
    draws = {k: sample_t(k, 4000, g) for k in ("linear_0", "linear_0.5", "bias_t1", "bias_t0", "bias_t0_t1")}
    assert all(float(t.min()) >= 0 and float(t.max()) <= 1 for t in draws.values())
    assert float(draws["bias_t1"].mean()) > 0.6 and float(draws["bias_t0"].mean()) < 0.4
    assert 0.4 < float((draws["linear_0.5"] == 1).float().mean()) < 0.6
    assert abs(float(draws["linear_0"].mean()) - 0.5) < 0.03


def test_indi_reports_its_sampling_steps_up_to_its_planned_total(prior, jpeg_model):
    from restore_core import progress
    from restore_core.methods import get_method
    from tests.test_progress import Recorder

    op = build_operator("jpeg", (3, SIZE, SIZE))
    y = op.A(torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1)
    cfg = RestoreConfig().with_overrides([f"indi.model={jpeg_model}", "indi.steps=3", "method=indi"])
    row = Recorder("r")
    with progress.tracking(row):
        restore_one(y, op, prior, cfg, seed=4)
    assert get_method("indi").work(cfg) == {"sampling": 3}
    assert row.reports == [("sampling", i, 3) for i in range(4)]
