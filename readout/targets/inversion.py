"""DDIM inversion of a real image with the same model and sigma schedule the sampler will use."""
from __future__ import annotations

import torch

from .reference import InvertedReference
from ..backbones.evaluation import evaluate_unet


def _eps(model_patcher, x: torch.Tensor, sigma: float, conditioning: list) -> torch.Tensor:
    batch_sigma = torch.full((x.shape[0],), sigma, device=x.device)
    return (x - evaluate_unet(model_patcher, x, batch_sigma, conditioning)) / sigma


def invert_latent(model_patcher, latent: torch.Tensor, conditioning: list, sigmas: torch.Tensor,
                  refinements: int = 0, progress=None) -> torch.Tensor:
    """Deterministic (eta 0, CFG 1) inversion: the k-diffusion latents at each sigma, largest first.

    Runs the Euler/DDIM step backwards, x(s_next) = x(s) + (s_next - s) * eps(x(s), s), from the clean
    latent at sigma 0 up the schedule (eps at sigma 0 is taken at the smallest non-zero sigma). Each
    refinement is a fixed-point iteration x(s_next) = x(s) + (s_next - s) * eps(x(s_next), s_next), which
    makes the step the exact inverse of the sampler's Euler/DDIM step when it converges."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher])
    device = model_patcher.load_device
    base = model_patcher.model
    x = base.process_latent_in(latent.float()).to(device)
    ascending = torch.flip(sigmas.float(), dims=[0]).to(device)
    smallest = float(ascending[ascending > 0].min())
    trajectory = [x]
    with torch.no_grad():
        for index in range(len(ascending) - 1):
            sigma, next_sigma = float(ascending[index]), float(ascending[index + 1])
            step = next_sigma - sigma
            guess = x + step * _eps(model_patcher, x, max(sigma, smallest), conditioning)
            for _ in range(refinements):
                guess = x + step * _eps(model_patcher, guess, next_sigma, conditioning)
            x = guess
            trajectory.append(x)
            if progress is not None:
                progress.update(1)
    return torch.stack(trajectory[::-1])


def invert_image(model_patcher, vae, image: torch.Tensor, conditioning: list, steps: int, scheduler: str,
                 refinements: int = 0, progress=None) -> InvertedReference:
    """Encode an image and invert it along the schedule of `steps` x `scheduler` (denoise 1.0)."""
    import comfy.samplers

    latent = vae.encode(image[..., :3])
    sigmas = comfy.samplers.calculate_sigmas(model_patcher.get_model_object("model_sampling"), scheduler, steps)
    latents = invert_latent(model_patcher, latent, conditioning, sigmas, refinements, progress)
    return InvertedReference(sigmas.cpu(), latents.cpu(), latent.cpu(), image.cpu(), steps, scheduler)
