"""Assemble the committed world weights into ComfyUI's formats: an SD1.5 single-file checkpoint (the UNet widened
to 320 channels, the TAESD VAE, the deterministic text encoder) and the world's readout heads."""
from __future__ import annotations

import hashlib
import os

import torch

from world import paths

ASSEMBLY_VERSION = "1"
SOURCE_KEY = "world_weights"


def _digest(*names: str) -> str:
    digest = hashlib.sha256(ASSEMBLY_VERSION.encode())
    for name in names:
        with open(os.path.join(paths.WEIGHTS_DIR, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def load_vae(weights_dir: str = paths.WEIGHTS_DIR) -> torch.nn.Module:
    """The world's TAESD from its committed patch encoder and decoder."""
    from safetensors.torch import load_file

    from world.autoencoder import build_taesd

    vae = {k: v.float() for k, v in load_file(os.path.join(weights_dir, paths.VAE_FILE)).items()}
    decoder = {k[len("decoder."):]: v for k, v in vae.items() if k.startswith("decoder.")}
    return build_taesd(vae["patch_weight"], vae["patch_mean"], decoder)


def checkpoint_state_dict(weights_dir: str = paths.WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The world model in the original SD1.5 single-file layout, fp16."""
    from safetensors.torch import load_file

    from world.text_encoder import text_encoder_state_dict
    from world.unet import widen_state_dict

    unet = widen_state_dict(load_file(os.path.join(weights_dir, paths.UNET_FILE)))
    sd = {f"model.diffusion_model.{k}": v.half().contiguous() for k, v in unet.items()}
    sd.update({f"first_stage_model.{k}": v.detach().half().contiguous() for k, v in load_vae(weights_dir).state_dict().items()})
    sd.update(text_encoder_state_dict())
    return sd


def _is_current(path: str, digest: str) -> bool:
    """Whether a generated file exists and was built from the committed weights of this digest."""
    from safetensors import safe_open

    if not os.path.exists(path):
        return False
    with safe_open(path, framework="pt") as handle:
        return (handle.metadata() or {}).get(SOURCE_KEY) == digest


def write_world_models(models_dir: str) -> list[str]:
    """Write the world checkpoint (when missing or built from other weights) and copy the world heads; return paths."""
    from safetensors.torch import save_file

    from world.heads import expand_head_file

    written = []
    path = os.path.join(models_dir, "checkpoints", paths.CHECKPOINT)
    digest = _digest(paths.UNET_FILE, paths.VAE_FILE)
    if not _is_current(path, digest):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(checkpoint_state_dict(), path + ".part", metadata={"generator": "world.assemble", SOURCE_KEY: digest})
        os.replace(path + ".part", path)
        written.append(path)
    for kind in paths.HEAD_KINDS:
        name = paths.head_name(kind)
        if not os.path.exists(os.path.join(paths.WEIGHTS_DIR, name)):
            continue
        target = os.path.join(models_dir, "readout_heads", name)
        digest = _digest(name)
        if not _is_current(target, digest):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            expand_head_file(os.path.join(paths.WEIGHTS_DIR, name), target + ".part", {SOURCE_KEY: digest})
            os.replace(target + ".part", target)
            written.append(target)
    return written
