"""ExtractReadout's work: encode an image (or take a latent), noise it to a timestep, run the model once, read the head."""
from __future__ import annotations

import torch

from .head_model import HeadModel
from .readouts import Readout
from ..backbones.evaluation import hooked_evaluation, seeded_noise
from ..backbones.registry import backbone_for


def extract_readout(model_patcher, vae, head: HeadModel, image: torch.Tensor | None, conditioning: list,
                    timestep: int, seed: int = 0, latent: torch.Tensor | None = None) -> Readout:
    """The head's readout of each image in a batch (VAE-encoded), or of `latent` as sampled when it is given."""
    head.check_model(model_patcher)
    if latent is None:
        latent = vae.encode(image[..., :3])
        size = (image.shape[1], image.shape[2])
    else:
        scale = backbone_for(model_patcher).latent_scale
        size = (latent.shape[-2] * scale, latent.shape[-1] * scale)
    tensor = latent_readout(model_patcher, head, latent, conditioning, timestep, seed)
    return Readout(tensor, head.config, head.name, timestep, size)


def latent_readout(model_patcher, head: HeadModel, latent: torch.Tensor, conditioning: list,
                   timestep: int, seed: int = 0) -> torch.Tensor:
    """The head's readout of a (raw, VAE-space) latent noised to `timestep` with the seed's noise."""
    reading = hooked_evaluation(model_patcher, latent, torch.tensor([float(timestep)]), seeded_noise(latent, seed),
                                conditioning, seed=seed, extra_models=(head.patcher,))
    with torch.no_grad():
        emb = backbone_for(model_patcher).head_embedding(model_patcher.model.diffusion_model, head.config,
                                                         reading.timesteps)
        return head.read(reading.features, emb)
