"""Where the world's files live, and how its scripts find ComfyUI."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS_DIR = os.path.join(REPO, "world", "weights")
VAE_FILE = "readout_world_vae.safetensors"
UNET_FILE = "readout_world_unet64.safetensors"
CHECKPOINT = "readout_world_sd15.safetensors"
HEAD_KINDS = ("depth", "edge", "correspondence", "appearance")


def head_name(kind: str) -> str:
    role = "spatial" if kind in ("depth", "edge") else "drag"
    return f"readout_world_sd15_{role}_{kind}.safetensors"


def import_comfyui() -> str:
    """Put the test bed's ComfyUI (or COMFYUI_PATH) on sys.path, on the CPU; returns its folder."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from testbed import add_comfyui_to_sys_path, comfyui_path

    folder = comfyui_path()
    add_comfyui_to_sys_path(folder)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    return folder
