"""Progress inside a row (issue 12): stage/step reports, resumable adaptation, the driver's ETA.

* A row's loops report ``adapting`` i/N then ``sampling`` j/M (or SHRED's ``fitting``),
  in order, from 0 to the totals its method plans (``work``), samples × steps included.
* An adapter saved by one run is loaded by the next: no training, the same image.
* ``pool.Progress`` computes the ETA from the work left (synthetic reports), and
  ``adir restore`` prints live in-flight lines and leaves no adapter behind.

Tiny untrained priors and pipelines (``helpers``, ``helpers_sd``) on real photo crops.
"""

from __future__ import annotations

import os

import pytest
import torch

from jobs.restore.pool import Progress
from restore_core import progress
from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.methods import get_method
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one
from tests.helpers import make_tiny_prior
from tests.jobs_fixtures import (  # noqa: F401
    manifest_rows,
    photo_dir,
    ray_cluster,
    run_restore,
    write_manifest_file,
)

SIZE = 16
FAST = {"adapt_iters": 3, "adapt_batch": 2, "lora_rank": 2, "lora_alpha": 2, "adapt_lr": 1e-2, "steps": 4}


class Recorder(progress.RowProgress):
    """A row tracker that also keeps every report, as the row sees it (stage, step, total)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reports: list[tuple[str, int, int]] = []

    def update(self, stage, step, total):
        super().update(stage, step, total)
        s = self.snapshot()["stages"][stage]
        self.reports.append((stage, s["step"], s["total"]))


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), sample_size=SIZE))


@pytest.fixture(scope="module")
def sd_models(tmp_path_factory):
    from restore_core.models.stable_diffusion import load_sd_model
    from tests.helpers_sd import save_tiny_inpainter, save_tiny_upscaler

    root = tmp_path_factory.mktemp("sd")
    return {"upscale": load_sd_model(save_tiny_upscaler(str(root / "up")), "upscale"),
            "inpaint": load_sd_model(save_tiny_inpainter(str(root / "in")), "inpaint")}


def _case(method: str, prior, sd_models, **changes):
    """(y, operator, model, cfg, neighbours) of a tiny sr4 / edit problem for ``method``."""
    if method in ("adir_sd", "adir_edit"):
        side, model = 64, sd_models["upscale" if method == "adir_sd" else "inpaint"]
        cfg = RestoreConfig().updated({"method": method, **{k: v for k, v in FAST.items() if k != "steps"},
                                       "sd": {"steps": 3, "prompt": "a cat"}, **changes})
    else:
        side, model = SIZE, prior
        cfg = RestoreConfig().updated({"method": method, **FAST, **changes})
    x = random_crops(HELDOUT_PHOTOS[:1], 1, side, seed=3)[0]
    if method == "adir_edit":
        mask = torch.ones(1, 1, side, side)
        mask[..., 16:40, 20:52] = 0
        operator = build_operator("edit", (3, side, side), mask=mask)
    else:
        operator = build_operator("sr4", (3, side, side))
    neighbours = random_crops(TRAIN_PHOTOS, 2, side, seed=5)[0]
    return operator.A(x), operator, model, cfg, neighbours


@pytest.mark.parametrize("method, changes", [
    ("ia_y", {"samples": 2}),                      # Algorithm 1, two draws: sampling counts 2 × 4 steps
    ("ia_y", {"sampler": "ddrm"}),                 # a deepinv peer: its denoiser calls
    ("gd", {"sampler": "dps"}),                    # DPS skips its last call; the stage still ends at M
    ("shred", {"shred": {"iters": 5, "tau": 0.0}}),  # no stop rule: all 5 fitting iterations
    ("diip", {"diip": {"iters": 5, "rule": "laplacian", "k_min": 10}}),  # the rule cannot fire before 5
    ("adir_sd", {}),                               # the SD upscaler's step callback
    ("adir_edit", {}),                             # the SD inpainter's callback_on_step_end
], ids=["alg1-2-samples", "ddrm", "dps", "shred", "diip", "adir_sd", "adir_edit"])
def test_a_row_reports_each_stage_in_order_up_to_its_planned_total(method, changes, prior, sd_models):
    y, operator, model, cfg, neighbours = _case(method, prior, sd_models, **changes)
    plan = get_method(method).work(cfg)
    row = Recorder("r")
    with progress.tracking(row):
        restore_one(y, operator, model, cfg, neighbours=neighbours, seed=0)
    assert list(dict.fromkeys(stage for stage, _, _ in row.reports)) == list(plan)
    for stage, total in plan.items():
        steps = [step for s, step, _ in row.reports if s == stage]
        assert {t for s, _, t in row.reports if s == stage} == {total}
        assert steps[0] == 0 and steps[-1] == total and steps == sorted(steps) and len(set(steps)) > 2, steps
    assert progress.current() is None, "the tracked row ends with its context"


@pytest.mark.parametrize("method", ["ia_y", "adir_sd", "adir_edit"])
def test_a_saved_adapter_is_loaded_instead_of_training_and_gives_the_same_image(method, prior, sd_models,
                                                                               tmp_path):
    y, operator, model, cfg, neighbours = _case(method, prior, sd_models)
    uri = str(tmp_path / "adapters" / "r.safetensors")
    runs = []
    for _ in range(2):
        row = Recorder("r", adapter_uri=uri)
        with progress.tracking(row):
            x, info = restore_one(y, operator, model, cfg, neighbours=neighbours, seed=0)
        runs.append((x, info, row))
    (first, first_info, first_row), (second, second_info, second_row) = runs
    assert first_row.adapter == "saved" and second_row.adapter == "resumed"
    assert "adapting" in first_row.snapshot()["stages"] and "adapting" not in second_row.snapshot()["stages"]
    assert second_info["iterations"] == first_info["iterations"] == cfg.adapt_iters
    assert torch.equal(first, second)
    baseline = {"ia_y": "gd", "adir_sd": "sd", "adir_edit": "sd_edit"}[method]  # the same noise, no adapter
    unadapted, _ = restore_one(y, operator, model, cfg, method=baseline, neighbours=neighbours, seed=0)
    assert not torch.equal(first, unadapted), "the loaded adapter must be in use"
    assert os.path.exists(uri)


def _snapshot(image_id: str, stage: str | None = None, adapter: str | None = None, **stages) -> dict:
    """A ``RowProgress.snapshot``; stages as name=(step, total, seconds)."""
    return {"image_id": image_id, "stage": stage, "adapter": adapter,
            "stages": {k: {"step": a, "total": b, "seconds": c} for k, (a, b, c) in stages.items()}}


PLAN = {"adapting": 40, "sampling": 100}
ROW_A = _snapshot("a", "sampling", adapting=(40, 40, 40.0), sampling=(100, 100, 50.0))  # 1 s/it, 0.5 s/step


@pytest.mark.parametrize("live_b, workers, eta", [
    # b: 30 iterations left at its own 2 s/it + 100 steps at 0.5 s = 110 s; each of the 2 waiting
    # rows: 40 × 1.2 s/it (a's and b's iterations) + 100 × 0.5 s + 10 s outside the stages = 108 s
    (_snapshot("b", "adapting", adapting=(10, 40, 20.0)), 1, 110 + 2 * 108),
    (_snapshot("b", "adapting", adapting=(10, 40, 20.0)), 2, (110 + 2 * 108) / 2),
    # b resumed its adapter: only its 80 steps left (0.5 s); waiting rows 40 + 50 + 10 = 100 s
    (_snapshot("b", "sampling", "resumed", sampling=(20, 100, 10.0)), 1, 40 + 2 * 100),
    # b has not reported yet: its plan at the measured rates, 40 × 1 s + 100 × 0.5 s = 90 s
    (None, 1, 90 + 2 * 100),
], ids=["one-worker", "two-workers", "resumed-adapter", "not-reported"])
def test_eta_is_the_work_left_not_the_rows_left(live_b, workers, eta):
    from jobs.restore import pool

    p = Progress(total=4, output="out", workers=workers)
    p.started("a", "adir", PLAN)
    assert p.eta_s() is None and "a starting; ETA ? (measuring)" in p.line(), "no rate measured yet"
    p.finished("a", ROW_A, seconds_total=100.0)
    p.update(True)
    p.started("b", "adir", PLAN)
    if live_b is not None:
        p.live(live_b)
    # a rows-left ETA would say 3 rows × a's 100 s, whatever b's progress
    assert p.eta_s() == pytest.approx(eta)
    line = p.line()
    assert line.startswith("1/4 rows done (0 failed)") and f"ETA {pool.duration(eta)} by work left" in line
    if live_b is None:
        assert "in flight: b starting" in line
    else:
        stage = live_b["stage"]
        assert f"in flight: b {stage} {live_b['stages'][stage]['step']}/" in line
        assert ("(adapter resumed)" in line) == (live_b["adapter"] == "resumed")


def test_restore_shows_rows_in_flight_and_leaves_no_adapter(ray_cluster, photo_dir, tmp_path, capsys,  # noqa: F811
                                                            monkeypatch):
    from jobs.restore import pool

    for name, value in (("POLL_S", 0.1), ("PROGRESS_POLL_S", 0.1), ("PROGRESS_EVERY_S", 0.2)):
        monkeypatch.setattr(pool, name, value)
    prior = make_tiny_prior(str(tmp_path / "prior"), sample_size=32)
    rows = manifest_rows(photo_dir, "sr4", "ia_y", n=1)
    manifest = write_manifest_file(rows, tmp_path / "m.parquet")
    out = tmp_path / "out"
    code, stdout, stderr = run_restore(capsys, manifest, str(out), "--workers", "1", prior=prior, sets=[
        "steps=100", "adapt_iters=10", "adapt_batch=2", "lora_rank=2", "lora_alpha=2", "metrics=[psnr]",
        "cpus_per_worker=1"])
    assert code == 0, stdout + stderr
    live = [line for line in stdout.splitlines() if "in flight: ia_y-sr4-photo" in line]
    assert any(" adapting " in line and "/10;" in line for line in live), stdout
    assert any(" sampling " in line and "/100;" in line and "by work left" in line for line in live), stdout
    assert not [f for _, _, files in os.walk(out / "adapters") for f in files], "committed rows keep no adapter"
