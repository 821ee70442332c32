"""jobs.restore.row: the row's own settings reach the method (row_config, the preflight checks
rows rely on), and a row interrupted after its adaptation resumes from its saved adapter."""

import os

import pandas as pd
import pytest

from jobs.restore.job_config import build_job_config
from jobs.restore.row import row_config


@pytest.mark.parametrize("degrade, row_sigma, job_sets, expected", [
    (True, 10.0, [], 10.0),                    # benchmark row: the job made the noise, σ is known
    (True, 0.0, ["noise_sigma=5"], 0.0),       # ... and it wins over a job-wide guess
    (False, 25.0, [], 25.0),                   # production row stating its σ
    (False, 0.0, [], -1.0),                    # production row, σ unstated: estimated from y
    (False, 25.0, ["noise_sigma=5"], 5.0),     # the job's explicit σ is kept for production rows
])
def test_row_noise_sigma_reaches_the_sampler(degrade, row_sigma, job_sets, expected):
    job = build_job_config(None, ["method=gd", *job_sets], workers=1)
    row = {"method": "gd", "degrade": degrade, "noise_sigma": row_sigma, "k": None, "steps": 7}
    cfg = row_config(row, job)
    assert cfg.noise_sigma == expected
    assert cfg.steps == 7 and cfg.method == "gd"


@pytest.mark.parametrize("text, refused", [(False, True), (True, False)])
def test_adir_edit_needs_a_text_tower_before_any_work(text, refused):
    import dataclasses

    from index_builder.embedder import DEFAULT_EMBEDDER
    from jobs.restore import preflight
    from restore_core.errors import ConfigError

    job = build_job_config(None, ["index=/data/index"], workers=1)
    job = dataclasses.replace(job, embedder=dict(DEFAULT_EMBEDDER, text=text))
    rows = [{"method": "adir_edit"}, {"method": "sd_edit"}]
    if refused:
        with pytest.raises(ConfigError, match="no usable text tower"):
            preflight.check_methods(rows, job)
    else:
        preflight.check_methods(rows, job)


def test_row_steps_reach_the_stable_diffusion_pipeline():
    job = build_job_config(None, [], workers=1)
    cfg = row_config({"method": "adir_sd", "degrade": False, "noise_sigma": 0.0, "k": None, "steps": 12}, job)
    assert cfg.sd.steps == 12 and cfg.steps == job.restore.steps


def test_a_missing_stable_diffusion_folder_is_refused_before_any_work(tmp_path):
    from jobs.restore import preflight
    from restore_core.errors import ModelLoadError

    job = build_job_config(None, [f"sd_model={tmp_path / 'no-such-pipeline'}"], workers=1)
    with pytest.raises(ModelLoadError, match="the sd pipeline not found"):
        preflight.check_methods([{"method": "sd"}], job)
    preflight.check_methods([{"method": "gd"}], job)  # methods that do not use it are not held up


def test_a_row_interrupted_after_adaptation_resumes_from_its_adapter(tmp_path, monkeypatch):
    """Ctrl-C in the sampling stage leaves the row's adapter; the rerun loads it (no
    training), writes the same bytes as an uninterrupted run and, once its record is
    committed, deletes the adapter."""
    from jobs.restore.manifest import validate_rows
    from jobs.restore.row import adapter_uri, commit_row, image_path, load_context
    from restore_core import images
    from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
    from restore_core.methods import adir
    from tests.helpers import make_tiny_prior

    images.write_png(random_crops(HELDOUT_PHOTOS[:1], 1, 32, seed=3)[0], str(tmp_path / "in.png"))
    job = build_job_config(None, [f"model={make_tiny_prior(str(tmp_path / 'prior'))}", "steps=3", "adapt_iters=3",
                                  "adapt_batch=2", "adapt_lr=1e-2", "lora_rank=2", "lora_alpha=2", "metrics=[psnr]"],
                           workers=1)
    row = validate_rows(pd.DataFrame([{"image_id": "r", "input_uri": str(tmp_path / "in.png"), "task": "sr4",
                                       "method": "ia_y", "degrade": True, "seed": 1}]))[0] | {"row_key": "k" * 24}
    ctx = load_context(job)
    trainings = []
    train = adir.adapt_lora
    monkeypatch.setattr(adir, "adapt_lora", lambda *a, **k: trainings.append(1) or train(*a, **k))
    whole, out = str(tmp_path / "whole"), str(tmp_path / "out")
    assert commit_row(row, ctx, whole)["status"] == "ok" and trainings == [1]

    sample = adir.sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adir, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        commit_row(row, ctx, out)
    monkeypatch.setattr(adir, "sample", sample)
    saved = adapter_uri(out, row)
    assert trainings == [1, 1] and os.path.exists(saved) and "/adapters/" in saved
    assert not os.path.exists(adapter_uri(whole, row)), "a committed row keeps no adapter"

    record = commit_row(row, ctx, out)
    assert record["status"] == "ok" and record["record_written"], record["error"]
    assert trainings == [1, 1], "the rerun loads the adapter instead of adapting"
    assert record["iterations"] == 3
    with open(os.path.join(whole, image_path("restored", "r")), "rb") as a, \
            open(os.path.join(out, image_path("restored", "r")), "rb") as b:
        assert a.read() == b.read()
    assert not os.path.exists(saved)
    assert adapter_uri(out, {"image_id": "r", "row_key": "other-settings"}) != saved
