"""Everything ``adir restore`` can check before any work, each a one-line ``AdirError`` (exit 2).

* the methods the manifest names exist, and those that retrieve neighbours have an index;
* the prior and the index that look like paths or URIs exist;
* every metric asked for is known and its weights files are in the weights folder (a
  missing LPIPS file would otherwise fail every row at scoring, after its restoration);
* the storage behind the manifest and the output is reachable with the credentials at hand
  (``reach``: an ``s3://`` URI without credentials is one line naming the URI and the
  error, not a botocore traceback).

The model and the index themselves are loaded by every worker before any row; a load error
there stops the job with exit 2 too (``jobs.restore.pool``). Imports no Ray.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from jobs.restore.manifest import Manifest
from restore_core import metrics, storage
from restore_core.errors import AdirError, ConfigError, InputError, ModelLoadError
from restore_core.methods import get_method

T = TypeVar("T")


def reach(what: str, uri: str, action: Callable[[], T]) -> T:
    """``action()``, with any storage error other than ours turned into one ``InputError``
    line naming ``what``, the URI and the error (credentials, endpoint, permissions)."""
    try:
        return action()
    except AdirError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"cannot reach the {what} {uri}: {type(exc).__name__}: {text[:300]}") from None


def probe_output(output: str) -> None:
    """List the output folder (or its parent): fails without read access to the bucket."""
    fs, path = storage.filesystem(output)
    fs.invalidate_cache(path)
    if fs.exists(path):
        fs.ls(path)
    else:
        parent = path.rstrip("/").rsplit("/", 1)[0]
        if parent and parent != path:
            fs.exists(parent)


def check_methods(rows, job) -> None:
    """The methods of ``rows`` (a ``manifest.Manifest``, or row dicts) exist and have what
    they need (an index, a text tower, a pipeline folder); each distinct method is checked once."""
    names = rows.methods() if isinstance(rows, Manifest) else sorted({r["method"] for r in rows})
    for name in names:
        method = get_method(name)  # unknown (or not installed) -> ConfigError
        if getattr(method, "uses_neighbours", False) and not job.index:
            raise ConfigError(f"method {name!r} retrieves neighbours but no index is set; "
                              "pass --set index=URI (build one with adir build-index)")
        if name == "adir_edit":
            check_text_retrieval(job)
        if getattr(method, "model_kind", ""):  # a Stable Diffusion pipeline given as a path must exist
            from restore_core.models.stable_diffusion import config_spec

            check_path(f"the {name} pipeline", config_spec(job.restore, method.model_kind))


def check_text_retrieval(job) -> None:
    """``adir_edit`` retrieves by the prompt's text embedding (ADIR §4.4): an index whose
    embedder is image-only (the shipped one) is refused here, before any row runs."""
    from index_builder.embedder import normalize_spec
    from index_builder.retrieval import recorded_embedder

    spec = job.embedder if job.embedder is not None else reach(
        "index", job.index, lambda: recorded_embedder(job.index))
    if normalize_spec(spec).get("text") is False:
        raise ConfigError(f"method 'adir_edit' retrieves neighbours by text, but the embedder of index {job.index} "
                          "has no usable text tower (image-only); build the index with an open_clip model that "
                          "has one (adir build-index --model NAME --pretrained PATH)")


def check_paths(job) -> None:
    """The prior and index paths exist; an index to memory-map (``index_mmap``) can be mapped."""
    for key in ("model", "index"):
        check_path(key, getattr(job, key))
    if job.index and job.index_mmap:
        from index_builder.node_copy import check_mappable

        reach("index", job.index, lambda: check_mappable(job.index))


def check_path(what: str, uri: str | None) -> None:
    """ModelLoadError when ``uri`` is a path or URI (not a hub id such as ``owner/name``,
    which the loaders resolve themselves) and is not there."""
    looks_like_path = uri and ("://" in uri or uri.startswith((os.path.sep, ".", "~")) or uri.count("/") > 1)
    if looks_like_path and not reach(what, uri, lambda: storage.exists(uri)):
        raise ModelLoadError(f"{what} not found: {uri}")


def check_metrics(cfg) -> None:
    """Unknown metric names, and missing weights files of the metrics that need them."""
    unknown = [m for m in cfg.metrics if m not in metrics.KNOWN]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; accepted: {', '.join(sorted(metrics.KNOWN))}")
    for name in cfg.metrics:
        if name in metrics.WEIGHT_FILES:
            metrics.weights_file(name, metrics.WEIGHT_FILES[name][0], cfg.metrics_weights_dir)
        if name in metrics.HUB_FILES:
            metrics.weights_file(name, metrics.HUB_FILES[name], cfg.metrics_weights_dir)
