"""Fixtures shared by the job tests (imported explicitly by tests/test_*job*.py files).

* ``ray_cluster``: one local Ray (2 CPUs) for the whole session; ``adir restore`` reuses it.
* ``tiny_prior``: an untrained 32² UNet saved through ``save_pretrained``.
* ``photo_dir``: 32×32 crops of bundled held-out photos as PNGs.
* ``tiny_index``: a retrieval index over a few crops of training photos (index_builder).
* ``run_restore``: runs the ``adir`` CLI in-process and returns (exit code, stdout, stderr).
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from restore_core.bundled_photos import random_crops
from restore_core.images import write_png
from tests.helpers import make_tiny_prior

TINY = ["steps=4", "adapt_iters=2", "adapt_batch=2", "k=2", "lora_rank=2", "lora_alpha=2",
        "metrics=psnr,ssim", "cpus_per_worker=0.5"]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    return make_tiny_prior(str(tmp_path_factory.mktemp("prior")), sample_size=32)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory):
    """Four 32×32 crops of held-out photos (one folder, PNG)."""
    root = tmp_path_factory.mktemp("photos")
    crops, _ = random_crops(("chelsea", "coffee"), 4, 32, seed=3)
    for i, x in enumerate(crops):
        write_png(x[None], str(root / f"photo{i}.png"))
    return str(root)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory):
    """A retrieval index over six 32×32 training crops, built by index_builder."""
    from index_builder.index import build_index_from_folder

    root = tmp_path_factory.mktemp("corpus")
    crops, _ = random_crops(("astronaut", "rocket"), 6, 32, seed=4)
    for i, x in enumerate(crops):
        write_png(x[None], str(root / "images" / f"c{i}.png"))
    return build_index_from_folder(str(root / "images"), str(root / "index"))


def manifest_rows(photo_dir: str, task: str = "sr4", method: str = "gd", n: int = 4, **extra) -> list[dict]:
    names = sorted(f for f in os.listdir(photo_dir) if f.endswith(".png"))[:n]
    return [{"image_id": f"{method}-{task.split(':')[0]}-{os.path.splitext(f)[0]}", "input_uri": os.path.join(photo_dir, f),
             "task": task, "degrade": True, "noise_sigma": 0.0, "method": method, "seed": i, **extra}
            for i, f in enumerate(names)]


def write_manifest_file(rows: list[dict], path) -> str:
    pd.DataFrame(rows).to_parquet(str(path))
    return str(path)


def run_restore(capsys, manifest: str, output: str, *extra: str, prior: str | None = None,
                sets: list[str] | None = None) -> tuple[int, str, str]:
    """``adir restore`` in this process (the Ray cluster of ``ray_cluster`` is reused)."""
    from jobs.cli import main

    argv = ["restore", "--manifest", manifest, "--output", output, "--workers", "2"]
    for item in (TINY if sets is None else sets) + ([f"model={prior}"] if prior else []):
        argv += ["--set", item]
    code = main(argv + list(extra))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
