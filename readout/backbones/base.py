"""What a model family must provide for readout guidance: the Backbone interface and its shared parts."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import ReadoutError
from .cross_attention import AttentionStore, capture_cross_attention


LATENT_SCALE = 8
"""Image pixels per latent cell in every family the pack knows (the VAE's downsampling)."""


class UnsupportedModel(ReadoutError):
    """The model belongs to no family the pack has a backbone for."""


@dataclass
class LayerFeatures:
    """The feature maps (B, C, h, w) of a backbone's readout layers in the last model call, by layer."""

    layers: list[torch.Tensor | None] = field(default_factory=list)

    def complete(self) -> list[torch.Tensor]:
        missing = [i for i, f in enumerate(self.layers) if f is None]
        if missing:
            raise RuntimeError(f"readout layers {missing} produced no features in this model call")
        return list(self.layers)

    def clear(self) -> None:
        self.layers = [None] * len(self.layers)


class Backbone(ABC):
    """One model family: how ComfyUI's model of it is recognised, which layers heads read and how they are captured,
    the heads' timestep embedding, the cross-attention Self-Guidance reads and how a latent is noised."""

    family: str
    """The name head files record, e.g. 'sd15'."""
    label: str
    """The name users know, e.g. 'SD1.5'."""
    latent_channels: int = 4
    latent_scale: int = LATENT_SCALE
    single_frame: bool = False
    """Whether the family samples video-shaped latents (batch, channels, 1, H, W): Wan's latent format."""
    tokenizer_key: str = "l"
    """The tokenizer whose token positions index the conditioning's tokens."""

    @abstractmethod
    def matches(self, model_config) -> bool:
        """Whether ComfyUI's detected model config is this family."""

    @abstractmethod
    def matches_clip(self, clip) -> bool:
        """Whether a CLIP object encodes prompts for this family."""

    def reads_prompt_of(self, clip_family: str, diffusion_model: nn.Module) -> bool:
        """Whether this model attends to the tokens a CLIP of that family encodes (Self-Guidance's word positions)."""
        return clip_family == self.family

    counts_words_from_end: bool = False
    """Whether a word's tokens are found counting back from the end of the conditioning: where the text encoder drops
    its template's start (Qwen-Image, Krea 2) or edit encoders put image tokens before the prompt (Qwen-Image-Edit),
    or the model pads the prompt on the left (Flux.2); the template's tail after the prompt is fixed."""

    def prompt_tokenizer_key(self, clip) -> str:
        """The key of this family's CLIP's tokenizer whose positions index the conditioning's tokens."""
        return self.tokenizer_key

    def conditioning_positions(self, positions: tuple[int, ...], prompt_tokens: int) -> tuple[int, ...]:
        """Where the tokens at these positions of the tokenized prompt (`prompt_tokens` long) sit in the conditioning
        the model attends to; negative when counted from its end."""
        return tuple(p - prompt_tokens for p in positions) if self.counts_words_from_end else positions

    @abstractmethod
    def feature_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        """The modules whose outputs are the readout features, in the order heads list them."""

    @abstractmethod
    def feature_dims(self, diffusion_model: nn.Module) -> list[int]:
        """Channels of each readout layer, as a head config lists them."""

    @abstractmethod
    def timestep_embedding(self, diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
        """The model's own timestep embedding E(t) that heads are fed."""

    def embedding_dim(self, diffusion_model: nn.Module) -> int:
        """Width of the timestep embedding heads are fed."""
        return int(diffusion_model.time_embed[-1].out_features)

    def head_timesteps(self, model_sampling, sigma: torch.Tensor) -> torch.Tensor:
        """The heads' 0..999 timesteps of the sampler's sigmas."""
        return model_sampling.timestep(sigma).float()

    def sampling_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The model sampling's own timesteps for the heads' 0..999 ones."""
        return timesteps

    def vp_scale(self, sigma: float) -> float:
        """x / vp_scale is the variance-preserving latent x_t the official step acts on: sqrt(1 + sigma^2) for
        ComfyUI's EPS models (x = x0 + sigma eps); 1 for flow matching, whose x is already x_t."""
        return math.sqrt(1 + sigma * sigma)

    self_guidance: bool = True
    """Whether Self-Guidance can read this family's prompt attention (its word positions and attention maps)."""

    blocks_add_in_place: bool = False
    """Whether the model's blocks add into tensors they saved for the backward (the grad pass then keeps copies)."""

    few_step_passes: int = 2
    """The guided passes recurrence's auto gives a short run of this family (recurrence.py): measured on its learned
    world where one exists, else on the SD1.5 and Flux worlds (both gained from a second pass at 4-8 steps)."""

    weight_scale: float = 1.0
    """Multiplies a target's weight in the fast rule, so that one weight means one strength in every family (the
    calibration of the default weight, run.py, in this family's parameterization)."""

    @contextmanager
    def capture_attention(self, diffusion_model: nn.Module, token_indices: list[int]) -> Iterator[AttentionStore]:
        """The chosen tokens' attention maps of every model call made inside the block (Self-Guidance)."""
        with capture_cross_attention(self.cross_attentions(diffusion_model), token_indices) as store:
            yield store

    @abstractmethod
    def cross_attentions(self, diffusion_model: nn.Module) -> list[nn.Module]:
        """The cross-attention modules whose image-query x text-key maps Self-Guidance reads."""

    @abstractmethod
    def checkpoint_layers(self, diffusion_model: nn.Module) -> list[nn.Module]:
        """The layers gradient checkpointing recomputes in the backward."""

    @abstractmethod
    def feature_hook_point(self, layer: nn.Module) -> nn.Module:
        """The submodule of a readout layer whose forward output is that layer's feature map."""

    @contextmanager
    def capture_features(self, diffusion_model: nn.Module) -> Iterator[LayerFeatures]:
        """Keep each readout layer's feature map of every model call made inside the block."""
        layers = self.feature_layers(diffusion_model)
        store = LayerFeatures([None] * len(layers))

        def hook_for(index: int):
            def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
                store.layers[index] = output
            return hook

        handles = []
        try:
            for index, layer in enumerate(layers):
                handles.append(self.feature_hook_point(layer).register_forward_hook(hook_for(index)))
            yield store
        finally:
            for handle in handles:
                handle.remove()

    def head_embedding(self, diffusion_model: nn.Module, config, timesteps: torch.Tensor) -> torch.Tensor | None:
        """The embedding a head is fed: E(t), or E(num_timesteps - t) for heads trained that way; None if unused."""
        if not config.use_emb or config.bottleneck_sequential:
            return None
        t = config.num_timesteps - timesteps if config.reverse_timestep else timesteps
        return self.timestep_embedding(diffusion_model, t.float())

    def noised(self, model_patcher, latent: torch.Tensor, timesteps: torch.Tensor,
               noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A raw (VAE-space) latent noised to the timesteps by the model's own model_sampling, and the sigmas."""
        base = model_patcher.model
        sampling = base.model_sampling
        device = next((buffer.device for buffer in sampling.buffers()), latent.device)
        sigma = sampling.sigma(self.sampling_timesteps(timesteps.float().to(device))).float()
        if self.single_frame and latent.ndim == 4:
            latent, noise = latent.unsqueeze(2), noise.unsqueeze(2)
        x = sampling.noise_scaling(sigma, noise.float().to(device), base.process_latent_in(latent.float().to(device)))
        return x, sigma

    def check_latent(self, latent: torch.Tensor, name: str) -> None:
        """A ValueError naming the input unless it is a (batch, channels, H, W) latent of this family."""
        frame = self.single_frame and latent.ndim == 5 and latent.shape[2] == 1
        if (latent.ndim != 4 and not frame) or latent.shape[1] != self.latent_channels:
            raise ValueError(f"{name}: it holds latents of shape {tuple(latent.shape)}; {self.label} readout heads "
                             f"read {self.label} image latents (batch, {self.latent_channels}, height, width): connect "
                             "a latent of this model (VAE Encode or a sampler's LATENT output)")
