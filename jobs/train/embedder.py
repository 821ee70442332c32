"""``adir train-embedder``: the small degradation-robust image embedder "adir-tiny".

ADIR retrieves neighbours of a *degraded* observation y with CLIP and needs "an embedding
space that is not sensitive to the degradation of y" (ADIR, §1; retrieval §3.3). Real CLIP weights
cannot be downloaded here, so the project trains its own small open_clip model:

* The architecture is an open_clip model config (``models/embedder/adir-tiny.json``,
  registered with ``open_clip.add_model_config``): a ModifiedResNet image tower (width 16,
  one bottleneck per stage, attention pooling, 64² input) with a 128-d embedding, and a
  minimal text tower that exists only so the standard ``CLIP`` class and loading path
  serve it. The same file layout lets ``open_clip.create_model_and_transforms(
  "adir-tiny", pretrained="models/embedder/open_clip_model.safetensors")`` and
  ``"local-dir:models/embedder"`` both load it, exactly as for real CLIP weights.
* The image tower is trained with a supervised-contrastive (multi-positive InfoNCE) loss
  whose positives are *crops of the same source photo*, each view passed through a random
  task degradation (``restore_core.operators``: sr4/sr8, box and Gaussian blur, colorize,
  JPEG, plus additive noise) and brought back to a 3-channel image of the crop's size by
  :func:`observation_to_image`. Crops come from the *training* photos only
  (``restore_core.bundled_photos.TRAIN_PHOTOS``).
* Inputs follow open_clip's preprocessing: [-1, 1] → [0, 1], resized to the tower's
  ``image_size``, normalised with the model's ``preprocess_cfg`` mean/std (OpenAI's).

The evaluation (:func:`degraded_recall`) is the index issue's degraded-query benchmark at
small scale: a corpus of clean crops of *every* bundled photo, queries that are degraded
crops of the held-out photos (other seeds), and recall@K = the fraction of the K nearest
corpus crops that share the query's source photo.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jobs.train import loop
from restore_core.bundled_photos import (
    ALL_PHOTOS,
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    random_crops,
)
from restore_core.operators import build_operator

log = logging.getLogger("adir.train_embedder")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EMBEDDER_OUT = REPO_ROOT / "models" / "embedder"
MODEL_NAME = "adir-tiny"
WEIGHTS_FILE = "open_clip_model.safetensors"

MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1},
}
# Degradations seen in training: the retrieval tasks plus JPEG and pure noise.
TRAIN_TASKS = ("sr4", "sr8", "deblur_box5", "deblur_gauss", "colorize", "jpeg", "denoise")
EVAL_TASKS = ("sr4", "deblur_box5", "colorize")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/embedder", help="checkpoints and logs (resumed if present)")
    p.add_argument("--output", default=str(DEFAULT_EMBEDDER_OUT), help="where the weights are exported")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (0: no limit)")
    p.add_argument("--batch", type=int, default=64, help="crops per batch (two views each)")
    p.add_argument("--size", type=int, default=64, help="crop size")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--pool", type=int, default=2048, help="crops per data pool (refreshed when used up)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-per-photo", type=int, default=40, help="corpus crops per photo in the recall eval")
    p.add_argument("--eval-queries", type=int, default=60, help="degraded held-out queries per task")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def write_model_config(out_dir: Path) -> None:
    """The open_clip config in both layouts: ``adir-tiny.json`` for ``add_model_config``
    and ``open_clip_config.json`` (model_cfg + preprocess_cfg) for ``local-dir:``."""
    import open_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{MODEL_NAME}.json").write_text(json.dumps(MODEL_CFG, indent=1))
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    (out_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": preprocess}, indent=1))


def create_model(config_dir: Path, pretrained: str | None = None):
    """``open_clip.create_model`` of adir-tiny after registering the config in ``config_dir``."""
    import open_clip

    open_clip.add_model_config(config_dir / f"{MODEL_NAME}.json")
    return open_clip.create_model(MODEL_NAME, pretrained=pretrained)


def observation_to_image(y: torch.Tensor, size: int) -> torch.Tensor:
    """An observation as an embedder input: 3 channels, ``size``² (bicubic for resampling).

    A colorize observation (1 channel) is repeated to RGB; a low-resolution one is upsampled.
    """
    if y.shape[1] == 1:
        y = y.expand(-1, 3, -1, -1)
    if y.shape[-1] != size or y.shape[-2] != size:
        y = F.interpolate(y, size=(size, size), mode="bicubic", align_corners=False)
    return y.clamp(-1, 1)


def preprocess(model, x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images → the tower's normalised input (open_clip's mean/std, image_size)."""
    cfg = model.visual.preprocess_cfg
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = (x + 1) / 2
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def embed(model, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings of [-1, 1] images."""
    return F.normalize(model.encode_image(preprocess(model, x)), dim=-1)


class Degrader:
    """Random task degradations of a batch of crops, through ``restore_core.operators``."""

    def __init__(self, size: int):
        self.size = size
        self.ops = {t: build_operator(t, (3, size, size)) for t in TRAIN_TASKS if t != "jpeg"}

    def apply(self, x: torch.Tensor, task: str, noise_sigma: float, generator: torch.Generator,
              jpeg_q: int = 15) -> torch.Tensor:
        op = build_operator(f"jpeg:q={jpeg_q}", (3, self.size, self.size)) if task == "jpeg" else self.ops[task]
        with torch.no_grad():
            y = op.degrade(x, noise_sigma, generator)
        return observation_to_image(y, self.size)

    def random_views(self, x: torch.Tensor, rng: np.random.Generator, generator: torch.Generator,
                     p_clean: float = 0.25) -> torch.Tensor:
        """Each crop under a random task (or kept clean with probability ``p_clean``). The
        crops drawing the same task share one noise level σ: U(5, 50) for ``denoise``, else
        0 or U(0, 25) (0-255 scale), and one JPEG quality in [5, 50)."""
        choice = rng.integers(-1, len(TRAIN_TASKS), size=x.shape[0])
        choice[rng.random(x.shape[0]) < p_clean] = -1
        out = x.clone()
        for j, task in enumerate(TRAIN_TASKS):
            idx = np.flatnonzero(choice == j)
            if idx.size == 0:
                continue
            sigma = float(rng.uniform(5, 50)) if task == "denoise" else (
                float(rng.uniform(0, 25)) if rng.random() < 0.5 else 0.0)
            out[idx] = self.apply(x[idx], task, sigma, generator, jpeg_q=int(rng.integers(5, 50)))
        return out


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-positive InfoNCE (SupCon): every other view with the same source photo is a
    positive; the loss averages −log p(positive) over the positives of each anchor."""
    sim = z @ z.t() / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    return -(log_prob.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp(min=1)).mean()


@torch.no_grad()
def degraded_recall(model, k: int = 20, per_photo: int = 40, n_queries: int = 60, size: int = 64,
                    tasks: tuple[str, ...] = EVAL_TASKS, seed: int = 7) -> dict[str, float]:
    """recall@k of degraded held-out queries: the fraction of the k nearest clean corpus
    crops (``per_photo`` crops of every bundled photo) sharing the query's source photo."""
    model.eval()
    corpus, sources = [], []
    for i, name in enumerate(ALL_PHOTOS):
        crops, _ = random_crops((name,), per_photo, size, seed=seed * 1000 + i, scales=(0.25, 1.0))
        corpus.append(crops)
        sources += [name] * per_photo
    corpus_z = torch.cat([embed(model, c) for c in torch.cat(corpus).split(128)])
    queries, q_sources = random_crops(HELDOUT_PHOTOS, n_queries, size, seed=seed + 1, scales=(0.25, 1.0))
    degrader = Degrader(size)
    src = np.array(sources)
    out = {}
    for task in tasks:
        y = degrader.apply(queries, task, 0.0, torch.Generator().manual_seed(seed))
        top = (embed(model, y) @ corpus_z.t()).topk(k, dim=1).indices.numpy()
        out[task] = float(np.mean([(src[row] == q).mean() for row, q in zip(top, q_sources)]))
    return out


def main(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_model_config(run_dir)
    torch.manual_seed(args.seed)
    model = create_model(run_dir)
    opt = torch.optim.AdamW(model.visual.parameters(), lr=args.lr, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    checkpoint = loop.Checkpoint(run_dir, {"model": model, "opt": opt, "np_rng": loop.NumpyRng(rng),
                                           "gen": loop.TorchGenerator(gen)})
    state = checkpoint.load() if checkpoint.exists() else loop.new_state(args.seed)
    n_params = sum(p.numel() for p in model.visual.parameters())
    log.info("adir-tiny image tower %.2fM parameters, batch %d x 2 views", n_params / 1e6, args.batch)
    label_of = {name: i for i, name in enumerate(TRAIN_PHOTOS)}
    degrader = Degrader(args.size)

    def make_pool(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops, names = random_crops(TRAIN_PHOTOS, args.pool, args.size, seed=seed, scales=(0.25, 1.0))
        return crops, torch.tensor([label_of[n] for n in names])

    def export(state: dict) -> None:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        write_model_config(out)
        tmp = out / f".{WEIGHTS_FILE}.tmp"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        os.replace(tmp, out / WEIGHTS_FILE)
        meta = {
            "command": "adir train-embedder " + " ".join(sys.argv[2:]), "model": MODEL_NAME,
            "seed": args.seed, "steps": state["step"], "batch": args.batch, "size": args.size,
            "lr": args.lr, "temperature": args.temperature, "image_tower_parameters": n_params,
            "final_loss": state.get("loss"), "wall_seconds": round(state["seconds"], 1),
            "recall_at_20_heldout": state["recall"], "history": state["history"],
            "train_photos": list(TRAIN_PHOTOS), "heldout_photos": list(HELDOUT_PHOTOS),
            "train_tasks": list(TRAIN_TASKS),
        }
        tmp_meta = out / ".training.json.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, out / "training.json")
        log.info("exported embedder at step %d to %s", state["step"], out)

    evaluated = []  # evaluation steps of this invocation

    def evaluate(state: dict) -> dict[str, float]:
        state["recall"] = degraded_recall(model, per_photo=args.eval_per_photo, n_queries=args.eval_queries,
                                          size=args.size)
        evaluated.append(state["step"])
        return state["recall"]

    def on_eval(state: dict) -> None:
        recall = evaluate(state)
        state["history"].append({"step": state["step"], "seconds": round(state["seconds"], 1),
                                 "loss": round(state["loss"], 4), "recall_at_20": recall})
        log.info("step %d  loss %.4f  recall@20 %s  %.2f s/step", state["step"], state["loss"],
                 {k: round(v, 3) for k, v in recall.items()}, state["seconds"] / state["step"])

    def train_step(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> float:
        x, lab = batch
        model.train()
        views = torch.cat([degrader.random_views(x, rng, gen), degrader.random_views(x, rng, gen)])
        loss = supcon_loss(embed(model, views), torch.cat([lab, lab]), args.temperature)
        loop.set_lr(opt, args.lr * min(1.0, (step + 1) / 100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    loop.run(state, steps=args.steps, minutes=args.minutes, pool=loop.Pool(make_pool, args.batch, state),
             train_step=train_step, eval_every=args.eval_every, on_eval=on_eval, checkpoint=checkpoint,
             export=export, export_every=args.eval_every)
    if not evaluated or state["step"] % args.eval_every:
        evaluate(state)
    export(state)
    return 0
