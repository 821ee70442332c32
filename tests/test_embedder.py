"""index_builder.embedder: open_clip towers loaded through the real pretrained=path code path."""

import numpy as np
import pytest
import torch

from helpers import save_tiny_embedder
from index_builder.embedder import load_embedder, normalize_spec
from restore_core.bundled_photos import load_photo
from restore_core.errors import InputError, ModelLoadError


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
    return save_tiny_embedder(str(tmp_path_factory.mktemp("emb")), seed=0)


@pytest.mark.parametrize("as_folder", [False, True])
def test_embeddings_are_unit_float32_and_reproducible(tiny_spec, as_folder):
    spec = str(tiny_spec["pretrained"]).rsplit("/", 1)[0] if as_folder else tiny_spec
    if as_folder:
        assert normalize_spec(spec)["pretrained"] == tiny_spec["pretrained"]
    emb = load_embedder(spec, device="cpu", batch_size=2)
    photo = load_photo("chelsea")
    x = torch.cat([photo[..., :64, :64], photo[..., 100:164, 100:164], photo[..., 50:114, 0:64]])
    z = emb.embed(x)
    assert z.dtype == np.float32 and z.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    # batching does not change results; a list of differently sized images works; grey -> RGB
    np.testing.assert_allclose(load_embedder(tiny_spec, device="cpu", batch_size=64).embed(x), z, atol=1e-5)
    z_small = emb.embed([x[:1, :, ::4, ::4], x[1:2, :1]])
    assert z_small.shape == (2, 32)
    assert not np.allclose(z[0], z[1])


def test_bad_embedder_specs(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_embedder({"model": "tiny-test-vit", "pretrained": str(tmp_path / "missing.safetensors")})
    with pytest.raises(InputError, match="accepts only"):
        normalize_spec({"model": "x", "weights": "y"})
    with pytest.raises(ModelLoadError, match="embedder folder"):
        normalize_spec(str(tmp_path))
