"""Qwen-Image (and its Edit models): an MMDiT whose every block is dual-stream with joint attention over [text,
image]. Edit models append the reference images' tokens after the generated image's; heads read the generated
image's tokens only, from a block's image stream, at a quarter, half and three quarters of the block stack.

Self-Guidance reads the same blocks' attention of the generated image's queries over the text keys (both after the
blocks' q/k norms, with the rotary embedding of their joint positions). Its word positions count from the
conditioning's end: the text encoder drops its template's system turn, and Qwen-Image-Edit's encoders put the
reference images' tokens before the prompt, but every prompt ends with the same template tail.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .dit import ConfigClassBackbone, TokenLayout
from .joint_attention import AttentionTap, rotated


class QwenImageBackbone(ConfigClassBackbone):
    """Qwen-Image, Qwen-Image-Edit and models ComfyUI detects as QwenImage."""

    family, label, config_class = "qwen_image", "Qwen-Image", "QwenImage"
    single_frame = True
    self_guidance = True
    tokenizer_key = "qwen25_7b"
    """Qwen-Image's conditioning is Qwen2.5-VL 7B's hidden state of its chat template's tokens from the user turn on."""
    counts_words_from_end = True
    tokenizer_classes = ("qwen_image.QwenImageTokenizer",)
    """CLIPLoader type qwen_image (HunyuanImage and Kandinsky 5 subclass it: not theirs)."""

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return list(getattr(diffusion_model, "transformer_blocks", []))

    def hidden_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.inner_dim)

    def image_tokens(self, layer: nn.Module, output: tuple, layout: TokenLayout) -> torch.Tensor:
        return layout.image_grid(output[1], self.normalize)

    def attention_taps(self, diffusion_model: nn.Module, layout: TokenLayout) -> list[AttentionTap]:
        """The readout blocks' normed image queries (B, heads, N, d; the generated image's, before any reference
        image's) and text keys, with the rotary embedding the attention call is given."""
        return [AttentionTap(block.attn.norm_q, lambda out: out[:, :, :layout.image_tokens],
                             block.attn.norm_added_k, lambda out: out, rotary=block.attn,
                             take_pe=lambda _args, kwargs: kwargs.get("image_rotary_emb"))
                for block in self.feature_layers(diffusion_model)]

    def rotation(self, layout: TokenLayout) -> Callable:
        def rotate(queries: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor):
            text = keys.shape[2]
            return rotated(queries, keys, (slice(text, text + queries.shape[2]), slice(0, text)), pe)
        return rotate

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        embedding = diffusion_model.time_text_embed
        weight = embedding.timestep_embedder.linear_1.weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return embedding(timesteps / self.timestep_scale, torch.empty(0, dtype=dtype, device=weight.device))
