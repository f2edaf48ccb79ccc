"""ExtractReadout's work: encode an image (or take a latent), noise it to a timestep, run the UNet once, read the head."""
from __future__ import annotations

import torch

from .features import capture_decoder_features, head_embedding
from .head_model import HeadModel
from .readouts import Readout
from ..guidance.unet_call import evaluate_unet


def noised_latent(model_patcher, latent: torch.Tensor, timestep: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model-space latent noised to `timestep` (0..999) with seeded noise, and its sigma."""
    import comfy.sample

    base = model_patcher.model
    sigma = base.model_sampling.sigma(torch.tensor([float(timestep)]))
    noise = comfy.sample.prepare_noise(latent, seed)
    x = base.process_latent_in(latent.float()) + noise * sigma.float()
    return x, sigma


LATENT_SCALE = 8
"""Image pixels per latent cell for SD1.5 and SDXL, the families readout heads exist for."""


def extract_readout(model_patcher, vae, head: HeadModel, image: torch.Tensor | None, conditioning: list,
                    timestep: int, seed: int = 0, latent: torch.Tensor | None = None) -> Readout:
    """The head's readout of each image in a batch (VAE-encoded), or of `latent` as sampled when it is given."""
    head.check_model(model_patcher)
    if latent is None:
        latent = vae.encode(image[..., :3])
        size = (image.shape[1], image.shape[2])
    else:
        size = (latent.shape[-2] * LATENT_SCALE, latent.shape[-1] * LATENT_SCALE)
    tensor = latent_readout(model_patcher, head, latent, conditioning, timestep, seed)
    return Readout(tensor, head.config, head.name, timestep, size)


def latent_readout(model_patcher, head: HeadModel, latent: torch.Tensor, conditioning: list,
                   timestep: int, seed: int = 0) -> torch.Tensor:
    """The head's readout of a (raw, VAE-space) latent noised to `timestep`."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher, head.patcher])
    device = model_patcher.load_device
    x, sigma = noised_latent(model_patcher, latent, timestep, seed)
    x, sigma = x.to(device), sigma.to(device).expand(x.shape[0])
    diffusion_model = model_patcher.model.diffusion_model
    with torch.no_grad(), capture_decoder_features(diffusion_model) as store:
        evaluate_unet(model_patcher, x, sigma, conditioning, seed)
        timesteps = torch.full((x.shape[0],), float(timestep), device=device)
        emb = head_embedding(diffusion_model, head.config, timesteps)
        return head.module(store.complete(), emb).float()
