"""cluster/: the Ray cluster-launcher YAML and the KubeRay RayJob parse, ask for GPUs, install
the project, and run the real ``adir restore`` entry point with flags its parser accepts."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / name).read_text())


def _restore_args(command: str) -> list[str]:
    """The argv of the ``adir restore …`` inside a shell command line."""
    words = shlex.split(command)
    start = words.index("adir")
    assert words[start + 1] == "restore"
    return words[start + 1:]


def test_console_script_is_adir():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["adir"] == "jobs.cli:main"


def test_rayjob_runs_adir_restore_on_gpu_workers():
    job = _load("rayjob.yaml")
    assert job["apiVersion"].startswith("ray.io/") and job["kind"] == "RayJob"
    argv = _restore_args(job["spec"]["entrypoint"])
    args = build_parser(argv).parse_args(argv)  # the real parser: unknown flags exit 2
    assert args.manifest.startswith("s3://") and args.output.startswith("s3://")
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu", 0)
            for g in groups for c in g["template"]["spec"]["containers"]]
    assert gpus and all(int(n) >= 1 for n in gpus)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == groups[0]["template"]["spec"]["containers"][0]["image"]


def test_cluster_launcher_has_gpu_workers_and_installs_project():
    cfg = _load("ray-cluster.yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and cfg["head_node_type"] not in gpu_types
    assert all(types[n]["max_workers"] >= 1 for n in gpu_types)
    setup = " ".join(cfg["setup_commands"])
    assert "pip install" in setup and "adir" in setup
    # the submit example in the header uses flags the real parser accepts
    header = (ROOT / "cluster" / "ray-cluster.yaml").read_text().split("cluster_name:")[0]
    submit = " ".join(line.lstrip("# ").rstrip("\\ ") for line in header.splitlines()
                      if "ray job submit" in line or line.startswith("#     "))
    argv = _restore_args(submit)
    build_parser(argv).parse_args(argv)


@pytest.mark.parametrize("name", ["ray-cluster.yaml", "rayjob.yaml"])
def test_yaml_has_no_tabs_and_parses(name):
    text = (ROOT / "cluster" / name).read_text()
    assert "\t" not in text
    assert isinstance(yaml.safe_load(text), dict)
