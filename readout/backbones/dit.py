"""The transformer (DiT) families: Flux (double- and single-stream blocks) and SD3/SD3.5 (MMDiT joint blocks).

Heads read the image tokens a block outputs, laid out on the latent's patch grid (B, C, h, w) and LayerNormed per
token without affine weights (DiT streams carry a few channels of very large activations); they read three blocks,
at a quarter, half and three quarters of the block stack. bench/dit_readout_choices.py measured this against raw
tokens, DiTF's zeroed massive channels, one block, every block, and only double- or single-stream blocks on the
learned world's Flux: none guided better. The embedding heads are fed is the model's own timestep embedding.
Flow-matching models noise with ComfyUI's CONST model sampling; heads count timesteps 0..999 like the UNet families
(sigma * 1000).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..guidance.run import OFFICIAL_WEIGHT
from .base import Backbone, LayerFeatures, UnsupportedModel
from .cross_attention import AttentionStore
from .joint_attention import AttentionTap, capture_joint_attention, rotated

HEAD_TIMESTEPS = 1000
"""Heads count flow-matching time sigma in [0, 1] as sigma * HEAD_TIMESTEPS, like the UNets' 1000 steps."""
CLIP_L_WIDTH = 768
"""The width of CLIP-L's hidden states (the SD1.5 CLIP's conditioning)."""
FLOW_WEIGHT = 4.0
"""The fast rule's weight that moves a flow-matching latent as far as the official code's guidance moves an SD one:
the official 2e-2 steps on x_t over the first half of 100 steps total 1.0; a flow latent is x_t itself, and the
first half of SD3's schedule (shift 3) descends sigma from 1 to 0.75, Flux's (shift 1.15) to 0.76, so
w * 0.25 = 1.0 (bench/flow_weight.py prints both)."""


def normalize_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """LayerNorm per token without affine weights: what heads read from a DiT block."""
    return F.layer_norm(tokens, (tokens.shape[-1],))


class TokenLayout:
    """Where the image tokens sit in one model call: the patch grid (h, w), the text tokens before them and the padding
    tokens after them."""

    def __init__(self) -> None:
        self.grid: tuple[int, int] | None = None
        self.text_tokens = 0
        self.trailing_tokens = 0

    @property
    def image_tokens(self) -> int:
        if self.grid is None:
            raise RuntimeError("a transformer block ran before the model call recorded its latent size")
        return self.grid[0] * self.grid[1]

    def image_grid(self, tokens: torch.Tensor, normalize: Callable[[torch.Tensor], torch.Tensor],
                   start: int = 0) -> torch.Tensor:
        """(B, C, h, w): the image tokens from `start`, normalized, laid out row by row on the patch grid.
        A float32 copy: the next block may add into the tokens in place (Flux), which the norm's backward would see."""
        if self.grid is None:
            raise RuntimeError("a transformer block ran before the model call recorded its latent size")
        rows, cols = self.grid
        image = normalize(tokens[:, start:start + rows * cols].to(torch.float32, copy=True))
        return image.transpose(1, 2).reshape(image.shape[0], image.shape[-1], rows, cols)


class DiTBackbone(Backbone):
    """What the DiT families share: features from a block's image tokens, read at three depths of the block stack."""

    latent_channels = 16
    tokenizer_key = "t5xxl"
    timestep_scale = 1.0
    """Multiplies model_sampling.timestep(sigma) into the heads' 0..999 timesteps."""

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        """Every transformer block, in the order the model runs them."""
        raise NotImplementedError

    def normalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image tokens (B, N, C) as heads read them."""
        return normalize_tokens(tokens)

    def image_tokens(self, layer: nn.Module, output, layout: TokenLayout) -> torch.Tensor:
        """(B, C, h, w) image features from a block's output."""
        raise NotImplementedError

    def record_layout(self, diffusion_model: nn.Module, layout: TokenLayout) -> list:
        """Hooks that fill the layout at the start of each model call; returns their handles."""
        patch = self.patch_size(diffusion_model)

        def grid(_module: nn.Module, args: tuple) -> None:
            height, width = args[0].shape[-2:]
            layout.grid = (math.ceil(height / patch), math.ceil(width / patch))
        return [diffusion_model.register_forward_pre_hook(grid)]

    def patch_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.patch_size)

    def readout_indices(self, count: int) -> list[int]:
        """Blocks at a quarter, half and three quarters of the stack (fewer on stacks shallower than three)."""
        return sorted({min(count - 1, count * k // 4) for k in (1, 2, 3)})

    def feature_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        blocks = self.blocks(diffusion_model)
        if not blocks:
            raise UnsupportedModel(f"the model has no transformer blocks: {self.label} readout heads need a "
                                   f"{self.label} model")
        return [blocks[i] for i in self.readout_indices(len(blocks))]

    def feature_hook_point(self, layer: nn.Module) -> nn.Module:
        return layer

    def feature_dims(self, diffusion_model: nn.Module) -> list[int]:
        return [self.hidden_size(diffusion_model)] * len(self.feature_layers(diffusion_model))

    def hidden_size(self, diffusion_model: nn.Module) -> int:
        return int(diffusion_model.hidden_size)

    def embedding_dim(self, diffusion_model: nn.Module) -> int:
        return self.hidden_size(diffusion_model)

    def cross_attentions(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return []

    def attention_taps(self, diffusion_model: nn.Module, layout: TokenLayout) -> list[AttentionTap]:
        """Where each readout block's image queries and text keys come from."""
        raise NotImplementedError

    def rotation(self, layout: TokenLayout) -> Callable | None:
        """The rotary embedding applied to queries and keys before attention, or None."""
        return None

    @contextmanager
    def capture_attention(self, diffusion_model: nn.Module, token_indices: list[int]) -> Iterator[AttentionStore]:
        """Self-Guidance's maps from the readout blocks' joint attention (image queries x text keys)."""
        layout = TokenLayout()
        handles = self.record_layout(diffusion_model, layout)
        try:
            with capture_joint_attention(self.attention_taps(diffusion_model, layout), token_indices,
                                         self.rotation(layout)) as store:
                yield store
        finally:
            for handle in handles:
                handle.remove()

    def checkpoint_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return self.blocks(diffusion_model)

    weight_scale = FLOW_WEIGHT / OFFICIAL_WEIGHT

    def vp_scale(self, sigma: float) -> float:
        return 1.0

    def head_timesteps(self, model_sampling, sigma: torch.Tensor) -> torch.Tensor:
        return model_sampling.timestep(sigma).float() * self.timestep_scale

    def sampling_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timesteps / self.timestep_scale

    @contextmanager
    def capture_features(self, diffusion_model: nn.Module) -> Iterator[LayerFeatures]:
        layers = self.feature_layers(diffusion_model)
        store, layout = LayerFeatures([None] * len(layers)), TokenLayout()

        def hook_for(index: int):
            def hook(layer: nn.Module, _inputs: tuple, output) -> None:
                store.layers[index] = self.image_tokens(layer, output, layout)
            return hook

        handles = []
        try:
            handles += self.record_layout(diffusion_model, layout)
            for index, layer in enumerate(layers):
                handles.append(layer.register_forward_hook(hook_for(index)))
            yield store
        finally:
            for handle in handles:
                handle.remove()


def is_tokenizer(clip, *names: str) -> bool:
    """Whether the CLIP's tokenizer is exactly one of these `comfy.text_encoders` classes ("module.Class"; those this
    ComfyUI lacks never match, nor do subclasses other families build on them)."""
    import importlib

    kinds = []
    for name in names:
        module, class_name = name.rsplit(".", 1)
        try:
            kinds.append(getattr(importlib.import_module(f"comfy.text_encoders.{module}"), class_name))
        except (ImportError, AttributeError):
            continue
    return type(getattr(clip, "tokenizer", None)) in kinds


class ConfigClassBackbone(DiTBackbone):
    """A DiT family ComfyUI detects as one model config class (and its subclasses), named so that a ComfyUI without
    it never matches; Self-Guidance reads it only where the family says which CLIP is its own."""

    config_class: str
    """The class's name in comfy.supported_models."""
    timestep_scale = float(HEAD_TIMESTEPS)
    self_guidance = False

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        config = getattr(sm, self.config_class, None)
        return config is not None and isinstance(model_config, config)

    tokenizer_classes: tuple[str, ...] = ()
    """The family's own tokenizers in `comfy.text_encoders` ("module.Class"), for Self-Guidance's CLIP."""

    def matches_clip(self, clip) -> bool:
        return is_tokenizer(clip, *self.tokenizer_classes)


class FluxBackbone(DiTBackbone):
    """Flux.1 (dev, schnell, Kontext and fine-tunes ComfyUI detects as Flux): features from the image half of the
    double-stream blocks and the image span of the single-stream blocks (text tokens come first there)."""

    family, label = "flux", "Flux"
    timestep_scale = float(HEAD_TIMESTEPS)
    blocks_add_in_place = True

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        flux2 = getattr(sm, "Flux2", None)
        return isinstance(model_config, sm.Flux) and not (flux2 is not None and isinstance(model_config, flux2))

    def matches_clip(self, clip) -> bool:
        tokenizer = getattr(clip, "tokenizer", None)
        return hasattr(tokenizer, "t5xxl") and hasattr(tokenizer, "clip_l") and not hasattr(tokenizer, "clip_g")

    def reads_prompt_of(self, clip_family: str, diffusion_model: nn.Module) -> bool:
        """Also an SD1.5 CLIP's tokens when the model's text input is CLIP-L's hidden states (CLIPLoader type
        stable_diffusion), as the world's Flux reads them."""
        text_input = getattr(getattr(diffusion_model, "txt_in", None), "in_features", None)
        return super().reads_prompt_of(clip_family, diffusion_model) or (clip_family == "sd15"
                                                                         and text_input == CLIP_L_WIDTH)

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return [*getattr(diffusion_model, "double_blocks", []), *getattr(diffusion_model, "single_blocks", [])]

    def record_layout(self, diffusion_model: nn.Module, layout: TokenLayout) -> list:
        def text(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            layout.text_tokens = output.shape[1]
        return [*super().record_layout(diffusion_model, layout), diffusion_model.txt_in.register_forward_hook(text)]

    def image_tokens(self, layer: nn.Module, output, layout: TokenLayout) -> torch.Tensor:
        if isinstance(output, tuple):
            return layout.image_grid(output[0], self.normalize)
        return layout.image_grid(output, self.normalize, start=layout.text_tokens)

    def attention_taps(self, diffusion_model: nn.Module, layout: TokenLayout) -> list[AttentionTap]:
        double = set(map(id, getattr(diffusion_model, "double_blocks", [])))
        taps = []
        for block in self.feature_layers(diffusion_model):
            if id(block) in double:
                taps.append(AttentionTap(block.img_attn.norm, lambda out: out[0][:, :, :layout.image_tokens],
                                         block.txt_attn.norm, lambda out: out[1], rotary=block))
            else:
                taps.append(AttentionTap(
                    block.norm, lambda out: out[0][:, :, layout.text_tokens:layout.text_tokens + layout.image_tokens],
                    block.norm, lambda out: out[1][:, :, :layout.text_tokens], rotary=block))
        return taps

    def rotation(self, layout: TokenLayout) -> Callable:
        def rotate(queries: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor):
            text = layout.text_tokens
            return rotated(queries, keys, (slice(text, text + layout.image_tokens), slice(0, text)), pe)
        return rotate

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        from comfy.ldm.flux.layers import timestep_embedding as sinusoid

        weight = diffusion_model.time_in.in_layer.weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return diffusion_model.time_in(sinusoid(timesteps / self.timestep_scale, 256).to(dtype))


class SD3Backbone(DiTBackbone):
    """SD3 and SD3.5 (Large, Medium's MMDiT-X): features from the image stream of the MMDiT joint blocks."""

    family, label = "sd3", "SD3"
    tokenizer_key = "l"
    """SD3's context starts with the CLIP-L/G tokens (T5's follow), so prompt words sit at their CLIP-L positions."""

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        return isinstance(model_config, sm.SD3)

    def matches_clip(self, clip) -> bool:
        from comfy.text_encoders.sd3_clip import SD3Tokenizer

        return isinstance(getattr(clip, "tokenizer", None), SD3Tokenizer)

    def blocks(self, diffusion_model: nn.Module) -> list[nn.Module]:
        return list(getattr(diffusion_model, "joint_blocks", []))

    def image_tokens(self, layer: nn.Module, output, layout: TokenLayout) -> torch.Tensor:
        return layout.image_grid(output[1], self.normalize)

    def attention_taps(self, diffusion_model: nn.Module, layout: TokenLayout) -> list[AttentionTap]:
        return [AttentionTap(block.x_block.attn.ln_q, lambda out: out[:, :layout.image_tokens].transpose(1, 2),
                             block.context_block.attn.ln_k, lambda out: out.transpose(1, 2))
                for block in self.feature_layers(diffusion_model)]

    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        weight = diffusion_model.t_embedder.mlp[0].weight
        dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
        return diffusion_model.t_embedder(timesteps, dtype=dtype)
