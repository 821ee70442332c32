"""Stable Diffusion rows through the job's row path (``jobs.restore.row.restore_row``).

Tiny random pipelines (``helpers_sd``) and a tiny open_clip model with a text tower
(``test_query_index.save_text_clip``) over a corpus of bundled training-photo crops. What
is checked: the manifest's ``prompt`` / ``mask_uri`` columns reach the method, ``adir_edit``
retrieves its neighbours by the prompt's text embedding, the written PNG equals the input
outside the mask, ``adir_sd`` writes a 4x image; and the refusals (an edit row without a
mask, without a prompt, or with a mask of another size) come before any model work.
Restoration quality needs the real weights (see ``test_stable_diffusion``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_tiny_prior
from helpers_sd import save_tiny_inpainter, save_tiny_upscaler
from test_query_index import PROMPTS, save_text_clip, write_shard

from index_builder.embedder import load_embedder
from jobs.build_index import run_from_embeddings
from jobs.restore.job_config import build_job_config
from jobs.restore.manifest import validate_rows
from jobs.restore.row import image_path, load_context, restore_row
from restore_core import images
from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
from restore_core.errors import InputError

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, ctx): a job on the tiny pipelines with a text-capable index of 8 photo crops;
    rows p0..p3 carry the text embeddings of PROMPTS, o0..o3 random unit vectors."""
    root = tmp_path_factory.mktemp("sdrows")
    spec = save_text_clip(root / "clip")
    emb = load_embedder(spec, device="cpu")
    crops = random_crops(TRAIN_PHOTOS, 8, SIZE, seed=2)[0]
    (root / "corpus").mkdir()
    for i, crop in enumerate(crops):
        images.write_png(crop[None], str(root / "corpus" / f"c{i}.png"))
    others = np.random.default_rng(0).standard_normal((4, emb.dim)).astype(np.float32)
    vectors = np.concatenate([emb.embed_text(PROMPTS), others / np.linalg.norm(others, axis=1, keepdims=True)])
    ids = [f"p{i}" for i in range(4)] + [f"o{i}" for i in range(4)]
    (root / "emb").mkdir()
    write_shard(root / "emb" / "part-00000.parquet", vectors, ids)
    _point_uris_at(root / "emb" / "part-00000.parquet", [f"file://{root}/corpus/c{i}.png" for i in range(8)])
    run_from_embeddings(str(root / "emb"), str(root / "index"), spec, kind="flat", workers=0)

    photo = random_crops(HELDOUT_PHOTOS[:1], 1, SIZE, seed=3)[0]
    images.write_png(photo, str(root / "input.png"))
    fill = torch.zeros(1, 3, SIZE, SIZE)
    fill[..., 16:40, 20:52] = 1
    images.write_png(fill * 2 - 1, str(root / "mask.png"))
    images.write_png(torch.ones(1, 3, 32, 32), str(root / "small_mask.png"))
    images.write_png(photo[..., ::4, ::4].contiguous(), str(root / "low.png"))
    job = build_job_config(overrides=[
        f"model={make_tiny_prior(str(root / 'prior'))}", f"index={root / 'index'}", "device=cpu",
        f"sd_model={save_tiny_upscaler(str(root / 'up'))}", f"sd_inpaint_model={save_tiny_inpainter(str(root / 'in'))}",
        "adapt_iters=2", "adapt_batch=2", "sd.steps=2", "k=2", "metrics=[psnr]"])
    return root, load_context(job)


def _point_uris_at(path, uris):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(uris)), path)


def _row(root, **columns):
    base = {"image_id": "r", "input_uri": str(root / "input.png"), "task": "edit", "method": "adir_edit",
            "prompt": PROMPTS[1], "mask_uri": str(root / "mask.png")}
    return validate_rows(pd.DataFrame([base | columns]))[0]


def test_adir_edit_row_retrieves_by_text_and_keeps_the_unmasked_pixels(setup):
    root, ctx = setup
    record = restore_row(_row(root), ctx, str(root / "out"))
    assert record["status"] == "ok", record["error"]
    assert record["neighbour_ids"][0] == "p1", "the prompt's own text embedding is the nearest row"
    assert record["iterations"] == 2
    out = images.read_image(str(root / "out" / image_path("restored", "r")))
    given = images.read_image(str(root / "input.png"))
    keep = images.read_image(str(root / "mask.png")) < 0
    assert torch.equal(out[keep], given[keep]) and not torch.equal(out[~keep], given[~keep])


def test_adir_sd_row_writes_a_4x_image(setup):
    root, ctx = setup
    record = restore_row(_row(root, image_id="s", input_uri=str(root / "low.png"), task="sr4", method="adir_sd",
                              prompt=None, mask_uri=None), ctx, str(root / "out"))
    assert record["status"] == "ok", record["error"]
    assert len(record["neighbour_ids"]) == 2 and record["iterations"] == 2
    assert images.read_image(str(root / "out" / image_path("restored", "s"))).shape == (1, 3, SIZE, SIZE)


def test_an_edit_row_without_a_mask_is_refused_by_the_manifest(setup):
    root, _ = setup
    with pytest.raises(InputError, match="mask_uri"):
        _row(root, mask_uri=None)


@pytest.mark.parametrize("columns, message", [
    ({"prompt": None}, "needs a prompt"),
    ({"mask_uri": "small_mask.png"}, "is 32x32 but the input is 64x64"),
])
def test_bad_edit_rows_fail_before_model_work(setup, columns, message):
    root, ctx = setup
    if "mask_uri" in columns:
        columns = {"mask_uri": str(root / columns["mask_uri"])}
    calls, loaded = [], set(ctx.sd_models)  # the row path's per-worker cache of SD pipelines
    hooks = [m.unet.register_forward_pre_hook(lambda *a: calls.append(1)) for m in ctx.sd_models.values()]
    try:
        record = restore_row(_row(root, image_id="bad", **columns), ctx, str(root / "out"))
    finally:
        for h in hooks:
            h.remove()
    assert record["status"] == "failed" and message in record["error"]
    assert not calls and set(ctx.sd_models) == loaded, "no pipeline ran or was loaded for the bad row"
