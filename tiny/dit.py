"""Deterministic tiny DiT models (Flux and SD3/SD3.5 architectures) for the family-parametrized tests and the demo,
built with ComfyUI's own modules and loaded the way users load these families: UNETLoader (diffusion_models/),
CLIPLoader (text_encoders/) and VAELoader (vae/).

The tiny Flux has one double- and one single-stream block. ComfyUI 0.3.75 detects a Flux model with 24 heads of 128
channels whatever its width, so there it keeps Flux's 3072-wide stream; 0.33 counts the heads from the width, so there
it is 256 wide (two heads; 13 MB instead of 980 MB). It reads CLIP-L (768-d tokens and pooled vector), as detection
takes txt_in's and vector_in's widths from the weights. The tiny SD3 is an SD3.5-style MMDiT (RMS q/k norm,
one MMDiT-X self-attention block) four blocks deep, 256 wide; its CLIP is CLIP-L loaded as type sd3."""
from __future__ import annotations

import torch

from tiny.parts import TINY_SEED, build_clip_l, build_taesd_scaled, comfyui_version, half_state_dict, init_weights

TINY_FLUX = "readout_tiny_flux.safetensors"
TINY_SD3 = "readout_tiny_sd3.safetensors"
TINY_DIT_VAE = "readout_tiny_taesd16.safetensors"
TINY_DIT_CLIP_L = "readout_tiny_clip_l.safetensors"
FLUX_LATENT_SCALE = 0.3611
"""Flux's latent scale factor (ComfyUI's latent_formats.Flux); SD3's 1.5305 is close enough for a random VAE."""
DIT_LATENT_CHANNELS = 16

TINY_FLUX_CONFIG = {
    "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 768, "mlp_ratio": 4.0, "depth": 1,
    "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True,
    "guidance_embed": True,
}
FLUX_HEAD_WIDTH = 128
"""Channels per attention head: the sum of Flux's rotary axes."""
TINY_SD3_DEPTH = 4
TINY_SD3_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": TINY_SD3_DEPTH, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear",
                                "params": {"in_features": 4096, "out_features": 64 * TINY_SD3_DEPTH}},
    "num_patches": 32 * 32, "pos_embed_max_size": 32, "qk_norm": "rms", "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [0], "input_size": None,
}
MODULATION_GAIN = 0.1
"""Scales the random AdaLN modulation weights: at full scale the random shift and scale swamp the tokens."""


def tiny_flux_width() -> int:
    """The tiny Flux's stream width on the ComfyUI on sys.path: the narrowest its detection sizes right."""
    return 256 if comfyui_version() >= (0, 33, 0) else 3072


def _flux_params() -> dict:
    """The tiny Flux config, with the fields this ComfyUI's FluxParams adds (0.33 names the text id axes)."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    fields = {field.name for field in dataclasses.fields(FluxParams)}
    width = tiny_flux_width()
    return {**TINY_FLUX_CONFIG, "hidden_size": width, "num_heads": width // FLUX_HEAD_WIDTH,
            **({"txt_ids_dims": []} if "txt_ids_dims" in fields else {})}


def _tame_modulation(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ("mod" in name or "adaLN" in name) and param.ndim >= 2:
                param.mul_(MODULATION_GAIN)


def build_flux(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny Flux (guidance-distilled like dev) as ComfyUI's own Flux module."""
    from comfy.ldm.flux.model import Flux
    import comfy.ops

    model = Flux(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu", **_flux_params())
    init_weights(model, seed)
    _tame_modulation(model)
    return model


def build_sd3(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny SD3.5-style MMDiT as ComfyUI's own module (its position table filled, as checkpoints carry it)."""
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    import comfy.ops

    model = OpenAISignatureMMDITWrapper(**TINY_SD3_CONFIG, operations=comfy.ops.disable_weight_init,
                                        dtype=torch.float32, device="cpu")
    init_weights(model, seed)
    _tame_modulation(model)
    with torch.no_grad():
        model.pos_embed.copy_(0.1 * torch.randn(model.pos_embed.shape, generator=torch.Generator().manual_seed(seed)))
    return model


def tiny_flux_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    return half_state_dict(build_flux(seed + 30), "")


def tiny_sd3_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    return half_state_dict(build_sd3(seed + 31), "")


def tiny_dit_vae_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """A 16-channel TAESD (the Flux/SD3 latent) that VAELoader reads from vae/."""
    return half_state_dict(build_taesd_scaled(seed + 32, FLUX_LATENT_SCALE, DIT_LATENT_CHANNELS), "")


def tiny_clip_l_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The tiny CLIP-L as a text encoder file for CLIPLoader."""
    sd = half_state_dict(build_clip_l(seed + 2), "")
    sd.pop("text_projection.weight", None)
    return sd
