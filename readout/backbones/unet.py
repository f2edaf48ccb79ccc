"""The Stable Diffusion UNet families (ComfyUI's openaimodel UNet): SD1.5 and the SDXL family.

Heads read the residual branch (before the skip add) of the ResBlock that opens each decoder block; the embedding
is the UNet's own E(t) without SDXL's added size/text embedding; Self-Guidance reads the decoder's attn2.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Backbone, UnsupportedModel


class UNetBackbone(Backbone):
    """What SD1.5 and SDXL share: the openaimodel UNet's decoder ResBlocks, time embedding and attn2 layers."""

    def feature_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

        blocks = [block[0] for block in getattr(diffusion_model, "output_blocks", [])]
        if not blocks or not all(isinstance(b, ResBlock) for b in blocks):
            raise UnsupportedModel(f"the model's decoder is not made of ResBlocks: {self.label} readout heads need "
                                   f"a {self.label} UNet")
        return blocks

    def feature_hook_point(self, layer: nn.Module) -> nn.Module:
        return layer.out_layers

    def feature_dims(self, diffusion_model: nn.Module) -> list[int]:
        return [block.out_channels for block in self.feature_layers(diffusion_model)]

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        from comfy.ldm.modules.diffusionmodules.util import timestep_embedding as sinusoid

        weight = diffusion_model.time_embed[0].weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return diffusion_model.time_embed(sinusoid(timesteps, diffusion_model.model_channels).to(dtype))

    def cross_attentions(self, diffusion_model: nn.Module) -> list[nn.Module]:
        layers = []
        for block in diffusion_model.output_blocks:
            for module in block.modules():
                attn2 = getattr(module, "attn2", None)
                if attn2 is not None and hasattr(attn2, "to_q") and hasattr(attn2, "to_k"):
                    layers.append(attn2)
        return layers

    def checkpoint_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        layers = [layer for group in (diffusion_model.input_blocks, diffusion_model.output_blocks)
                  for block in group for layer in block]
        if getattr(diffusion_model, "middle_block", None) is not None:
            layers += list(diffusion_model.middle_block)
        return layers


class SD15Backbone(UNetBackbone):
    """SD1.x: ComfyUI's SD15 config and its subclasses, CLIP-L."""

    family, label = "sd15", "SD1.5"

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        return isinstance(model_config, sm.SD15)

    def matches_clip(self, clip) -> bool:
        tokenizer = getattr(clip, "tokenizer", None)
        return hasattr(tokenizer, "clip_l") and not hasattr(tokenizer, "clip_g") and not hasattr(tokenizer, "t5xxl")


class SDXLBackbone(UNetBackbone):
    """The SDXL family: every config ComfyUI detects as SDXL or a subclass (SSD-1B, Segmind Vega, KOALA), CLIP-L + G.
    The prompt's CLIP-G tokens sit at the CLIP-L token positions."""

    family, label = "sdxl", "SDXL"

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        return isinstance(model_config, sm.SDXL)

    def matches_clip(self, clip) -> bool:
        tokenizer = getattr(clip, "tokenizer", None)
        return hasattr(tokenizer, "clip_l") and hasattr(tokenizer, "clip_g") and not hasattr(tokenizer, "t5xxl")
