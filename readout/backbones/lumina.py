"""Z-Image (Turbo and base) and Lumina 2: ComfyUI's NextDiT. Noise and caption refiner blocks run apart, then the
main layers run single-stream over [caption; image], the image tokens last (Z-Image pads both to a multiple of 32).

Heads read the image tokens of the main layers at a quarter, half and three quarters of their depth. The model is
fed t = 1 - sigma (times Z-Image's time scale): the heads' embedding is the model's own embedding of that time.
"""
from __future__ import annotations

import torch
from torch import nn

from .dit import ConfigClassBackbone, TokenLayout


class Lumina2Backbone(ConfigClassBackbone):
    """Z-Image and Lumina 2 (ComfyUI's Lumina2 configs and those that subclass it, ZImage among them; not the
    pixel-space Z-Image, whose latent is the image)."""

    family, label, config_class = "lumina2", "Z-Image/Lumina 2", "Lumina2"
    few_step_passes = 1
    """On the learned Z-Image (8 and 4 steps at CFG 1) a second pass lowered the depth IoU gain (+0.35 -> +0.28 at 8
    steps, +0.31 -> +0.22 at 4): one pass already holds the effect there."""

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        pixel_space = getattr(sm, "ZImagePixelSpace", None)
        return super().matches(model_config) and not (pixel_space and isinstance(model_config, pixel_space))

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return list(getattr(diffusion_model, "layers", []))

    def checkpoint_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return [*diffusion_model.noise_refiner, *diffusion_model.context_refiner, *self.blocks(diffusion_model)]

    def hidden_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.dim)

    def embedding_dim(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.t_embedder.mlp[-1].out_features)

    def record_layout(self, diffusion_model: nn.Module, layout: TokenLayout) -> list:
        """Also the padding after the image tokens: Z-Image pads them to a multiple of 32 (at 832x1216 px, 3952 image
        tokens and 16 pads)."""
        multiple = getattr(diffusion_model, "pad_tokens_multiple", None)

        def padding(_module: nn.Module, _args: tuple) -> None:
            layout.trailing_tokens = (-layout.image_tokens) % multiple if multiple else 0
        return [*super().record_layout(diffusion_model, layout), diffusion_model.register_forward_pre_hook(padding)]

    def image_tokens(self, layer: nn.Module, output: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
        start = output.shape[1] - layout.image_tokens - layout.trailing_tokens
        return layout.image_grid(output, self.normalize, start=start)

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        embedder = diffusion_model.t_embedder
        weight = embedder.mlp[0].weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        time = 1.0 - timesteps / self.timestep_scale
        return embedder(time * diffusion_model.time_scale, dtype=dtype)
