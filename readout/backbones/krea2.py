"""Krea 2 (Turbo, Raw): ComfyUI's single-stream DiT over [text; image] (comfy/ldm/krea2). Its blocks have no
per-block patch hook; heads read the image span of a block's output through forward hooks, at a quarter, half and
three quarters of the block stack. ComfyUI releases before Krea 2 have no Krea2 config: there it is never detected.

Self-Guidance reads the same blocks' attention of the image queries over the text keys (after their QK norm, with
the rotary embedding); its text encoder keeps its template from the user's text on, as Qwen-Image's does, so a
word's tokens are counted from the conditioning's end.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .dit import ConfigClassBackbone, TokenLayout
from .joint_attention import AttentionTap, rotated


class Krea2Backbone(ConfigClassBackbone):
    """Krea 2 and models ComfyUI detects as Krea2."""

    family, label, config_class = "krea2", "Krea 2", "Krea2"
    single_frame = True
    self_guidance = True
    tokenizer_key = "qwen3vl_4b"
    counts_words_from_end = True
    tokenizer_classes = ("krea2.Krea2Tokenizer",)
    """CLIPLoader type krea2 (Qwen3-VL 4B)."""

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

    def attention_taps(self, diffusion_model: nn.Module, layout: TokenLayout) -> list[AttentionTap]:
        """The readout blocks' QK-normed image queries and text keys (B, heads, tokens, d), the key heads repeated to
        the query heads as the attention does, with the rotary embedding the block hands its attention."""
        def keys_for(attention: nn.Module) -> Callable:
            repeats = attention.heads // attention.kvheads
            return lambda out: out[:, :, :layout.text_tokens].repeat_interleave(repeats, dim=1)

        def freqs(args: tuple, kwargs: dict) -> torch.Tensor | None:
            return kwargs.get("freqs", args[1] if len(args) > 1 else None)

        return [AttentionTap(block.attn.qknorm.qnorm,
                             lambda out: out[:, :, layout.text_tokens:layout.text_tokens + layout.image_tokens],
                             block.attn.qknorm.knorm, keys_for(block.attn), rotary=block.attn, take_pe=freqs)
                for block in self.feature_layers(diffusion_model)]

    def rotation(self, layout: TokenLayout) -> Callable:
        def rotate(queries: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor):
            text = layout.text_tokens
            return rotated(queries, keys, (slice(text, text + layout.image_tokens), slice(0, text)), pe)
        return rotate

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        from comfy.ldm.flux.layers import timestep_embedding as sinusoid

        weight = diffusion_model.first.weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return diffusion_model.tmlp(sinusoid(timesteps / self.timestep_scale, diffusion_model.tdim).to(dtype))
