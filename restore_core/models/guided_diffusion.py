"""OpenAI guided-diffusion checkpoints as diffusers folders (the prior ADIR's tables use).

ADIR (Tables 2, 4, 5) restores with OpenAI's unconditional ImageNet model
``256x256_diffusion_uncond.pt`` ("Diffusion Models Beat GANs on Image Synthesis"); the
FFHQ model used by DPS / ILVR (``ffhq_10m.pt``) is the same network at half the width.
This module maps such a state dict onto a diffusers ``UNet2DModel`` that represents the
network exactly, and writes the folder ``restore_core.models.pixel_unet`` loads
(``unet/`` in safetensors, ``scheduler/`` with T = 1000 linear β and the learned-range
variance Σ of ADIR eq. 4, 6 output channels).

Owns ``VARIANTS``, ``unet_config``, ``convert_state_dict``, ``load_checkpoint`` and
``write_diffusers_folder``; imports torch, diffusers (lazily) and ``restore_core.storage``.

The architecture (both variants): channel multipliers (1, 1, 2, 2, 4, 4), BigGAN-style
residual up/down-sampling blocks (``resblock_updown``), scale-shift normalisation of the
time embedding, 64 channels per attention head, GroupNorm(32, eps 1e-5), sinusoidal
embedding with cos first (``flip_sin_to_cos``, shift 0). They differ in width (256 / 128
channels), residual blocks per level (2 / 1) and the levels with self-attention
(32², 16², 8² / 16² only); the middle block always has attention.

Key mapping (OpenAI → diffusers): ``input_blocks`` → ``conv_in`` / ``down_blocks.L.
{resnets,attentions,downsamplers}``, ``middle_block`` → ``mid_block``, ``output_blocks`` →
``up_blocks``, ``out`` → ``conv_norm_out`` / ``conv_out``; a ResBlock's in_layers.0/2,
emb_layers.1, out_layers.0/3, skip_connection become norm1, conv1, time_emb_proj, norm2,
conv2, conv_shortcut. The attention's fused 1×1 ``qkv`` uses guided-diffusion's *legacy*
head order (``QKVAttentionLegacy``): rows are grouped per head as [q_h, k_h, v_h], so the
weight is split as (heads, 3, 64, C), not in three contiguous chunks.

Every key of the checkpoint must be used and every key of the model filled, with the
shape the architecture implies; otherwise a ``ModelLoadError`` names the offending keys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch

from restore_core import storage
from restore_core.errors import InputError, ModelLoadError

HEAD_CHANNELS = 64
# deepinv's DiffUNet registers these two schedule buffers; OpenAI's files do not carry them.
IGNORED_KEYS = frozenset({"sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod"})
_LISTED = 5


@dataclass(frozen=True)
class Architecture:
    """guided-diffusion's ``create_model`` arguments that differ between the variants."""

    model_channels: int
    num_res_blocks: int
    attention_levels: tuple[int, ...]  # level L has resolution 256 / 2^L
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    in_channels: int = 3
    out_channels: int = 6  # ε and the learned-range interpolation v
    sample_size: int = 256


VARIANTS: dict[str, Architecture] = {
    # attention_resolutions "32,16,8", num_channels 256, num_res_blocks 2
    "imagenet256-uncond": Architecture(model_channels=256, num_res_blocks=2, attention_levels=(3, 4, 5)),
    # attention_resolutions "16", num_channels 128, num_res_blocks 1 (DPS / ILVR ffhq_10m.pt)
    "ffhq256": Architecture(model_channels=128, num_res_blocks=1, attention_levels=(4,)),
}


def get_variant(name: str) -> Architecture:
    if name not in VARIANTS:
        raise InputError(f"unknown guided-diffusion variant {name!r}; accepted: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def unet_config(arch: Architecture) -> dict:
    """``UNet2DModel`` keyword arguments that represent ``arch`` exactly."""
    levels = range(len(arch.channel_mult))
    return {
        "sample_size": arch.sample_size, "in_channels": arch.in_channels, "out_channels": arch.out_channels,
        "block_out_channels": tuple(arch.model_channels * m for m in arch.channel_mult),
        "layers_per_block": arch.num_res_blocks,
        "down_block_types": tuple("AttnDownBlock2D" if L in arch.attention_levels else "ResnetDownsampleBlock2D"
                                  for L in levels),
        "up_block_types": tuple("AttnUpBlock2D" if L in arch.attention_levels else "ResnetUpsampleBlock2D"
                                for L in reversed(levels)),
        "downsample_type": "resnet", "upsample_type": "resnet", "resnet_time_scale_shift": "scale_shift",
        "attention_head_dim": HEAD_CHANNELS, "norm_num_groups": 32, "attn_norm_num_groups": 32, "norm_eps": 1e-5,
        "flip_sin_to_cos": True, "freq_shift": 0, "dropout": 0.0,
    }


class _Plan:
    """The OpenAI → diffusers correspondence of one architecture, built by walking
    guided-diffusion's ``UNetModel.__init__`` loop."""

    def __init__(self, arch: Architecture):
        self.renames: dict[str, str] = {}  # OpenAI key -> diffusers key (same tensor)
        self.squeeze: set[str] = set()  # 1×1 conv1d weights that become Linear weights
        self.qkv: dict[str, str] = {}  # OpenAI attention prefix -> diffusers attention prefix
        mc, last = arch.model_channels, len(arch.channel_mult) - 1
        self._param("time_embed.0", "time_embedding.linear_1")
        self._param("time_embed.2", "time_embedding.linear_2")
        self._param("input_blocks.0.0", "conv_in")
        ch, chans, k = mc, [mc], 1
        for level, mult in enumerate(arch.channel_mult):
            for j in range(arch.num_res_blocks):
                self._res(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", ch, mc * mult)
                ch = mc * mult
                if level in arch.attention_levels:
                    self._attn(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}")
                chans.append(ch)
                k += 1
            if level != last:
                self._res(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", ch, ch)
                chans.append(ch)
                k += 1
        self._res("middle_block.0", "mid_block.resnets.0", ch, ch)
        self._attn("middle_block.1", "mid_block.attentions.0")
        self._res("middle_block.2", "mid_block.resnets.1", ch, ch)
        k = 0
        for level, mult in reversed(list(enumerate(arch.channel_mult))):
            up = last - level
            for i in range(arch.num_res_blocks + 1):
                self._res(f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", ch + chans.pop(), mc * mult)
                ch, sub = mc * mult, 1
                if level in arch.attention_levels:
                    self._attn(f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}")
                    sub = 2
                if level and i == arch.num_res_blocks:
                    self._res(f"output_blocks.{k}.{sub}", f"up_blocks.{up}.upsamplers.0", ch, ch)
                k += 1
        self._param("out.0", "conv_norm_out")
        self._param("out.2", "conv_out")

    def _param(self, src: str, dst: str) -> None:
        for leaf in ("weight", "bias"):
            self.renames[f"{src}.{leaf}"] = f"{dst}.{leaf}"

    def _res(self, src: str, dst: str, cin: int, cout: int) -> None:
        parts = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2")]
        if cin != cout:
            parts.append(("skip_connection", "conv_shortcut"))
        for a, b in parts:
            self._param(f"{src}.{a}", f"{dst}.{b}")

    def _attn(self, src: str, dst: str) -> None:
        self._param(f"{src}.norm", f"{dst}.group_norm")
        self._param(f"{src}.proj_out", f"{dst}.to_out.0")
        self.squeeze.add(f"{src}.proj_out.weight")
        self.qkv[src] = dst

    def source_keys(self) -> set[str]:
        return set(self.renames) | {f"{p}.qkv.{leaf}" for p in self.qkv for leaf in ("weight", "bias")}


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _key_problems(state_dict: dict, plan: _Plan) -> tuple[set[str], set[str]]:
    present = set(state_dict) - IGNORED_KEYS
    expected = plan.source_keys()
    return expected - present, present - expected


def infer_variant(state_dict: dict) -> str:
    """The variant whose key set the checkpoint has (ModelLoadError naming the differences
    from the closest variant otherwise)."""
    scored = []
    for name, arch in VARIANTS.items():
        missing, unknown = _key_problems(state_dict, _Plan(arch))
        if not missing and not unknown:
            return name
        scored.append((len(missing) + len(unknown), name, missing, unknown))
    _, name, missing, unknown = min(scored)
    raise ModelLoadError(_mismatch_message(name, missing, unknown))


def _mismatch_message(variant: str, missing: set[str], unknown: set[str]) -> str:
    parts = [f"checkpoint does not match guided-diffusion variant {variant!r}:"]
    if missing:
        parts.append(f"missing keys {_listing(missing)}")
    if unknown:
        parts.append(f"unknown keys {_listing(unknown)}")
    return " ".join(parts) + f" (variants: {', '.join(VARIANTS)})"


def _expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    from diffusers import UNet2DModel

    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(arch))
    return {k: tuple(v.shape) for k, v in unet.state_dict().items()}


def convert_state_dict(state_dict: dict, variant: str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """(variant, diffusers state dict) for an OpenAI guided-diffusion ``state_dict``.

    ``variant=None`` infers it from the key set. Raises ``ModelLoadError`` naming missing
    or unknown keys, a non-tensor entry, or a key whose shape the architecture does not
    give (with both shapes).
    """
    name = variant or infer_variant(state_dict)
    arch = get_variant(name)
    plan = _Plan(arch)
    missing, unknown = _key_problems(state_dict, plan)
    if missing or unknown:
        raise ModelLoadError(_mismatch_message(name, missing, unknown))
    bad = [k for k in plan.source_keys() if not isinstance(state_dict[k], torch.Tensor)]
    if bad:
        raise ModelLoadError(f"checkpoint entries are not tensors: {_listing(bad)}")
    target = _expected_shapes(arch)
    out: dict[str, torch.Tensor] = {}
    for src, dst in plan.renames.items():
        want = target[dst] + ((1,) if src in plan.squeeze else ())
        _check_shape(state_dict, src, want, name)
        t = state_dict[src]
        out[dst] = (t[..., 0] if src in plan.squeeze else t).float().contiguous()
    for src, dst in plan.qkv.items():
        c = target[f"{dst}.to_q.weight"][0]
        heads = c // HEAD_CHANNELS
        _check_shape(state_dict, f"{src}.qkv.weight", (3 * c, c, 1), name)
        _check_shape(state_dict, f"{src}.qkv.bias", (3 * c,), name)
        w = state_dict[f"{src}.qkv.weight"].float().reshape(heads, 3, HEAD_CHANNELS, c)
        b = state_dict[f"{src}.qkv.bias"].float().reshape(heads, 3, HEAD_CHANNELS)
        for i, proj in enumerate(("to_q", "to_k", "to_v")):  # legacy order: per head [q, k, v]
            out[f"{dst}.{proj}.weight"] = w[:, i].reshape(c, c).contiguous()
            out[f"{dst}.{proj}.bias"] = b[:, i].reshape(c).contiguous()
    unfilled = set(target) - set(out)
    if unfilled:  # a mapping bug, not a bad file: still name the keys
        raise ModelLoadError(f"conversion left diffusers keys unfilled: {_listing(unfilled)}")
    return name, out


def _check_shape(state_dict: dict, key: str, want: tuple[int, ...], variant: str) -> None:
    got = tuple(state_dict[key].shape)
    if got != tuple(want):
        raise ModelLoadError(f"checkpoint key {key!r} has shape {got}, variant {variant!r} expects {tuple(want)}")


def build_unet(state_dict: dict, variant: str | None = None):
    """(variant, ``UNet2DModel`` in eval mode) holding the converted weights (no random init)."""
    from diffusers import UNet2DModel

    name, converted = convert_state_dict(state_dict, variant)
    with torch.device("meta"):
        unet = UNet2DModel(**unet_config(VARIANTS[name]))
    unet.load_state_dict(converted, strict=True, assign=True)
    return name, unet.eval()


def load_checkpoint(uri: str) -> dict:
    """An OpenAI ``.pt`` state dict from a path or fsspec URI, read with
    ``torch.load(weights_only=True)`` (no pickled code runs) and memory-mapped."""
    path = storage.fetch_to_local(uri)
    if not os.path.isfile(path):
        raise InputError(f"checkpoint not found (or not a file): {uri}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot read checkpoint {uri!r} with torch.load(weights_only=True): {first}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"checkpoint {uri!r} holds a {type(sd).__name__}, expected a state dict")
    return sd


def scheduler():
    """guided-diffusion's training schedule: T = 1000, linear β from 1e-4 to 0.02, learned-range Σ."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         variance_type="learned_range", prediction_type="epsilon", clip_sample=True)


def write_diffusers_folder(state_dict: dict, output: str, variant: str | None = None, source: str = "") -> str:
    """Convert ``state_dict`` and write the pipeline layout (``unet/``, ``scheduler/``,
    ``conversion.json``) to ``output`` (a path or fsspec URI); returns the variant."""
    name, unet = build_unet(state_dict, variant)
    local = storage.to_local_path_if_file(output)
    work = local or tempfile.mkdtemp(prefix="adir-convert-")
    try:
        os.makedirs(work, exist_ok=True)
        unet.save_pretrained(os.path.join(work, "unet"), safe_serialization=True)
        scheduler().save_pretrained(os.path.join(work, "scheduler"))
        with open(os.path.join(work, "conversion.json"), "w") as fh:
            json.dump({"source": source, "variant": name, "format": "openai-guided-diffusion"}, fh, indent=1)
        if local is None:
            fs, path = storage.filesystem(output)
            fs.put(work.rstrip("/") + "/", path.rstrip("/") + "/", recursive=True)
    finally:
        if local is None:
            shutil.rmtree(work, ignore_errors=True)
    return name
