"""Colorize as the demo ships it adds no global colour cast.

Colorize observes only the channel mean, so the output's chroma is the prior's as the
sampler draws it (``jobs.bench.colorize``). The shipped prior's Algorithm 1 and DiffPIR
samples turn these crops blue; the demo's sampler must not. The bound is the grey image
(``pinv``, zero chroma): on real crops of the bundled *training* photos, with the shipped
prior and the demo's colorize configuration (fewer steps and a smaller crop, to stay fast),
the (Cb, Cr) shift the outputs share, mean over crops of output minus ground truth, must
be under half the grey image's: Algorithm 1's blue shift fails it, DDRM passes.
"""

from __future__ import annotations

import torch

from jobs.bench.colorize import colour_crops, mean_cbcr
from jobs.demo import SAMPLER
from restore_core.config import RestoreConfig
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one


def test_demo_colorize_has_no_colour_cast():
    torch.set_num_threads(2)
    model = load_diffusion_model()
    gt, _ = colour_crops("train", 4, 32, seed=7)
    op = build_operator("colorize", (3, 32, 32))
    y = op.A(gt)
    cfg = RestoreConfig.preset("fast").with_overrides([f"sampler={SAMPLER}", "method=gd", "steps=25", "noise_sigma=0"])
    x = torch.cat([restore_one(y[i:i + 1], op, model, cfg, seed=i)[0] for i in range(len(y))])
    cast = (mean_cbcr(x) - mean_cbcr(gt)).mean(0).norm()  # the shift all crops share
    grey = mean_cbcr(gt).mean(0).norm()  # the same for the grey image A⁺y
    assert cast < grey / 2, (float(cast), float(grey))
