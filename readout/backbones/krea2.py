"""Krea 2 (Turbo, Raw): ComfyUI's single-stream DiT over [text; image] (comfy/ldm/krea2). Its blocks have no
per-block patch hook; heads read the image span of a block's output through forward hooks, at a quarter, half and
three quarters of the block stack. ComfyUI releases before Krea 2 have no Krea2 config: there it is never detected.
"""
from __future__ import annotations

import torch
from torch import nn

from .dit import ConfigClassBackbone, TokenLayout


class Krea2Backbone(ConfigClassBackbone):
    """Krea 2 and models ComfyUI detects as Krea2."""

    family, label, config_class = "krea2", "Krea 2", "Krea2"
    single_frame = True

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return list(getattr(diffusion_model, "blocks", []))

    def patch_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.patch)

    def hidden_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.first.out_features)

    def record_layout(self, diffusion_model: nn.Module, layout: TokenLayout) -> list:
        def text(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            layout.text_tokens = output.shape[1]
        return [*super().record_layout(diffusion_model, layout), diffusion_model.txtmlp.register_forward_hook(text)]

    def image_tokens(self, layer: nn.Module, output: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        return layout.image_grid(output, self.normalize, start=layout.text_tokens)

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        from comfy.ldm.flux.layers import timestep_embedding as sinusoid

        weight = diffusion_model.first.weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return diffusion_model.tmlp(sinusoid(timesteps / self.timestep_scale, diffusion_model.tdim).to(dtype))
