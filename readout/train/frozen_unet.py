"""The frozen model a head trains on: a checkpoint loaded by ComfyUI, read as the sampler reads it."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..backbones.evaluation import encode_empty_prompt, hooked_evaluation
from ..backbones.registry import backbone_for
from ..heads.architecture import HeadConfig


@dataclass
class DecoderReading:
    """Decoder features of one UNet call on a batch, with the timesteps and the head's timestep embedding."""

    features: list[torch.Tensor]
    timesteps: torch.Tensor
    emb: torch.Tensor | None


class FrozenUNet:
    """A ComfyUI model patcher, VAE and empty-prompt conditioning: images in, decoder features out (no grads)."""

    def __init__(self, model_patcher, vae, clip) -> None:
        self.model_patcher, self.vae = model_patcher, vae
        self.backbone = backbone_for(model_patcher)
        self.dims = self.backbone.feature_dims(model_patcher.model.diffusion_model)
        self.conditioning = encode_empty_prompt(clip)

    @classmethod
    def from_checkpoint(cls, path: str) -> FrozenUNet:
        """Load an SD1.5/SDXL checkpoint file with ComfyUI's own loader."""
        import comfy.sd

        if not os.path.isfile(path):
            raise FileNotFoundError(f"--checkpoint {path} does not exist: give the full path of an SD1.5/SDXL file")
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)[:3]
        if clip is None or vae is None:
            raise ValueError(f"--checkpoint {path} has no CLIP or VAE: use a full SD1.5/SDXL checkpoint")
        return cls(model, vae, clip)

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim(self.model_patcher.model.diffusion_model)

    @property
    def family(self) -> str:
        return self.backbone.family

    @property
    def device(self) -> torch.device:
        return self.model_patcher.load_device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE latents of (B, 3, H, W) images in [0, 1]."""
        with torch.no_grad():
            return self.vae.encode(images.movedim(1, -1)).float()

    def read(self, images: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator,
             config: HeadConfig) -> DecoderReading:
        """Noise each image's latent to its timestep (0..999) with noise from `generator`, run the model once with
        the empty prompt and capture the readout features; the embedding follows the head's convention."""
        latent = self.encode(images)
        noise = torch.randn(latent.shape, generator=generator)
        reading = hooked_evaluation(self.model_patcher, latent, timesteps, noise, self.conditioning)
        with torch.no_grad():
            emb = self.backbone.head_embedding(self.model_patcher.model.diffusion_model, config, reading.timesteps)
        return DecoderReading(reading.features, reading.timesteps, None if emb is None else emb.detach().float())
