"""Model evaluations outside a sampler, through ComfyUI's own conditioning machinery: a plain call, and the one
hooked call (noise a latent to a timestep, run the model once, keep its features and cross-attention) that
extract, word attention, the trainer and the tests share."""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from .base import LayerFeatures
from .cross_attention import AttentionStore
from .registry import backbone_for

UNSUPPORTED_COND_KEYS = ("control", "gligen")


def encode_empty_prompt(clip) -> list:
    """The empty prompt's conditioning: what readout heads were trained on."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(""))


def evaluate_unet(model_patcher, x: torch.Tensor, sigma: torch.Tensor, conditioning: list, seed: int = 0) -> torch.Tensor:
    """Denoise x at sigma with one conditional model call (no CFG; ControlNets on the conditioning are left out)."""
    from comfy.sampler_helpers import convert_cond
    from comfy.samplers import calc_cond_batch, process_conds

    plain = [[c[0], {k: v for k, v in c[1].items() if k not in UNSUPPORTED_COND_KEYS}] for c in conditioning]
    conds = process_conds(model_patcher.model, x, {"positive": convert_cond(plain)}, x.device, latent_image=x, seed=seed)
    model_patcher.pre_run()
    try:
        return calc_cond_batch(model_patcher.model, [conds["positive"]], x, sigma, model_patcher.model_options)[0]
    finally:
        model_patcher.cleanup()


@dataclass
class HookedReading:
    """What one hooked model call left: the readout layers' features (detached), the chosen tokens' cross-attention,
    the noised input, its sigmas and timesteps."""

    features: list[torch.Tensor] | None
    attention: AttentionStore | None
    x: torch.Tensor
    sigma: torch.Tensor
    timesteps: torch.Tensor


def seeded_noise(latent: torch.Tensor, seed: int) -> torch.Tensor:
    """ComfyUI's noise for a latent and seed, as its samplers draw it."""
    import comfy.sample

    return comfy.sample.prepare_noise(latent, seed)


def hooked_evaluation(model_patcher, latent: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
                      conditioning: list, *, features: bool = True, tokens: tuple[int, ...] = (),
                      seed: int = 0, extra_models: tuple = ()) -> HookedReading:
    """Noise a raw (VAE-space) latent to `timesteps` (one per sample, or one for all) with `noise`, run the model
    once without gradients and keep what was asked: the readout features, the tokens' cross-attention."""
    import comfy.model_management as mm

    backbone = backbone_for(model_patcher)
    mm.load_models_gpu([model_patcher, *extra_models])
    device = model_patcher.load_device
    timesteps = timesteps.float().expand(latent.shape[0]) if timesteps.numel() == 1 else timesteps.float()
    x, sigma = backbone.noised(model_patcher, latent, timesteps, noise)
    x, sigma, timesteps = x.to(device), sigma.to(device), timesteps.to(device)
    diffusion_model = model_patcher.model.diffusion_model
    with torch.no_grad(), ExitStack() as stack:
        store: LayerFeatures | None = (stack.enter_context(backbone.capture_features(diffusion_model))
                                       if features else None)
        attention = (stack.enter_context(backbone.capture_attention(diffusion_model, list(tokens)))
                     if tokens else None)
        evaluate_unet(model_patcher, x, sigma, conditioning, seed)
        kept = None if store is None else [feature.detach() for feature in store.complete()]
    return HookedReading(kept, attention, x, sigma, timesteps)
