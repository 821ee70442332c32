"""Image embedder ξ_v of ADIR's retrieval (ADIR §3.3, eq. 19): open_clip image towers.

Owns loading an open_clip model through its real API
(``open_clip.create_model_and_transforms(name, pretrained=<tag | local path>)``, custom
architectures registered with ``open_clip.add_model_config``) and turning [-1, 1] image
tensors into L2-normalised float32 embeddings, in batches, on the GPU when present.

Preprocessing mirrors open_clip's eval transform on tensors: resize the short side to the
tower's ``image_size`` and centre-crop (``restore_core.images.center_crop``), map [-1, 1] to
[0, 1] and normalise with the mean/std of the ``Normalize`` in the model's preprocess. An
observation y smaller than the tower input (SR low-res) is therefore upsampled, and a
one-channel observation (colorization) is replicated to RGB.

Imports only ``restore_core`` (images, storage, errors), torch, numpy and open_clip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from restore_core import storage
from restore_core.errors import InputError, ModelLoadError
from restore_core.images import center_crop

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = REPO_ROOT / "models"
DEFAULT_EMBEDDER_DIR = SHIPPED_MODELS / "embedder"
# ``shipped:<path>`` names a file under the repo's models/ folder wherever the repo is checked
# out, so an index built with the shipped embedder (its embedder.json) loads on another machine.
SHIPPED_PREFIX = "shipped:"
# models/embedder/{adir-tiny.json, open_clip_model.safetensors} come from jobs/train/embedder.py,
# which trains the image tower only: its text tower is an untrained placeholder, so "text": False.
DEFAULT_EMBEDDER: dict[str, Any] = {
    "model": "adir-tiny",
    "pretrained": SHIPPED_PREFIX + "embedder/open_clip_model.safetensors",
    "config": SHIPPED_PREFIX + "embedder/adir-tiny.json",
    "text": False,
}
SPEC_KEYS = ("model", "pretrained", "config", "text")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _resolve(path: str | None) -> str | None:
    """A local path for a local, ``shipped:`` or remote (fsspec) file; None stays None."""
    if path is None:
        return None
    if path.startswith(SHIPPED_PREFIX):
        return str(SHIPPED_MODELS / path[len(SHIPPED_PREFIX):])
    if "://" in path and not path.startswith("file://"):
        return storage.fetch_to_local(path)
    return storage.local_path(path)


def _portable(path: Path) -> str:
    """``shipped:<rel>`` for a file under the repo's models/ folder, else the absolute path."""
    try:
        return SHIPPED_PREFIX + path.resolve().relative_to(SHIPPED_MODELS).as_posix()
    except ValueError:
        return str(path)


def spec_from_dir(directory: str) -> dict[str, Any]:
    """An embedder spec from a folder holding ``<model>.json`` (open_clip model config, with
    ``embed_dim``) and one weights file (``*.safetensors`` preferred, else ``.pt/.pth/.bin``)."""
    d = Path(_resolve(directory))
    configs = [p for p in sorted(d.glob("*.json"))
               if p.stem not in ("open_clip_config", "training") and "embed_dim" in json.loads(p.read_text())]
    weights = sorted((p for p in d.iterdir() if p.suffix in WEIGHT_SUFFIXES),
                     key=lambda p: (p.suffix != ".safetensors", p.name))
    if not configs or not weights:
        raise ModelLoadError(f"embedder folder {directory} needs an open_clip model config <name>.json and a "
                             f"weights file ({', '.join(WEIGHT_SUFFIXES)}); found {sorted(p.name for p in d.iterdir())}")
    return {"model": configs[0].stem, "pretrained": _portable(weights[0]), "config": _portable(configs[0])}


def normalize_spec(spec: dict | str | None) -> dict[str, Any]:
    """``{"model", "pretrained", "config"}`` from a dict, a folder path, a JSON string or None
    (the default embedder). A bare string that is not a folder is an open_clip model name."""
    if spec is None:
        spec = dict(DEFAULT_EMBEDDER)
    if isinstance(spec, str):
        s = spec.strip()
        if s.startswith("{"):
            spec = json.loads(s)
        elif storage.is_local(s) and os.path.isdir(storage.local_path(s)):
            spec = spec_from_dir(s)
        else:
            spec = {"model": s}
    unknown = set(spec) - set(SPEC_KEYS)
    if "model" not in spec or unknown:
        raise InputError(f"embedder spec {spec!r} needs 'model' and accepts only {', '.join(SPEC_KEYS)}")
    out = {k: spec.get(k) for k in SPEC_KEYS[:3]}
    if spec.get("text") is not None:  # False: the text tower is not to be used (untrained)
        out["text"] = bool(spec["text"])
    if out == {k: v for k, v in DEFAULT_EMBEDDER.items() if k != "text"}:
        out["text"] = False  # the shipped embedder named without its flag (older index folders)
    return out


class Embedder:
    """An open_clip image tower: ``embed(x)`` gives L2-normalised float32 embeddings (N, D)."""

    def __init__(self, model_name: str, pretrained: str | None = None, device: str | None = None,
                 config: str | None = None, batch_size: int = 64, text: bool | None = None):
        import open_clip

        self.spec = {"model": model_name, "pretrained": pretrained, "config": config}
        if text is not None:
            self.spec["text"] = text
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        try:
            if config is not None:
                local_config = _resolve(config)
                if not os.path.exists(local_config):
                    raise ModelLoadError(f"embedder config not found: {config}")
                open_clip.add_model_config(local_config)
            local_weights = _resolve(pretrained)
            if local_weights is not None and os.path.sep in str(pretrained) and not os.path.exists(local_weights):
                raise ModelLoadError(f"embedder weights not found: {pretrained}")
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=local_weights, device=self.device)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError/ValueError/OSError
            raise ModelLoadError(f"cannot load open_clip embedder {model_name!r} (pretrained={pretrained!r}): "
                                 f"{type(exc).__name__}: {exc}") from None
        self.model = model.eval()
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        norm = next(t for t in preprocess.transforms if type(t).__name__ == "Normalize")
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.dim = int(model.visual.output_dim)
        # text tower (ADIR §4.4: neighbours of a prompt, eq. 19 with the text embedding)
        self.has_text = text is not False and hasattr(model, "encode_text")
        self.tokenizer = open_clip.get_tokenizer(model_name) if self.has_text else None

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings (N, D) with open_clip's own tokenizer; an
        embedder without a (usable) text tower is refused with an ``InputError``."""
        if not self.has_text:
            raise InputError(f"embedder {self.spec['model']} has no text tower (image-only); text queries need an "
                             "open_clip model with a trained text tower")
        with torch.no_grad():
            z = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return F.normalize(z.float(), dim=-1).cpu().numpy().astype(np.float32)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (N, 1|3, H, W) → (N, 3, S, S) in [-1, 1] at the tower's size S."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InputError(f"embedder input must be (N, 1|3, H, W); got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return center_crop(x.float(), self.image_size)

    @torch.no_grad()
    def embed(self, x: torch.Tensor | list[torch.Tensor]) -> np.ndarray:
        """Embeddings of [-1, 1] images: a (N, C, H, W) tensor or a list of (1, C, H, W)
        tensors of any sizes. Returns (N, D) float32, each row of unit L2 norm."""
        if isinstance(x, (list, tuple)):
            if not x:
                return np.zeros((0, self.dim), np.float32)
            x = torch.cat([self.prepare(t) for t in x])
        else:
            x = self.prepare(x)
        if not torch.isfinite(x).all():
            raise InputError("embedder input has NaN or inf values")
        out = []
        for chunk in x.split(self.batch_size):
            chunk = ((chunk + 1) / 2 - self.mean) / self.std
            z = self.model.encode_image(chunk.to(self.device))
            out.append(F.normalize(z.float(), dim=-1).cpu())
        return torch.cat(out).numpy().astype(np.float32)


def load_embedder(spec: dict | str | None = None, device: str | None = None, batch_size: int = 64) -> Embedder:
    """An :class:`Embedder` from a spec (see :func:`normalize_spec`); None = ``DEFAULT_EMBEDDER``."""
    s = normalize_spec(spec)
    return Embedder(s["model"], s["pretrained"], device=device, config=s["config"], batch_size=batch_size,
                    text=s.get("text"))
