"""Image-adaptive LoRA fine-tuning of the diffusion prior (ADIR §3.3; its revised version for the LoRA form).

A fresh LoRA adapter (rank r = 16, α = 8 by default, as ADIR's revised version) is injected into
every ``Conv2d`` of the UNet with ``peft.inject_adapter_in_model`` — diffusers'
``UNet2DModel`` has no ``add_adapter``. Only the adapter is trained, with Adam
(lr 1e-4, 400 iterations: Table 1) on ℓ_simple (eq. 6):

    ℓ_simple = ‖ε − ε_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t)‖²,

over batches of 6 random crops of the adaptation images at the model's sample size, with
one random t shared by the batch (ADIR revised version §4: "the same 0 < t ≤ T for images in the
batch"; our t is the 0-based training index 0..T−1). The images are either y itself
(eq. 18, method ``ia_y``) or the K retrieved neighbours (eq. 20, ADIR).

Crops (``random_crop_batch``): an image whose shorter side is below the crop size is first
upsampled (bicubic, aspect kept, clamped to [−1, 1]) so that side equals the crop — this
is how a 16² y of sr4 feeds a 64² prior in eq. 18; larger images are cropped at a uniform
random position. Each crop is flipped horizontally with probability ½ (a free
augmentation that keeps image statistics). With a learned-variance model (6 output
channels) only the first C = 3 (ε) channels enter the loss: the paper saw no benefit
from including Σ (§3.3).

Progress and resume (``restore_core.progress``): ``adapt_lora`` reports its iterations as
the ``adapting`` stage of the tracked row. ``adapt_or_resume`` wraps a row's adaptation:
when the row has an adapter location (its ``RowProgress.adapter_uri``, under the job's
output) the adapted weights are saved there atomically before sampling starts, and a rerun
of the interrupted row loads them instead of adapting again. Training and sampling draw
from separate generators (the methods take the adaptation seed from a copy of the row's
generator), so a resumed row samples with the same noise and gives the same image.

Contract: after ``remove_lora`` (or leaving ``lora_adapter``) the UNet holds exactly its
original modules and tensors — ``state_dict_hash`` is unchanged — so rows never leak
into each other. The adapter's random init (lora_A; lora_B starts at 0) comes from the
``seed`` of ``attach_lora`` on a forked RNG, so a row is reproducible and the global RNG
is untouched. Adapters save/load as safetensors through peft's
``get_peft_model_state_dict`` / ``set_peft_model_state_dict``, to any fsspec URI
(``restore_core.storage``). ``evaluate_after_adaptation`` lets a benchmark measure the
adapted model before removal.

Imports torch, peft and safetensors (lazily), ``restore_core.errors``, ``.progress`` and
``.storage``; never the samplers or jobs. The model argument is a
``restore_core.models.pixel_unet.DiffusionModel`` (``unet``, ``schedule.alphas_cumprod``,
``eps``, ``sample_size``, ``device``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from restore_core import progress, storage
from restore_core.errors import SamplingDivergedError

ADAPTER = "row"
_SAVED_GRAD = "_adir_lora_saved_requires_grad"  # base requires_grad flags, restored on removal
_AFTER_ADAPTATION: list[Callable[[object], dict]] = []  # see evaluate_after_adaptation


def conv_module_names(unet: torch.nn.Module) -> list[str]:
    """Names of every Conv2d in the UNet (conv_in/out, resnet convs, shortcuts, samplers)."""
    return [name for name, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d)]


def lora_target_names(unet: torch.nn.Module, attention: bool = False) -> list[str]:
    """Every Conv2d (the paper's targets) and, with ``attention``, the attention projections
    (the Linear to_q / to_k / to_v / to_out.0 of diffusers' Attention blocks)."""
    proj = (".to_q", ".to_k", ".to_v", ".to_out.0")
    linear = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(proj)]
    return conv_module_names(unet) + (linear if attention else [])


def attach_lora(unet: torch.nn.Module, rank: int = 16, alpha: int = 8, name: str = ADAPTER,
                seed: int = 0, attention: bool = False) -> list[torch.nn.Parameter]:
    """Inject a fresh LoRA adapter into all Conv2d layers (and, with ``attention``, the
    attention projections: ``lora_target_names``); return its trainable parameters.

    lora_B starts at zero (peft), so the adapted model starts equal to the base one;
    lora_A's random init is drawn from ``seed`` on a forked RNG, so the global torch RNG
    is untouched and the same seed gives the same adapter (same-seed reproducibility).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if any("lora_" in n for n, _ in unet.named_parameters()):
        raise RuntimeError("the UNet already carries a LoRA adapter; remove it first")
    # peft marks every base parameter non-trainable; remember the flags to restore them
    setattr(unet, _SAVED_GRAD, {n: p.requires_grad for n, p in unet.named_parameters()})
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=lora_target_names(unet, attention),
                        lora_dropout=0.0)
    device = next(unet.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, unet, adapter_name=name)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def remove_lora(unet: torch.nn.Module) -> None:
    """Replace every LoRA-wrapped layer by its untouched base layer (the same module object
    that was wrapped), drop peft's config and restore the base ``requires_grad`` flags."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, module.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config
    saved = unet.__dict__.pop(_SAVED_GRAD, {})
    for n, p in unet.named_parameters():
        if n in saved:
            p.requires_grad_(saved[n])


@contextlib.contextmanager
def lora_adapter(model, rank: int = 16, alpha: int = 8, seed: int = 0,
                 attention: bool = False) -> Iterator[list[torch.nn.Parameter]]:
    """Attach a fresh adapter for one row; it is removed on exit, even on error."""
    params = attach_lora(model.unet, rank, alpha, seed=seed, attention=attention)
    try:
        yield params
    finally:
        remove_lora(model.unet)


@contextlib.contextmanager
def evaluate_after_adaptation(fn: Callable[[object], dict]) -> Iterator[None]:
    """While active, every ``adapt_lora`` ends by calling ``fn(model)`` — adapter still
    attached, no grad — and merges the dict it returns into its info (and so into the
    method's info). Lets a benchmark measure the adapted model (``adir bench ablation``'s
    held-out ℓ_simple) through the unchanged method code, without keeping the adapter."""
    _AFTER_ADAPTATION.append(fn)
    try:
        yield
    finally:
        _AFTER_ADAPTATION.remove(fn)


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict (key, dtype, shape and raw bytes), in
    sorted key order: equal hashes mean bit-identical weights."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def random_crop_batch(images: torch.Tensor, batch_size: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` random size×size crops (with random horizontal flips) of ``images``."""
    n, _, h, w = images.shape
    if min(h, w) < size:
        scale = size / min(h, w)
        images = F.interpolate(images, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                               mode="bicubic", align_corners=False).clamp(-1, 1)
        h, w = images.shape[-2:]
    idx = torch.randint(0, n, (batch_size,), generator=generator)
    tops = torch.randint(0, h - size + 1, (batch_size,), generator=generator)
    lefts = torch.randint(0, w - size + 1, (batch_size,), generator=generator)
    flips = torch.rand(batch_size, generator=generator) < 0.5
    crops = []
    for i, t, l, f in zip(idx.tolist(), tops.tolist(), lefts.tolist(), flips.tolist()):
        c = images[i, :, t:t + size, l:l + size]
        crops.append(c.flip(-1) if f else c)
    return torch.stack(crops)


def l_simple(model, images: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
    """ℓ_simple (eq. 6) ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖², averaged over pixels and batch.

    ``t``: 0-based training timestep(s), an int or one per image, of the model's full
    schedule. Returns a 0-d tensor (differentiable in the weights; ``float()`` it to
    report). Only the ε channels count (``DiffusionModel.eps``), see the module doc.
    """
    images = images.to(model.device)
    t = torch.as_tensor(t, device=model.device).reshape(-1).expand(images.shape[0])
    a = model.schedule.alphas_cumprod.to(model.device)[t].to(images.dtype).view(-1, 1, 1, 1)
    xt = a.sqrt() * images + (1 - a).sqrt() * noise.to(model.device, images.dtype)
    eps = model.eps(xt, t)
    return torch.mean((eps - noise.to(eps.device, eps.dtype)) ** 2)


def adapt_lora(model, images: torch.Tensor, params: list[torch.nn.Parameter], iters: int = 400,
               lr: float = 1e-4, batch_size: int = 6, crop_size: int | None = None, seed: int = 0,
               callback: Callable[[int, float], None] | None = None) -> dict:
    """Train the attached adapter ``params`` on ``images`` (N, C, H, W) in [−1, 1] (eq. 18 / 20).

    ``iters`` Adam steps at ``lr`` over batches of ``batch_size`` random crops of side
    ``crop_size`` (default: the model's sample size), one random t per batch. The same
    ``seed`` gives the same crops, t and noise. Returns ``iterations``,
    ``adapt_loss_first``, ``adapt_loss_last`` (mean of the last 10 batch losses) and
    ``seconds_adapt``; ``callback(iteration, loss)`` is called after every step.
    """
    size = crop_size or model.sample_size
    images = images.to(model.device, torch.float32)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    T = model.schedule.num_train_timesteps
    start = time.perf_counter()
    losses = []
    model.unet.train()
    progress.report("adapting", 0, iters)
    try:
        for it in range(iters):
            x0 = random_crop_batch(images, batch_size, size, g).to(model.device)
            t = int(torch.randint(0, T, (1,), generator=g))
            noise = torch.randn(x0.shape, generator=g).to(model.device)
            with torch.enable_grad():
                loss = l_simple(model, x0, t, noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            value = loss.item()
            if not math.isfinite(value):
                raise SamplingDivergedError(f"non-finite adaptation loss ({value}) at iteration {it + 1}; "
                                            "lower adapt_lr")
            losses.append(value)
            progress.report("adapting", it + 1, iters)
            if callback is not None:
                callback(it, value)
    finally:
        model.unet.eval()
    info = {"iterations": iters, "adapt_loss_first": losses[0] if losses else None,
            "adapt_loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None,
            "seconds_adapt": time.perf_counter() - start}
    for fn in _AFTER_ADAPTATION:
        with torch.no_grad():
            info.update(fn(model))
    return info


def save_adapter(unet: torch.nn.Module, uri: str) -> None:
    """Save the attached adapter's weights as safetensors to ``uri`` (atomically)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    storage.atomic_write_bytes(uri, save({k: v.detach().contiguous() for k, v in state.items()}))


def load_adapter(unet: torch.nn.Module, uri: str) -> None:
    """Load adapter weights saved by ``save_adapter`` into an attached adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load

    result = set_peft_model_state_dict(unet, load(storage.read_bytes(uri)), adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter {uri} does not match this model: unexpected keys {unexpected[:3]}")


def adapt_or_resume(unet: torch.nn.Module, iters: int, adapt: Callable[[], dict]) -> dict:
    """``adapt()`` — the adaptation of the adapter attached to ``unet`` — or its saved result.

    In a tracked row with an adapter location (module docstring): when an adapter is saved
    there, it is loaded and ``adapt`` is skipped (info ``adapter="resumed"``, ``iterations``
    = ``iters``, as the row's key fixes the settings it was trained with, and
    ``seconds_adapt`` the load time); otherwise ``adapt()`` runs and its adapter is saved
    there (``adapter="saved"``, the save counted in ``seconds_adapt``). Elsewhere:
    ``adapt()`` alone."""
    row = progress.current()
    uri = row.adapter_uri if row is not None else None
    if uri is None:
        return adapt()
    start = time.perf_counter()
    if storage.exists(uri):
        load_adapter(unet, uri)
        row.adapter = "resumed"
        return {"iterations": iters, "seconds_adapt": time.perf_counter() - start, "adapter": "resumed"}
    info = adapt()
    save_adapter(unet, uri)
    row.adapter = "saved"
    return info | {"seconds_adapt": time.perf_counter() - start, "adapter": "saved"}
