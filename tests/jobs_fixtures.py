"""Fixtures shared by the job tests (imported explicitly by tests/test_*job*.py files).

* ``ray_cluster``: one local Ray (2 CPUs) for the whole session; ``adir restore`` reuses it.
* ``tiny_prior``: an untrained 32² UNet saved through ``save_pretrained``.
* ``photo_dir``: 32×32 crops of bundled held-out photos as PNGs.
* ``tiny_index``: a retrieval index over a few crops of training photos (index_builder).
* ``run_restore``: runs the ``adir`` CLI in-process and returns (exit code, stdout, stderr).
* ``after_first_row``: a fault (Ctrl-C, killed worker, storage down) injected mid-run.
"""

from __future__ import annotations

import contextlib
import os

import pandas as pd
import pytest

from restore_core.bundled_photos import random_crops
from restore_core.images import write_png
from tests.helpers import make_tiny_prior, save_tiny_embedder

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
    """A retrieval index over eight 32×32 training-photo crops and a tiny embedder, built
    by index_builder's own per-shard function and index writer (no Ray needed)."""
    from index_builder.embedder import load_embedder
    from index_builder.shard_build import embed_rows
    from jobs.build_index import write_index_folder
    from restore_core.bundled_photos import export_crops

    root = tmp_path_factory.mktemp("corpus")
    rows = export_crops(str(root / "photos"), "train", 8, 32, seed=4)
    spec = save_tiny_embedder(str(root / "embedder"), seed=1)
    emb, _ = embed_rows(load_embedder(spec), [r[0] for r in rows], [r[1] for r in rows], thumb_size=8)
    write_index_folder(str(root / "index"), emb, spec, kind="kdtree")
    return str(root / "index")


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


@contextlib.contextmanager
def after_first_row(monkeypatch, action):
    """Call ``action()`` once from the driver loop of ``adir restore``, right after it has
    counted the first committed row: the other rows are then still queued or in flight,
    however fast the machine is (a watcher thread polling for records can be outrun)."""
    from jobs.restore import pool

    update = pool.Progress.update
    fired = []

    def update_then_act(self, ok):
        update(self, ok)
        if not fired:
            fired.append(True)
            action()

    with monkeypatch.context() as patch:
        patch.setattr(pool.Progress, "update", update_then_act)
        yield
