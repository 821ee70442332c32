"""One interface test over every method in the registry (issue 6).

Parametrised over ``PROVIDERS``, so a method joins the test as soon as its module exists;
names whose module is not written yet are skipped with that reason. Each method runs
through ``restore_one`` on its first accepted task (``Method.tasks[0]``) with tiny
settings: output shape and range, determinism by seed, and the ``info`` fields.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import make_tiny_prior
from restore_core.config import RestoreConfig
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.methods import INFO_KEYS, PROVIDERS, get_method
from restore_core.operators import build_operator
from restore_core.restore import restore_one

SIZE = 32
FAST = ["steps=8", "adapt_iters=2", "adapt_batch=2", "shred.iters=2", "shred.skip=250", "diip.iters=3",
        "diip.skip=250", "diip.k_min=1", "indi.steps=2"]


def _tiny_indi(tmp_path, task: str) -> list[str]:
    from restore_core.models.indi_model import IndiModel, build_indi_unet, save_indi_model

    path = str(tmp_path / "indi")
    save_indi_model(IndiModel(unet=build_indi_unet((16, 16), sample_size=SIZE), task=task), path)
    return [f"indi.model={path}"]


def _tiny_sd(tmp_path, task: str) -> list[str]:
    from helpers_sd import save_tiny_inpainter, save_tiny_upscaler

    if task == "edit":
        return [f"sd_inpaint_model={save_tiny_inpainter(str(tmp_path / 'sd'))}", "sd.prompt=a cat", "sd.steps=4"]
    return [f"sd_model={save_tiny_upscaler(str(tmp_path / 'sd'))}", "sd.steps=4"]


SETUP = {"indi": _tiny_indi, **dict.fromkeys(("sd", "adir_sd", "sd_edit", "adir_edit"), _tiny_sd)}
# methods that need more than the diffusion prior


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), sample_size=SIZE))


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_method_interface(name, model, tmp_path):
    if importlib.util.find_spec(PROVIDERS[name]) is None:
        pytest.skip(f"{PROVIDERS[name]} is not written yet")
    method = get_method(name)
    assert method.name == name and method.tasks
    task = method.tasks[0]
    overrides = FAST + SETUP.get(name, lambda *_: [])(tmp_path, task)
    cfg = RestoreConfig().with_overrides(overrides)
    if getattr(method, "model_kind", ""):  # Stable Diffusion methods run on their own pipeline
        from restore_core.models.stable_diffusion import config_spec, load_sd_model

        model = load_sd_model(config_spec(cfg, method.model_kind), method.model_kind)
    op = build_operator(task, (3, SIZE, SIZE))
    u = torch.linspace(-0.7, 0.7, SIZE)
    x = torch.stack([(u[None, :] * u[:, None] + 0.2 * torch.sin(5 * u)[None, :]).expand(3, SIZE, SIZE)])
    y = op.degrade(x, 5.0, torch.Generator().manual_seed(0))
    neighbours = torch.cat([x, x.flip(-1)]) if method.uses_neighbours else None

    runs = [restore_one(y, op, model, cfg, method=name, neighbours=neighbours, seed=seed) for seed in (7, 7)]
    (x1, info), (x2, _) = runs
    assert x1.shape == (1, 3, SIZE, SIZE) and x1.dtype == torch.float32
    assert torch.isfinite(x1).all() and x1.min() >= -1 and x1.max() <= 1
    assert torch.equal(x1, x2), "same seed must give the same output"
    for key in INFO_KEYS + ("method", "seed", "seconds_total"):
        assert key in info, f"info lacks {key!r}"
    assert info["method"] == name and isinstance(info["warnings"], list)
    assert isinstance(info["steps"], int) and isinstance(info["iterations"], int)
    assert isinstance(info["stop_reason"], str) and info["stop_reason"]
    assert all(info[k] >= 0 for k in ("seconds_adapt", "seconds_sample", "seconds_total"))
