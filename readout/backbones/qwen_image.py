"""Qwen-Image (and its Edit models): an MMDiT whose every block is dual-stream with joint attention over [text,
image]. Edit models append the reference images' tokens after the generated image's; heads read the generated
image's tokens only, from a block's image stream, at a quarter, half and three quarters of the block stack.
"""
from __future__ import annotations

import torch
from torch import nn

from .dit import ConfigClassBackbone, TokenLayout


class QwenImageBackbone(ConfigClassBackbone):
    """Qwen-Image, Qwen-Image-Edit and models ComfyUI detects as QwenImage."""

    family, label, config_class = "qwen_image", "Qwen-Image", "QwenImage"
    single_frame = True

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return list(getattr(diffusion_model, "transformer_blocks", []))

    def hidden_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.inner_dim)

    def image_tokens(self, layer: nn.Module, output: tuple, layout: TokenLayout) -> torch.Tensor:
        return layout.image_grid(output[1], self.normalize)

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        embedding = diffusion_model.time_text_embed
        weight = embedding.timestep_embedder.linear_1.weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return embedding(timesteps / self.timestep_scale, torch.empty(0, dtype=dtype, device=weight.device))
