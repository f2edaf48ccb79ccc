"""The tiny model files of the test bed and the demo (tiny/models.py, tiny/sdxl.py, tiny/dit.py), written where
missing or outdated."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import torch

from tiny import dit, families
from tiny.models import (TINY_2026_FAMILIES, TINY_2026_HEAD_KINDS, TINY_CHECKPOINT, TINY_CONTROLNET,
                         TINY_DIT_FAMILIES, TINY_FAMILIES, TINY_HEAD_KINDS, TINY_LORA,
                         TINY_MIDDLE_UNET, TINY_SDXL_CHECKPOINT, TINY_SEED, TINY_T2I_ADAPTER, official_head_checkpoint,
                         tiny_checkpoint_state_dict, tiny_controlnet_state_dict, tiny_head_config, tiny_head_name,
                         tiny_head_state_dict, tiny_lora_state_dict, tiny_middle_unet_state_dict,
                         tiny_t2i_adapter_state_dict)
from tiny.parts import comfyui_version
from tiny.sdxl import tiny_sdxl_checkpoint_state_dict

TINY_VERSION = "4"
"""Bumped when generated tiny files change, so that older copies are rewritten."""


@dataclass(frozen=True)
class TinyFile:
    """One generated model file: ComfyUI model folder, file name, and how to write it."""

    folder: str
    name: str
    write: Callable[[str], None]
    per_comfyui: bool = False
    """Built from module layouts that differ between ComfyUI versions (0.33's Flux and MMDiT state dicts are not
    detected by 0.3.75): written into each ComfyUI's own models folder, not the shared one."""
    since: tuple[int, ...] = (0,)
    """The first ComfyUI version that detects it (older ones skip it)."""


def _tensors_file(make: Callable[[], dict[str, torch.Tensor]]) -> Callable[[str], None]:
    def write(path: str) -> None:
        from safetensors.torch import save_file

        save_file(make(), path, metadata={"generator": "tiny.models", "seed": str(TINY_SEED), "version": TINY_VERSION})
    return write


def _head_file(kind: str, official: bool, family: str = "sd15") -> Callable[[str], None]:
    def write(path: str) -> None:
        from readout.heads.files import save_head_safetensors

        config, state_dict = tiny_head_config(kind, family), tiny_head_state_dict(kind, family=family)
        if official:
            torch.save(official_head_checkpoint(config, state_dict), path)
        else:
            save_head_safetensors(path, config, state_dict)
    return write


def tiny_files() -> list[TinyFile]:
    """Every tiny model file the tests and the demo need; extend here for new model kinds."""
    files = [
        TinyFile("checkpoints", TINY_CHECKPOINT, _tensors_file(tiny_checkpoint_state_dict)),
        TinyFile("controlnet", TINY_CONTROLNET, _tensors_file(tiny_controlnet_state_dict)),
        TinyFile("loras", TINY_LORA, _tensors_file(tiny_lora_state_dict)),
        TinyFile("controlnet", TINY_T2I_ADAPTER, _tensors_file(tiny_t2i_adapter_state_dict)),
        TinyFile("diffusion_models", TINY_MIDDLE_UNET, _tensors_file(tiny_middle_unet_state_dict)),
    ]
    files.append(TinyFile("checkpoints", TINY_SDXL_CHECKPOINT, _tensors_file(tiny_sdxl_checkpoint_state_dict)))
    files += [TinyFile("diffusion_models", dit.TINY_FLUX, _tensors_file(dit.tiny_flux_state_dict), per_comfyui=True),
              TinyFile("diffusion_models", dit.TINY_SD3, _tensors_file(dit.tiny_sd3_state_dict), per_comfyui=True),
              TinyFile("vae", dit.TINY_DIT_VAE, _tensors_file(dit.tiny_dit_vae_state_dict)),
              TinyFile("text_encoders", dit.TINY_DIT_CLIP_L, _tensors_file(dit.tiny_clip_l_state_dict))]
    files += [TinyFile("diffusion_models", name, _tensors_file(make), per_comfyui=True, since=families.DETECTED_SINCE)
              for name, make in ((families.TINY_FLUX2, families.tiny_flux2_state_dict),
                                 (families.TINY_LUMINA2, families.tiny_lumina2_state_dict),
                                 (families.TINY_QWEN_IMAGE, families.tiny_qwen_image_state_dict),
                                 (families.TINY_KREA2, families.tiny_krea2_state_dict))]
    files += [TinyFile("vae_approx", f"{families.TAEF2}_{part}.safetensors",
                       _tensors_file(lambda index=index: families.tiny_taef2_state_dicts()[index]))
              for index, part in enumerate(("encoder", "decoder"))]
    files += [TinyFile("readout_heads", tiny_head_name(k, family=f), _head_file(k, False, f), per_comfyui=f == "flux")
              for f in TINY_FAMILIES + TINY_DIT_FAMILIES for k in TINY_HEAD_KINDS]
    files += [TinyFile("readout_heads", tiny_head_name(k, family=f), _head_file(k, False, f))
              for f in TINY_2026_FAMILIES for k in TINY_2026_HEAD_KINDS]
    files.append(TinyFile("readout_heads", tiny_head_name("pose", ".pt"), _head_file("pose", True)))
    return files


def _is_current(path: str) -> bool:
    """False for a generated .safetensors model written by an older version of this module, or a tiny head whose
    stored config is not the one its name now stands for (e.g. an older tiny SDXL head of other decoder dims)."""
    if not path.endswith(".safetensors"):
        return True
    from safetensors import safe_open

    from readout.heads.files import CONFIG_METADATA_KEY

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if CONFIG_METADATA_KEY in metadata:
        expected = {tiny_head_name(k, family=f): tiny_head_config(k, f)
                    for f in TINY_FAMILIES + TINY_DIT_FAMILIES + TINY_2026_FAMILIES for k in TINY_HEAD_KINDS}
        config = expected.get(os.path.basename(path))
        return config is None or json.loads(metadata[CONFIG_METADATA_KEY]) == config.to_dict()
    return metadata.get("generator") != "tiny.models" or metadata.get("version") == TINY_VERSION


def write_tiny_models(models_dir: str, force: bool = False, per_comfyui: bool | None = None) -> list[str]:
    """Write missing tiny model files under a models folder (only those whose `per_comfyui` is this, when given);
    return the paths written."""
    written = []
    for item in tiny_files():
        if per_comfyui is not None and item.per_comfyui != per_comfyui:
            continue
        if item.per_comfyui and comfyui_version() < item.since:
            continue
        path = os.path.join(models_dir, item.folder, item.name)
        if os.path.exists(path) and not force and _is_current(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".part"
        item.write(tmp)
        os.replace(tmp, path)
        written.append(path)
    return written
