"""``adir train-prior`` / ``adir train-embedder`` from a fresh checkout: the data pipeline,
a few optimisation steps, checkpointing, resume and export (tiny settings, < 40 s)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from restore_core.bundled_photos import (
    EXTRA_TRAIN_PHOTOS,
    HELDOUT_PHOTOS,
    PRIOR_TRAIN_PHOTOS,
    TRAIN_PHOTOS,
    export_crops,
    load_photo,
    random_crops,
)


def _args(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.configure_parser(parser)
    return parser.parse_args(argv)


PRIOR_ARGV = ["--channels", "8,16", "--patch", "16", "--batch", "4", "--pool", "12",
              "--eval-every", "2", "--export-every", "3", "--warmup", "2"]
EMBEDDER_ARGV = ["--batch", "6", "--pool", "18", "--eval-every", "2", "--eval-per-photo", "2",
                 "--eval-queries", "3"]


def test_bundled_photo_split_and_crops(tmp_path):
    """Train and held-out photos are disjoint (also the prior's extra photos, which all load
    from the installed packages); crops are seeded, in range, and labelled."""
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS) and not set(PRIOR_TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    assert set(PRIOR_TRAIN_PHOTOS) == set(TRAIN_PHOTOS) | set(EXTRA_TRAIN_PHOTOS)
    assert all(min(load_photo(name).shape[-2:]) >= 64 for name in EXTRA_TRAIN_PHOTOS)
    a, names = random_crops(TRAIN_PHOTOS, 5, 24, seed=3, scales=(0.25, 1.0))
    b, _ = random_crops(TRAIN_PHOTOS, 5, 24, seed=3, scales=(0.25, 1.0))
    assert a.shape == (5, 3, 24, 24) and torch.equal(a, b)
    assert set(names) <= set(TRAIN_PHOTOS) and a.min() >= -1 and a.max() <= 1
    rows = export_crops(str(tmp_path), "heldout", 3, 16, seed=1)
    assert [r[2] in HELDOUT_PHOTOS for r in rows] == [True] * 3
    assert all((tmp_path / f"{r[0]}.png").exists() for r in rows)


def _final_weights(module, run_dir, out_dir, steps: int, argv: list[str]) -> dict:
    assert module.main(_args(module, argv + ["--run-dir", str(run_dir), "--output", str(out_dir),
                                             "--steps", str(steps)])) == 0
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("which", ["prior", "prior_synthetic", "embedder"])
def test_training_resumes_like_uninterrupted(tmp_path, which):
    """Stopping after 2 steps and rerunning to 4 gives the same weights, optimiser and step
    count as 4 uninterrupted steps (also with dead-leaves images in the pools); the exported
    model is loadable."""
    from jobs.train import embedder as train_embedder
    from jobs.train import prior as train_prior

    module, argv = {"prior": (train_prior, PRIOR_ARGV),
                    "prior_synthetic": (train_prior, PRIOR_ARGV + ["--synthetic", "0.5"]),
                    "embedder": (train_embedder, EMBEDDER_ARGV)}[which]
    key = "model" if which == "embedder" else "unet"
    straight = _final_weights(module, tmp_path / "a", tmp_path / "out_a", 4, argv)
    _final_weights(module, tmp_path / "b", tmp_path / "out_b", 2, argv)
    resumed = _final_weights(module, tmp_path / "b", tmp_path / "out_b", 4, argv)
    assert json.loads(resumed["state"])["step"] == json.loads(straight["state"])["step"] == 4
    for name, value in straight[key].items():
        assert torch.equal(value, resumed[key][name]), name
    meta = json.loads((tmp_path / "out_b" / "training.json").read_text())
    if which == "prior_synthetic":  # a share outside [0, 1) is refused before any work
        from restore_core.errors import ConfigError

        with pytest.raises(ConfigError, match="--synthetic"):
            module.main(_args(module, PRIOR_ARGV + ["--synthetic", "1", "--run-dir", str(tmp_path / "c")]))
        assert not (tmp_path / "c").exists()
    assert meta["steps"] == 4 and meta["seed"] == 0 and meta["command"]
    if which != "embedder":
        from restore_core.models.pixel_unet import load_diffusion_model

        assert meta["synthetic_fraction"] == (0.5 if which == "prior_synthetic" else 0.0)

        model = load_diffusion_model(str(tmp_path / "out_b"))
        assert model.schedule.alphas_cumprod.shape[0] == 1000
        assert meta["heldout_loss_vs_time"] and meta["heldout_loss_vs_time"][-1]["step"] == 4
    else:
        import open_clip

        weights = tmp_path / "out_b" / train_embedder.WEIGHTS_FILE
        open_clip.add_model_config(tmp_path / "out_b" / f"{train_embedder.MODEL_NAME}.json")
        model = open_clip.create_model(train_embedder.MODEL_NAME, pretrained=str(weights))
        assert torch.equal(model.state_dict()["visual.conv1.weight"], load_file(weights)["visual.conv1.weight"])
        assert set(meta["recall_at_20_heldout"]) == set(train_embedder.EVAL_TASKS)


def _spectral_slope(images: torch.Tensor) -> float:
    """The slope of the radially averaged log power spectrum against log frequency."""
    import numpy as np

    grey = images.mean(1)
    power = torch.fft.fftshift(torch.fft.fft2(grey - grey.mean((1, 2), keepdim=True)), dim=(-2, -1)).abs() ** 2
    p = power.mean(0).numpy()
    c = p.shape[0] // 2
    yy, xx = np.mgrid[:p.shape[0], :p.shape[1]]
    ring = np.hypot(yy - c, xx - c).astype(int).ravel()
    radial = np.bincount(ring, p.ravel()) / np.bincount(ring)
    k = np.arange(2, c)
    return float(np.polyfit(np.log(k), np.log(radial[k]), 1)[0])


def test_dead_leaves_have_the_statistics_of_photos():
    """Dead-leaves images are seeded, in range, made of the palette's colours (every pixel is
    one without anti-aliasing), occlude at many scales, and their power spectrum falls like
    the training photos' (slope near -2), unlike white noise (0) or a single flat disk."""
    from jobs.train.dead_leaves import dead_leaves, photo_palette
    from restore_core.errors import InputError

    palette = photo_palette(TRAIN_PHOTOS[:3], per_photo=256)
    assert palette.shape == (768, 3)
    a = dead_leaves(64, 32, palette, seed=5)
    assert a.shape == (64, 3, 32, 32) and torch.equal(a, dead_leaves(64, 32, palette, seed=5))
    assert not torch.equal(a, dead_leaves(64, 32, palette, seed=6)) and a.min() >= -1 and a.max() <= 1
    sharp = dead_leaves(8, 32, palette, seed=5, supersample=1)
    pixels = sharp.permute(0, 2, 3, 1).reshape(-1, 3)
    exact = torch.cdist(pixels, palette, compute_mode="donot_use_mm_for_euclid_dist")
    assert exact.min(1).values.max() < 1e-6  # every pixel is a palette colour
    regions = [len(torch.unique(img.flatten(1), dim=1).T) for img in sharp]
    assert min(regions) >= 10  # many leaves in every image, not one flat field
    photos, _ = random_crops(TRAIN_PHOTOS, 64, 32, seed=0)
    slope, photo_slope = _spectral_slope(a), _spectral_slope(photos)
    assert -3.2 < slope < -1.6 and abs(slope - photo_slope) < 0.8, (slope, photo_slope)
    assert _spectral_slope(torch.rand(64, 3, 32, 32)) > -0.5
    with pytest.raises(InputError):
        dead_leaves(4, 32, palette, r_min=40)


def test_supcon_loss_prefers_matching_photos():
    """The contrastive loss is lower when same-photo views embed together."""
    from jobs.train.embedder import supcon_loss

    labels = torch.tensor([0, 0, 1, 1])
    together = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]]), dim=1)
    apart = together[[0, 2, 1, 3]]
    assert supcon_loss(together, labels, 0.1) < supcon_loss(apart, labels, 0.1)


def test_prior_init_from_continues_an_exported_prior(tmp_path):
    """``--init-from`` starts a new phase from an exported prior: its weights, step count and
    held-out history carry on, the earlier phase is recorded, and ``--anneal`` needs a budget."""
    from jobs.train import prior as train_prior
    from restore_core.errors import ConfigError

    first, second = tmp_path / "first", tmp_path / "second"
    train_prior.main(_args(train_prior, PRIOR_ARGV + ["--run-dir", str(tmp_path / "a"), "--output", str(first),
                                                      "--steps", "2"]))
    argv = PRIOR_ARGV + ["--run-dir", str(tmp_path / "b"), "--output", str(second), "--steps", "4",
                         "--init-from", str(first), "--anneal"]
    with pytest.raises(ConfigError, match="--anneal needs"):
        train_prior.main(_args(train_prior, argv))
    train_prior.main(_args(train_prior, argv + ["--minutes", "10"]))
    meta = json.loads((second / "training.json").read_text())
    assert meta["steps"] == 4 and [h["step"] for h in meta["heldout_loss_vs_time"]] == [2, 4]
    assert [p["steps"] for p in meta["earlier_phases"]] == [2] and meta["anneal"]
    assert "_name_or_path" not in json.loads((second / "unet" / "config.json").read_text())
    a = load_file(first / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(second / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)
