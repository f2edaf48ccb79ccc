"""Deterministic tiny SD1.5-family models for tests and the demo, built with ComfyUI's own modules."""
from __future__ import annotations

import math

import torch

from readout.heads.architecture import DEFAULT_CONTROL_RANGES
from tiny.parts import TINY_SEED, build_clip_l, build_taesd_scaled, generator, half_state_dict, init_weights

TINY_CHECKPOINT = "readout_tiny_sd15.safetensors"
TINY_CONTROLNET = "readout_tiny_sd15_controlnet.safetensors"
TINY_LORA = "readout_tiny_sd15_lora.safetensors"
TINY_T2I_ADAPTER = "readout_tiny_sd15_t2i_adapter.safetensors"
TINY_MIDDLE_UNET = "readout_tiny_sd15_middle_unet.safetensors"
"""The tiny UNet plus a middle block (ResBlock, transformer, ResBlock), for patches that act there (SAG, PAG)."""

TINY_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 0],
    "transformer_depth_output": [1, 1, 0, 0],
    "transformer_depth_middle": -1,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
}
"""Two levels (320, 640 channels), one ResBlock each way: the decoder has 4 ResBlocks at two resolutions."""

TINY_MIDDLE_UNET_CONFIG = {**TINY_UNET_CONFIG, "transformer_depth_middle": 1}
TINY_DECODER_DIMS = [640, 640, 320, 320]
TINY_SDXL_CHECKPOINT = "readout_tiny_sdxl.safetensors"
"""The tiny SDXL-family checkpoint (tiny/sdxl.py)."""
TINY_SDXL_DECODER_DIMS = [640] * 6 + [320] * 3
"""SDXL's 9 decoder ResBlocks, at the tiny SDXL-family UNet's 640 and 320 channels."""
TINY_FAMILIES = ("sd15", "sdxl")
"""The UNet families: every family-parametrized test runs on each."""
TINY_DIT_FAMILIES = ("flux", "sd3")
"""The DiT families (tiny/dit.py): their own tests, through UNETLoader, CLIPLoader and VAELoader."""
TINY_2026_FAMILIES = ("flux2", "lumina2", "qwen_image", "krea2")
"""The families of late 2026 (tiny/families.py): a smoke set each, on ComfyUI 0.33."""
TINY_2026_HEAD_KINDS = ("depth", "correspondence", "appearance")
"""Their tiny heads: one spatial kind and a drag's two (qwen_image_edit_drag.json keeps appearance with its drag)."""
TINY_DIT_DIMS = {"sd3": [256] * 3, "flux2": [256, 256], "lumina2": [2304], "qwen_image": [3072], "krea2": [256] * 3}
"""The channels of the readout blocks the DiT backbones pick on the tiny DiT models (Flux's: readout_dims)."""
TINY_EMB_DIMS = {"sd15": 1280, "sdxl": 1280, "sd3": 256, "flux2": 256, "lumina2": 1024, "qwen_image": 3072,
                 "krea2": 256}
TINY_CHECKPOINTS = {"sd15": TINY_CHECKPOINT, "sdxl": TINY_SDXL_CHECKPOINT}
TINY_DECODER_DIMS_BY_FAMILY = {"sd15": TINY_DECODER_DIMS, "sdxl": TINY_SDXL_DECODER_DIMS, **TINY_DIT_DIMS}


def readout_dims(family: str) -> list[int]:
    """The channels of the readout layers the family's backbone picks on its tiny model (on this ComfyUI)."""
    if family == "flux":
        from tiny.dit import tiny_flux_width

        return [tiny_flux_width()] * 2
    return TINY_DECODER_DIMS_BY_FAMILY[family]


def embedding_width(family: str) -> int:
    """The width of the timestep embedding heads are fed on the family's tiny model (on this ComfyUI)."""
    if family == "flux":
        from tiny.dit import tiny_flux_width

        return tiny_flux_width()
    return TINY_EMB_DIMS[family]
SD15_LATENT_SCALE = 0.18215
"""SD1.5's latent scale factor (ComfyUI's process_latent_in)."""


def build_unet(seed: int = TINY_SEED, config: dict = TINY_UNET_CONFIG) -> torch.nn.Module:
    """The tiny UNet as ComfyUI's own UNetModel."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    import comfy.ops

    unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
    init_weights(unet, seed)
    return unet


def build_taesd(seed: int) -> torch.nn.Module:
    """A TAESD VAE (2.4M params) for the tiny SD1.5 checkpoint."""
    return build_taesd_scaled(seed, SD15_LATENT_SCALE)


def build_controlnet(seed: int) -> torch.nn.Module:
    """A ControlNet matching the tiny UNet, with non-zero output convs so it visibly acts."""
    from comfy.cldm.cldm import ControlNet
    import comfy.ops

    config = {k: v for k, v in TINY_UNET_CONFIG.items() if k not in ("out_channels", "transformer_depth_output")}
    net = ControlNet(**config, hint_channels=3, operations=comfy.ops.disable_weight_init)
    init_weights(net, seed)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith(("zero_convs", "middle_block_out")) and param.ndim >= 2:
                param.mul_(0.1)
    return net


TINY_ADAPTER_CHANNELS = 1
"""ComfyUI's T2I adapter layouts add their first feature map at a fixed input block; on the tiny UNet only the
SDXL layout's (block 3: the 640-channel ResBlock at half the latent size) lines up, and a one-channel feature map
broadcasts over its channels. Its deeper maps fit no block of the tiny UNet (ComfyUI logs that and skips them)."""


def build_t2i_adapter(seed: int) -> torch.nn.Module:
    """A T2I adapter that ComfyUI's ControlNetLoader reads (SDXL key layout, RGB hint, 1-4 channels)."""
    from comfy.t2i_adapter.adapter import Adapter

    channels = [TINY_ADAPTER_CHANNELS * m for m in (1, 2, 4, 4)]
    adapter = Adapter(channels=channels, nums_rb=2, cin=3 * 16 * 16, ksize=1, sk=True, use_conv=False, xl=True)
    init_weights(adapter, seed)
    return adapter


def tiny_checkpoint_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """UNet, TAESD and CLIP-L in the original SD1.5 single-file layout."""
    sd = half_state_dict(build_unet(seed), "model.diffusion_model.")
    sd.update(half_state_dict(build_taesd(seed + 1), "first_stage_model."))
    clip = half_state_dict(build_clip_l(seed + 2), "cond_stage_model.transformer.")
    clip.pop("cond_stage_model.transformer.text_projection.weight", None)
    sd.update(clip)
    return sd


def tiny_middle_unet_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The tiny UNet with a middle block, as a bare diffusion model for UNETLoader."""
    return half_state_dict(build_unet(seed, TINY_MIDDLE_UNET_CONFIG), "")


def tiny_controlnet_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The tiny ControlNet in the original `control_model.` layout."""
    return half_state_dict(build_controlnet(seed + 3), "control_model.")


def tiny_t2i_adapter_state_dict(seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """The tiny T2I adapter in the original (unprefixed) adapter layout."""
    return half_state_dict(build_t2i_adapter(seed + 5), "")


def tiny_lora_state_dict(seed: int = TINY_SEED, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA on the tiny UNet's attention projections, in ComfyUI's `diffusion_model.` key layout."""
    gen = generator(seed + 4)
    unet = build_unet(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, module in sorted(unet.named_modules(), key=lambda item: item[0]):
        if not name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_k", "attn2.to_v")):
            continue
        out_features, in_features = module.weight.shape
        key = f"diffusion_model.{name}"
        sd[f"{key}.lora_down.weight"] = (torch.randn(rank, in_features, generator=gen) / math.sqrt(in_features)).half()
        sd[f"{key}.lora_up.weight"] = (torch.randn(out_features, rank, generator=gen) / math.sqrt(rank)).half()
        sd[f"{key}.alpha"] = torch.tensor(float(rank)).half()
    return sd


TINY_OUTPUT_GAIN = 4.0
"""Spreads the random spatial readouts over the tanh range, so they respond to the latent as trained ones do."""
TINY_HEAD_KINDS = ("pose", "depth", "edge", "correspondence", "appearance")


def tiny_head_name(kind: str, suffix: str = ".safetensors", family: str = "sd15") -> str:
    """File name of the tiny head of a kind for a family's tiny model, following the official naming."""
    role = "spatial" if kind in DEFAULT_CONTROL_RANGES else "drag"
    return f"readout_tiny_{family}_{role}_{kind}{suffix}"


def tiny_head_config(kind: str, family: str = "sd15"):
    """The config of a tiny readout head for a family's tiny UNet decoder."""
    from readout.heads.architecture import HeadConfig

    spatial = kind in DEFAULT_CONTROL_RANGES
    return HeadConfig(
        kind=kind, family=family, dims=tuple(readout_dims(family)), emb_dim=embedding_width(family),
        use_output_head=spatial,
        control_range=DEFAULT_CONTROL_RANGES.get(kind, (-1.0, 1.0)), sparse_loss=kind in ("pose", "edge"),
        use_emb=kind != "correspondence",
    )


def tiny_head_state_dict(kind: str, seed: int = TINY_SEED, family: str = "sd15") -> dict[str, torch.Tensor]:
    """Deterministic random weights for the tiny head of a kind."""
    from readout.heads.architecture import ReadoutHead

    head = ReadoutHead(tiny_head_config(kind, family))
    families = TINY_FAMILIES + TINY_DIT_FAMILIES + TINY_2026_FAMILIES
    init_weights(head, seed + 10 + TINY_HEAD_KINDS.index(kind) + 20 * families.index(family))
    if head.output_head is not None:
        with torch.no_grad():
            head.output_head[4].weight.mul_(TINY_OUTPUT_GAIN)
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def official_head_checkpoint(config, state_dict: dict[str, torch.Tensor]) -> dict:
    """A head in the official training-checkpoint layout (plain containers, loadable with weights_only)."""
    dataset_args = {"control_type": config.kind, "sparse_loss": config.sparse_loss,
                    "control_range": list(config.control_range)} if config.is_spatial else {}
    return {
        "step": 0,
        "config": {
            "projection_dim": config.projection_dim, "dims": list(config.dims),
            "save_timestep": list(config.save_timestep), "num_timesteps": config.num_timesteps,
            "model_id": "runwayml/stable-diffusion-v1-5" if config.family == "sd15" else "stabilityai/stable-diffusion-xl-base-1.0",
            "aggregation_kwargs": {"use_output_head": config.use_output_head, "output_head_channels": 3,
                                   "output_head_act": config.output_head_act, "bottleneck_sequential": False},
            "dataset_args": dataset_args,
        },
        "aggregation_network": state_dict,
        "optimizer_state_dict": {},
    }
