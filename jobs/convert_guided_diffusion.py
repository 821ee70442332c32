"""``adir convert-guided-diffusion``: an OpenAI guided-diffusion ``.pt`` → a diffusers folder.

Example (the paper's prior, then a restoration with it)::

    adir convert-guided-diffusion --checkpoint 256x256_diffusion_uncond.pt --output models/openai256
    adir restore ... --set model=models/openai256

The checkpoint is read with ``torch.load(weights_only=True)`` from a path or fsspec URI;
``--variant`` (``imagenet256-uncond`` or ``ffhq256``) is inferred from the keys when not
given. A checkpoint with missing or unknown keys or a wrong shape exits with status 2 and
names the keys (``restore_core.models.guided_diffusion``).
"""

from __future__ import annotations

import argparse

from restore_core.models.guided_diffusion import (
    VARIANTS,
    load_checkpoint,
    write_diffusers_folder,
)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="OpenAI .pt state dict (path or fsspec URI)")
    p.add_argument("--output", required=True, help="diffusers folder to write (path or fsspec URI)")
    p.add_argument("--variant", choices=tuple(VARIANTS), default=None,
                   help="architecture of the checkpoint (default: inferred from its keys)")


def main(args: argparse.Namespace) -> int:
    state_dict = load_checkpoint(args.checkpoint)
    variant = write_diffusers_folder(state_dict, args.output, args.variant, source=args.checkpoint)
    print(f"wrote {args.output} (variant {variant}); restore with --set model={args.output}")
    return 0
