"""The models shipped in the repo load offline through the real loading code and are
trained: the prior denoises held-out 64² crops far better than ε̂ = 0, and the embedder
retrieves crops of a degraded query's source photo far above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from restore_core.bundled_photos import ALL_PHOTOS, HELDOUT_PHOTOS, random_crops

REPO = Path(__file__).resolve().parent.parent
PRIOR_DIR = REPO / "models" / "prior"
EMBEDDER_DIR = REPO / "models" / "embedder"


def test_shipped_prior_loads_and_denoises():
    """``load_diffusion_model()`` (no spec) is the shipped prior; its ℓ_simple (ADIR eq. 6) on
    held-out 64² crops is well below 1, the loss of predicting ε̂ = 0."""
    from jobs.train.prior import l_simple_batch
    from restore_core.models.pixel_unet import DEFAULT_PRIOR_DIR, load_diffusion_model

    assert Path(DEFAULT_PRIOR_DIR) == PRIOR_DIR
    model = load_diffusion_model()
    assert model.in_channels == 3 and not model.learned_variance
    assert model.schedule.alphas_cumprod.shape[0] == 1000
    meta = json.loads((PRIOR_DIR / "training.json").read_text())
    assert meta["steps"] > 0 and meta["heldout_loss_vs_time"]
    x0, _ = random_crops(HELDOUT_PHOTOS, 4, 64, seed=5)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([50, 200, 500, 900])
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        loss = float(l_simple_batch(model.unet, model.schedule.alphas_cumprod, x0, t, noise))
    assert loss < 0.3, loss


def _open_clip_model(how: str):
    import open_clip

    from jobs.train.embedder import MODEL_NAME, WEIGHTS_FILE

    if how == "name":
        open_clip.add_model_config(EMBEDDER_DIR / f"{MODEL_NAME}.json")
        model, _, preprocess = open_clip.create_model_and_transforms(
            MODEL_NAME, pretrained=str(EMBEDDER_DIR / WEIGHTS_FILE))
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{EMBEDDER_DIR}")
    assert preprocess is not None
    return model.eval()


@pytest.mark.parametrize("how", ["name", "local-dir"])
def test_shipped_embedder_loads_through_open_clip(how):
    """Both open_clip loading paths give the shipped weights, and degraded held-out queries
    retrieve crops of their own source photo far above chance (1/15)."""
    from safetensors.torch import load_file

    from jobs.train.embedder import WEIGHTS_FILE, degraded_recall

    model = _open_clip_model(how)
    shipped = load_file(EMBEDDER_DIR / WEIGHTS_FILE)
    assert all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
    recall = degraded_recall(model, per_photo=8, n_queries=9, tasks=("sr4",))
    assert recall["sr4"] > 3 / len(ALL_PHOTOS), recall


def test_shipped_embedder_through_index_builder():
    """The index's default embedder is the shipped one (``index_builder.embedder``)."""
    embedder = pytest.importorskip("index_builder.embedder")
    emb = embedder.load_embedder(embedder.DEFAULT_EMBEDDER)
    x, _ = random_crops(HELDOUT_PHOTOS, 2, 64, seed=1)
    z = emb.embed(x)
    assert z.shape[0] == 2 and abs(float((z ** 2).sum(1).mean()) - 1) < 1e-4
    # the spec an index records names the shipped files relative to the checkout, so the
    # index loads wherever the repo lives; any other folder keeps its absolute path
    spec = embedder.normalize_spec(str(EMBEDDER_DIR))
    assert spec == embedder.normalize_spec(None)
    assert all(spec[k].startswith("shipped:embedder/") for k in ("pretrained", "config"))
