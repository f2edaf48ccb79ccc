"""One UNet evaluation outside a sampler, through ComfyUI's own conditioning machinery."""
from __future__ import annotations

import torch

UNSUPPORTED_COND_KEYS = ("control", "gligen")


def encode_empty_prompt(clip) -> list:
    """The empty prompt's conditioning: what readout heads were trained on."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(""))


def evaluate_unet(model_patcher, x: torch.Tensor, sigma: torch.Tensor, conditioning: list, seed: int = 0) -> torch.Tensor:
    """Denoise x at sigma with one conditional UNet call (no CFG; ControlNets on the conditioning are left out)."""
    from comfy.sampler_helpers import convert_cond
    from comfy.samplers import calc_cond_batch, process_conds

    plain = [[c[0], {k: v for k, v in c[1].items() if k not in UNSUPPORTED_COND_KEYS}] for c in conditioning]
    conds = process_conds(model_patcher.model, x, {"positive": convert_cond(plain)}, x.device, latent_image=x, seed=seed)
    model_patcher.pre_run()
    try:
        return calc_cond_batch(model_patcher.model, [conds["positive"]], x, sigma, model_patcher.model_options)[0]
    finally:
        model_patcher.cleanup()
