"""Pieces every tiny model is made of: deterministic weights, float16 state dicts, the TAESD VAE and CLIP text
encoders (real ComfyUI architectures, random weights)."""
from __future__ import annotations

import json
import math
import os

import torch

TINY_SEED = 1234


def comfyui_version() -> tuple[int, ...]:
    """The version of the ComfyUI on sys.path, e.g. (0, 33, 0)."""
    import comfyui_version as version

    return tuple(int(part) for part in version.__version__.split(".")[:3])


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded for one tiny part."""
    return torch.Generator().manual_seed(seed)


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter deterministically: fan-in scaled normals for matrices, identity norms, zero biases."""
    gen = generator(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("bias") or name.endswith("vae_shift"):
                param.zero_()
            else:
                param.fill_(1.0)


def half_state_dict(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The module's state dict in float16, keys prefixed (how tiny files are stored)."""
    return {prefix + k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}


def build_taesd_scaled(seed: int, latent_scale: float, latent_channels: int = 4) -> torch.nn.Module:
    """A TAESD VAE (2.4M params) that ComfyUI loads from inside a checkpoint, its `vae_scale` calibrated so that
    latents have unit spread in the UNet's space (the family's latent scale; else the UNet would see noise only)."""
    from comfy.taesd.taesd import TAESD

    taesd = TAESD(latent_channels=latent_channels)
    init_weights(taesd, seed)
    gen = generator(seed)
    tiles = torch.rand(8, 3, 8, 8, generator=gen)
    images = torch.nn.functional.interpolate(tiles, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        spread = taesd.taesd_encoder(images).std()
        taesd.vae_scale.fill_(float(spread) * latent_scale)
    return taesd


def build_clip_text_model(seed: int, config_file: str) -> torch.nn.Module:
    """A real-architecture CLIP text encoder from one of ComfyUI's config files (in `comfy/`), random weights."""
    import comfy.clip_model
    import comfy.ops

    with open(os.path.join(os.path.dirname(comfy.clip_model.__file__), config_file), encoding="utf-8") as f:
        config = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    init_weights(clip, seed)
    with torch.no_grad():
        clip.text_model.embeddings.token_embedding.weight.mul_(0.5)
        clip.text_model.embeddings.position_embedding.weight.mul_(0.1)
    return clip


def build_clip_l(seed: int) -> torch.nn.Module:
    """A real-architecture SD1 CLIP-L text encoder with random weights."""
    return build_clip_text_model(seed, "sd1_clip_config.json")
