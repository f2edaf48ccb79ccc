"""Z-Image (Turbo and base) and Lumina 2: ComfyUI's NextDiT. Noise and caption refiner blocks run apart, then the
main layers run single-stream over [caption; image], the image tokens last (Z-Image pads both to a multiple of 32).

Heads read the image tokens of the main layers at a quarter, half and three quarters of their depth. The model is
fed t = 1 - sigma (times Z-Image's time scale): the heads' embedding is the model's own embedding of that time.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from .cross_attention import AttentionStore
from .dit import CLIP_L_WIDTH, ConfigClassBackbone, TokenLayout
from .joint_attention import AttentionTap
from .kernels import differentiable_kernels


class Lumina2Backbone(ConfigClassBackbone):
    """Z-Image and Lumina 2 (ComfyUI's Lumina2 configs and those that subclass it, ZImage among them; not the
    pixel-space Z-Image, whose latent is the image)."""

    family, label, config_class = "lumina2", "Z-Image/Lumina 2", "Lumina2"
    self_guidance = True
    tokenizer_key = "qwen3_4b"
    """Z-Image's caption is Qwen3 4B's hidden state of every token of its chat template, the prompt's among them."""
    few_step_passes = 1
    """On the learned Z-Image (8 and 4 steps at CFG 1) a second pass lowered the depth IoU gain (+0.35 -> +0.28 at 8
    steps, +0.31 -> +0.22 at 4): one pass already holds the effect there."""

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        pixel_space = getattr(sm, "ZImagePixelSpace", None)
        return super().matches(model_config) and not (pixel_space and isinstance(model_config, pixel_space))

    def matches_clip(self, clip) -> bool:
        try:
            from comfy.text_encoders.z_image import ZImageTokenizer
        except ImportError:
            return False
        return isinstance(getattr(clip, "tokenizer", None), ZImageTokenizer)

    def reads_prompt_of(self, clip_family: str, diffusion_model: nn.Module) -> bool:
        """Also an SD1.5 CLIP's tokens when the caption input is CLIP-L's hidden states, as the world's Z-Image and
        the tiny NextDiT read them."""
        caption_width = int(diffusion_model.cap_embedder[1].in_features)
        return super().reads_prompt_of(clip_family, diffusion_model) or (clip_family == "sd15"
                                                                         and caption_width == CLIP_L_WIDTH)

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return list(getattr(diffusion_model, "layers", []))

    def attention_taps(self, diffusion_model: nn.Module, layout: TokenLayout) -> list[AttentionTap]:
        """The readout layers' normalized queries and keys (B, N, heads, d) over [caption; image; padding]: image
        queries and caption keys (padding included, as the model attends to it), the key heads repeated to the
        query heads as the attention does."""
        def caption_length(tokens: torch.Tensor) -> int:
            return tokens.shape[1] - layout.image_tokens - layout.trailing_tokens

        def queries(tokens: torch.Tensor) -> torch.Tensor:
            start = caption_length(tokens)
            return tokens[:, start:start + layout.image_tokens].transpose(1, 2)

        def keys_for(attention: nn.Module) -> Callable:
            repeats = attention.n_local_heads // attention.n_local_kv_heads
            return lambda tokens: tokens[:, :caption_length(tokens)].repeat_interleave(repeats, dim=2).transpose(1, 2)

        def freqs(args: tuple, kwargs: dict) -> torch.Tensor | None:
            return kwargs.get("freqs_cis", args[2] if len(args) > 2 else None)

        return [AttentionTap(layer.attention.q_norm, queries, layer.attention.k_norm, keys_for(layer.attention),
                             rotary=layer.attention, take_pe=freqs)
                for layer in self.feature_layers(diffusion_model)]

    def rotation(self, layout: TokenLayout) -> Callable:
        def rotate(queries: torch.Tensor, keys: torch.Tensor, freqs: torch.Tensor):
            from comfy.ldm.flux.math import apply_rope1

            caption = keys.shape[2]
            image = freqs[:, caption:caption + queries.shape[2]].movedim(1, 2)
            return apply_rope1(queries, image), apply_rope1(keys, freqs[:, :caption].movedim(1, 2))
        return rotate

    @contextmanager
    def capture_attention(self, diffusion_model: nn.Module, token_indices: list[int]) -> Iterator[AttentionStore]:
        """On ComfyUI's autograd-capable kernels: its fused norm-and-rotary kernel skips the q_norm and k_norm modules
        the taps sit on."""
        with differentiable_kernels(), super().capture_attention(diffusion_model, token_indices) as store:
            yield store

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
