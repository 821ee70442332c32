"""Image-adaptive LoRA fine-tuning of the diffusion prior (paper 000 §3.3, paper 001).

A fresh LoRA adapter (rank r = 16, α = 8 by default, as paper 001) is injected into
every ``Conv2d`` of the UNet with ``peft.inject_adapter_in_model`` — diffusers'
``UNet2DModel`` has no ``add_adapter``. Only the adapter is trained, with Adam
(lr 1e-4, 400 iterations: Table 1) on ℓ_simple (eq. 6):

    ℓ_simple = ‖ε − ε_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t)‖²,

over batches of 6 random crops of the adaptation images at the model's sample size, with
one random t shared by the batch. The images are either y itself (eq. 18, method
``ia_y``) or the K retrieved neighbours (eq. 20, ADIR). Images smaller than the crop are
upsampled (bicubic) to it; larger ones are cropped at random. With a learned-variance
model only the ε channels enter the loss (the paper saw no benefit from Σ).

Contract: after ``remove_lora`` (or leaving ``lora_adapter``) the UNet holds exactly its
original modules and tensors — ``state_dict_hash`` is unchanged — so rows never leak
into each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

ADAPTER = "row"


def conv_module_names(unet: torch.nn.Module) -> list[str]:
    """Names of every Conv2d in the UNet (conv_in/out, resnet convs, shortcuts, samplers)."""
    return [name for name, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d)]


def attach_lora(unet: torch.nn.Module, rank: int = 16, alpha: int = 8, name: str = ADAPTER) -> list[torch.nn.Parameter]:
    """Inject a fresh LoRA adapter into all Conv2d layers; return its trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    if any("lora_" in n for n, _ in unet.named_parameters()):
        raise RuntimeError("the UNet already carries a LoRA adapter; remove it first")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=conv_module_names(unet), lora_dropout=0.0)
    inject_adapter_in_model(config, unet, adapter_name=name)
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def remove_lora(unet: torch.nn.Module) -> None:
    """Replace every LoRA-wrapped layer by its untouched base layer."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(n, m) for n, m in unet.named_modules() if isinstance(m, LoraLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, module.get_base_layer())
    if hasattr(unet, "peft_config"):
        del unet.peft_config


@contextlib.contextmanager
def lora_adapter(model, rank: int = 16, alpha: int = 8) -> Iterator[list[torch.nn.Parameter]]:
    """Attach a fresh adapter for one row; it is removed on exit, even on error."""
    params = attach_lora(model.unet, rank, alpha)
    try:
        yield params
    finally:
        remove_lora(model.unet)


def state_dict_hash(module: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict, in key order (bit-identity check)."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
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
    """ℓ_simple (eq. 6) at training timesteps ``t`` (int or one per image), batch mean."""
    acp = model.schedule.full().alphas_cumprod.to(model.device)
    t = torch.as_tensor(t, device=model.device).expand(images.shape[0])
    a = acp[t].to(images.dtype).view(-1, 1, 1, 1)
    xt = a.sqrt() * images + (1 - a).sqrt() * noise
    eps = model.unet(xt.to(model.dtype), t).sample[:, : model.in_channels].to(images.dtype)
    return torch.mean((eps - noise) ** 2)


def adapt_lora(model, images: torch.Tensor, params: list[torch.nn.Parameter], iters: int = 400,
               lr: float = 1e-4, batch_size: int = 6, crop_size: int | None = None, seed: int = 0,
               callback: Callable[[int, float], None] | None = None) -> dict:
    """Train the attached adapter ``params`` on ``images`` (eq. 18 / eq. 20)."""
    size = crop_size or model.sample_size
    images = images.to(model.device, torch.float32)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    T = model.schedule.num_train_timesteps
    start = time.perf_counter()
    losses = []
    model.unet.train()
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
            if value != value:
                from restore_core.errors import SamplingDivergedError

                raise SamplingDivergedError(f"NaN adaptation loss at iteration {it + 1}; lower adapt_lr")
            losses.append(value)
            if callback is not None:
                callback(it, value)
    finally:
        model.unet.eval()
    return {"iterations": iters, "adapt_loss_first": losses[0] if losses else None,
            "adapt_loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else None,
            "seconds_adapt": time.perf_counter() - start}


def save_adapter(unet: torch.nn.Module, path: str) -> None:
    """Save the attached adapter's weights as safetensors."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items()}, path)


def load_adapter(unet: torch.nn.Module, path: str) -> None:
    """Load adapter weights saved by ``save_adapter`` into an attached adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(unet, load_file(path), adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter {path} does not match this model: unexpected keys {unexpected[:3]}")
