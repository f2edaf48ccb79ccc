"""Where the world's files live, and how its scripts find ComfyUI."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS_DIR = os.path.join(REPO, "world", "weights")
VAE_FILE = "readout_world_vae.safetensors"
UNET_FILE = "readout_world_unet64.safetensors"
CHECKPOINT = "readout_world_sd15.safetensors"
HEAD_KINDS = ("depth", "edge", "correspondence", "appearance")
FLUX_WEIGHTS = "readout_world_flux128.safetensors"
"""The world's Flux, stored with factored weight matrices (world.flux)."""
FLUX_DIFFUSION_MODEL = "readout_world_flux.safetensors"
FLUX_VAE = "readout_world_taesd16.safetensors"
ZIMAGE_WEIGHTS = "readout_world_zimage256.safetensors"
"""The world's Z-Image, stored narrow with factored weight matrices (world.zimage)."""
ZIMAGE_DIFFUSION_MODEL = "readout_world_zimage.safetensors"
QWEN_IMAGE_WEIGHTS = "readout_world_qwen_image128.safetensors"
"""The world's Qwen-Image-Edit, stored narrow with factored weight matrices (world.qwen_image)."""
QWEN_IMAGE_DIFFUSION_MODEL = "readout_world_qwen_image.safetensors"
CLIP_L = "readout_world_clip_l.safetensors"


def head_name(kind: str, family: str = "sd15") -> str:
    role = "spatial" if kind in ("depth", "edge") else "drag"
    return f"readout_world_{family}_{role}_{kind}.safetensors"


def all_head_names() -> list[str]:
    """Every world head's file name, on the SD1.5 world model, the world's Flux, Z-Image and Qwen-Image-Edit."""
    return [head_name(kind, family) for family in ("sd15", "flux", "zimage", "qwen_image") for kind in HEAD_KINDS]


def import_comfyui() -> str:
    """Put the test bed's ComfyUI (or COMFYUI_PATH) on sys.path, on the CPU; returns its folder."""
    from testbed import add_comfyui_to_sys_path, comfyui_path

    folder = comfyui_path()
    add_comfyui_to_sys_path(folder)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return folder
