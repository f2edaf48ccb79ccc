"""A deterministic tiny SDXL-family checkpoint for the family-parametrized tests and the demo, built with ComfyUI's own
modules. ComfyUI detects it as Segmind Vega (an SDXL subclass): detection reads the model channels, the transformer
depth of each encoder ResBlock, the context and ADM sizes, never the channel multipliers, so its levels stay narrow."""
from __future__ import annotations

import torch

from tiny.parts import (TINY_SEED, build_clip_l, build_clip_text_model, build_taesd_scaled, half_state_dict,
                        init_weights)

SDXL_LATENT_SCALE = 0.13025
"""SDXL's latent scale factor (ComfyUI's latent_formats.SDXL)."""

TINY_SDXL_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 2, 2],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 2048,
    "num_heads": -1,
    "num_head_channels": 64,
    "use_linear_in_transformer": True,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "use_temporal_attention": False,
}
"""Segmind Vega's encoder layout (two ResBlocks a level, transformer depths 0, 1, 2) at 320, 640 and 640 channels: the
decoder has SDXL's 9 ResBlocks at three resolutions (640 channels where FreeU acts), and a middle block (SAG and PAG
act there)."""
LABEL_EMBEDDING_GAIN = 0.05
"""Scales the random ADM embedding (pooled CLIP-G and image sizes) added to the time embedding: at full scale it
swamps the features' dependence on the latent, and guidance barely moves a readout (trained SDXL's is tame)."""


def build_sdxl_unet(seed: int) -> torch.nn.Module:
    """The tiny SDXL-family UNet as ComfyUI's own UNetModel."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    unet = UNetModel(**TINY_SDXL_UNET_CONFIG, operations=comfy.ops.disable_weight_init)
    init_weights(unet, seed)
    with torch.no_grad():
        unet.label_emb[0][-1].weight.mul_(LABEL_EMBEDDING_GAIN)
    return unet


def build_clip_g(seed: int) -> torch.nn.Module:
    """SDXL's CLIP-G text encoder (ComfyUI's config: ComfyUI loads it only with all 32 layers) with random weights."""
    return build_clip_text_model(seed, "clip_config_bigg.json")


def tiny_sdxl_checkpoint_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """UNet, TAESD, CLIP-L and CLIP-G in SDXL's single-file layout, the text encoders written by ComfyUI's own
    SDXL saving conversion."""
    import comfy.supported_models

    clip = {"clip_l.transformer." + k: v for k, v in build_clip_l(seed + 2).state_dict().items()}
    clip.update({"clip_g.transformer." + k: v for k, v in build_clip_g(seed + 3).state_dict().items()})
    config = comfy.supported_models.SDXL(dict(TINY_SDXL_UNET_CONFIG))
    sd = {k: v.to(torch.float16).contiguous() for k, v in config.process_clip_state_dict_for_saving(clip).items()
          if v.is_floating_point()}
    sd.update(half_state_dict(build_sdxl_unet(seed), "model.diffusion_model."))
    sd.update(half_state_dict(build_taesd_scaled(seed + 1, SDXL_LATENT_SCALE), "first_stage_model."))
    return sd
