"""Assemble the committed world weights into ComfyUI's formats: an SD1.5 single-file checkpoint (the UNet widened
to 320 channels, the TAESD VAE, the deterministic text encoder) and the world's readout heads."""
from __future__ import annotations

import hashlib
import os

import torch

from world import paths
from world.text_encoder import text_encoder_state_dict

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

    from world.unet import widen_state_dict

    unet = widen_state_dict(load_file(os.path.join(weights_dir, paths.UNET_FILE)))
    sd = {f"model.diffusion_model.{k}": v.half().contiguous() for k, v in unet.items()}
    sd.update({f"first_stage_model.{k}": v.detach().half().contiguous() for k, v in load_vae(weights_dir).state_dict().items()})
    sd.update(text_encoder_state_dict())
    return sd


def flux_vae_state_dict(weights_dir: str = paths.WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The world's TAESD for Flux's 16-channel latent (fp16): the patch codes in the first 4 channels, zero in the
    rest, and `vae_scale` / `vae_shift` that make ComfyUI's Flux latent format hand the model the codes themselves."""
    from comfy.taesd.taesd import TAESD

    from world.autoencoder import write_patch_encoder
    from world.flux import FLUX_LATENT_CHANNELS, FLUX_LATENT_FORMAT

    world = load_vae(weights_dir)
    taesd = TAESD(latent_channels=FLUX_LATENT_CHANNELS)
    write_patch_encoder(taesd.taesd_encoder, *_patch_encoder(weights_dir))
    decoder = dict(world.taesd_decoder.state_dict())
    first = "1.weight"
    padded = torch.zeros(decoder[first].shape[0], FLUX_LATENT_CHANNELS, *decoder[first].shape[2:])
    padded[:, : decoder[first].shape[1]] = decoder[first]
    taesd.taesd_decoder.load_state_dict({**decoder, first: padded})
    with torch.no_grad():
        taesd.vae_scale.fill_(FLUX_LATENT_FORMAT[0])
        taesd.vae_shift.fill_(FLUX_LATENT_FORMAT[1])
    return {k: v.detach().half().contiguous() for k, v in taesd.state_dict().items()}


def _patch_encoder(weights_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    vae = load_file(os.path.join(weights_dir, paths.VAE_FILE))
    return vae["patch_weight"].float(), vae["patch_mean"].float()


def clip_l_state_dict() -> dict[str, torch.Tensor]:
    """The world's CLIP-L as a text encoder file for CLIPLoader (fp16)."""
    prefix = "cond_stage_model.transformer."
    return {k[len(prefix):]: v for k, v in text_encoder_state_dict().items()}


def flux_state_dict(weights_dir: str = paths.WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The world's Flux as ComfyUI's UNETLoader reads it (fp16, factored matrices multiplied out)."""
    from safetensors.torch import load_file

    from world.distill import dense_state_dict

    return dense_state_dict(load_file(os.path.join(weights_dir, paths.FLUX_WEIGHTS)))


def zimage_state_dict(weights_dir: str = paths.WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The world's Z-Image as ComfyUI's UNETLoader reads it (fp16): the stored narrow model's factors multiplied out,
    then tiled to Z-Image's width."""
    from safetensors.torch import load_file

    from world.distill import dense_state_dict
    from world.zimage import widen_state_dict

    narrow = {k: v.float() for k, v in dense_state_dict(load_file(os.path.join(weights_dir, paths.ZIMAGE_WEIGHTS))).items()}
    return {k: v.half().contiguous() for k, v in widen_state_dict(narrow).items()}


def qwen_image_state_dict(weights_dir: str = paths.WEIGHTS_DIR) -> dict[str, torch.Tensor]:
    """The world's Qwen-Image-Edit as ComfyUI's UNETLoader reads it (fp16): the stored narrow model's factors
    multiplied out, then tiled to Qwen-Image's width."""
    from safetensors.torch import load_file

    from world.distill import dense_state_dict
    from world.qwen_image import widen_state_dict

    stored = load_file(os.path.join(weights_dir, paths.QWEN_IMAGE_WEIGHTS))
    narrow = {k: v.float() for k, v in dense_state_dict(stored).items()}
    return {k: v.half().contiguous() for k, v in widen_state_dict(narrow).items()}


def _is_current(path: str, digest: str) -> bool:
    """Whether a generated file exists and was built from the committed weights of this digest."""
    from safetensors import safe_open

    if not os.path.exists(path):
        return False
    with safe_open(path, framework="pt") as handle:
        return (handle.metadata() or {}).get(SOURCE_KEY) == digest


def write_world_models(models_dir: str, zimage: bool = False, qwen_image: bool = False) -> list[str]:
    """Write the world checkpoint, the world's Flux files and the world heads where missing or built from other
    weights, with `zimage` the world Z-Image too (2.5 GB), with `qwen_image` the world Qwen-Image-Edit (1.4 GB):
    written for what uses them, not by the test bed's setup; return the paths written."""
    from safetensors.torch import save_file

    from world.heads import expand_head_file

    models = [("checkpoints", paths.CHECKPOINT, (paths.UNET_FILE, paths.VAE_FILE), checkpoint_state_dict)]
    transformers = [(paths.FLUX_DIFFUSION_MODEL, paths.FLUX_WEIGHTS, flux_state_dict, True),
                    (paths.ZIMAGE_DIFFUSION_MODEL, paths.ZIMAGE_WEIGHTS, zimage_state_dict, zimage),
                    (paths.QWEN_IMAGE_DIFFUSION_MODEL, paths.QWEN_IMAGE_WEIGHTS, qwen_image_state_dict, qwen_image)]
    transformers = [(name, stored, build) for name, stored, build, wanted in transformers
                    if wanted and os.path.exists(os.path.join(paths.WEIGHTS_DIR, stored))]
    models += [("diffusion_models", name, (stored,), build) for name, stored, build in transformers]
    if transformers:
        models += [("vae", paths.FLUX_VAE, (paths.VAE_FILE,), flux_vae_state_dict),
                   ("text_encoders", paths.CLIP_L, (), clip_l_state_dict)]
    written = []
    for folder, name, sources, build in models:
        path = os.path.join(models_dir, folder, name)
        digest = _digest(*sources)
        if not _is_current(path, digest):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file(build(), path + ".part", metadata={"generator": "world.assemble", SOURCE_KEY: digest})
            os.replace(path + ".part", path)
            written.append(path)
    for name in paths.all_head_names():
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
