"""jobs.restore.row.row_config and the preflight checks rows rely on: the row's own settings reach the method."""

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
