"""Tiny random Stable Diffusion pipelines for offline tests, written with ``save_pretrained``.

Both pipelines have the real architectures' wiring at toy width: the x4 upscaler (UNet
``in_channels = 4 latent + 3 low-res image = 7``, ``class_embed_type`` for the noise level,
a 3-level VAE so the decoded image is 4x the latent, v-prediction DDIM scheduler and a DDPM
``low_res_scheduler``) and the inpainting model (UNet ``in_channels = 4 + 1 mask + 4 masked
latent = 9``, 4-level VAE = 8x, ε-prediction). The CLIP tokenizer is written from a small
vocab/merges pair so nothing is downloaded. They cannot restore anything: quality is only
measured with real weights; the tests check shapes, wiring and the adapter contract.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

# CLIP's BPE marks word ends with "</w>"; letters and a few whole words are enough here
_WORDS = ("a", "photo", "of", "cat", "dog", "red", "house", "tree", "sky")


def write_tiny_clip_tokenizer(path: str, max_length: int = 16):
    """A CLIPTokenizer over the 26 letters and a few words, from a vocab.json + merges.txt
    written here (letters outside the vocabulary become the unknown token)."""
    from transformers import CLIPTokenizer

    os.makedirs(path, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]
    merges = []
    for word in _WORDS:  # left-to-right merges building "word</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            tokens.append(pieces[0])
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}, f)
    return CLIPTokenizer.from_pretrained(path)


def _text_encoder(vocab_size: int, max_length: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2,
                                        max_position_embeddings=max_length, projection_dim=32,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))


def _unet(in_channels: int, **extra):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **extra)


def _vae(levels: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * levels,
                         down_block_types=("DownEncoderBlock2D",) * levels, scaling_factor=scaling_factor,
                         up_block_types=("UpDecoderBlock2D",) * levels, norm_num_groups=4, layers_per_block=1)


def _tokenizer():
    with tempfile.TemporaryDirectory() as tmp:
        return write_tiny_clip_tokenizer(tmp)


def save_tiny_upscaler(path: str, seed: int = 0) -> str:
    """A tiny random StableDiffusionUpscalePipeline (v-prediction, 4x VAE) under ``path``."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _tokenizer()
        pipe = StableDiffusionUpscalePipeline(
            vae=_vae(3, 0.08333), text_encoder=_text_encoder(len(tokenizer), tokenizer.model_max_length),
            tokenizer=tokenizer, unet=_unet(7, class_embed_type=None, num_class_embeds=1000),
            low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear"),
            scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", steps_offset=1,
                                    prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False),
            max_noise_level=350)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_inpainter(path: str, seed: int = 0) -> str:
    """A tiny random StableDiffusionInpaintPipeline (ε-prediction, 8x VAE) under ``path``."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = _tokenizer()
        pipe = StableDiffusionInpaintPipeline(
            vae=_vae(4, 0.18215), text_encoder=_text_encoder(len(tokenizer), tokenizer.model_max_length),
            tokenizer=tokenizer, unet=_unet(9),
            scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False,
                                    set_alpha_to_one=False, steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
