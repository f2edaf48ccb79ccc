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

    @classmethod
    def from_files(cls, diffusion_model: str, text_encoders: list[str], clip_type: str, vae: str) -> FrozenUNet:
        """Load a model kept in separate files (Flux, SD3.5) with ComfyUI's own loaders, as UNETLoader,
        CLIPLoader / DualCLIPLoader / TripleCLIPLoader and VAELoader do."""
        import comfy.sd
        import comfy.utils

        named = [("--diffusion-model", diffusion_model), *[("--text-encoder", p) for p in text_encoders], ("--vae", vae)]
        for flag, path in named:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{flag} {path} does not exist: give the full path of the file")
        types = {member.name.lower(): member for member in comfy.sd.CLIPType}
        if clip_type.lower() not in types:
            raise ValueError(f"--clip-type {clip_type!r} is not one of ComfyUI's text encoder types: "
                             f"{', '.join(sorted(types))}")
        model = comfy.sd.load_diffusion_model(diffusion_model)
        clip = comfy.sd.load_clip(ckpt_paths=list(text_encoders), clip_type=types[clip_type.lower()])
        return cls(model, comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae)), clip)

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
