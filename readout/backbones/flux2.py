"""Flux.2 (dev and Klein): Flux's double- then single-stream layout in ComfyUI's Flux module, shared modulation and
a 128-channel latent at 1/16 of the image (the 32-channel VAE latent patchified 2x2, so the model's patch is 1).

Self-Guidance reads the readout blocks' joint attention as on Flux.1. The model pads a prompt shorter than 512
tokens on the left, so a word's tokens are counted from the conditioning's end.
"""
from __future__ import annotations

from torch import nn

from .dit import FluxBackbone, is_tokenizer


class Flux2Backbone(FluxBackbone):
    """Flux.2 and models ComfyUI detects as Flux.2: features from the image half of the double-stream blocks and
    the image span of the single-stream blocks, as for Flux.1."""

    family, label = "flux2", "Flux.2"
    latent_channels = 128
    latent_scale = 16
    counts_words_from_end = True

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        flux2 = getattr(sm, "Flux2", None)
        return flux2 is not None and isinstance(model_config, flux2)

    def matches_clip(self, clip) -> bool:
        """Flux.2 dev's (Mistral 3, CLIPLoader type flux2) or Klein's (Qwen3 4B or 8B) tokenizer."""
        return is_tokenizer(clip, "flux.Flux2Tokenizer", "flux.KleinTokenizer", "flux.KleinTokenizer8B")

    def prompt_tokenizer_key(self, clip) -> str:
        """The one tokenizer a Flux.2 CLIP has: Mistral 3 (`mistral3_24b`) or Qwen3 (`qwen3_4b`, `qwen3_8b`)."""
        return clip.tokenizer.clip_name

    def reads_prompt_of(self, clip_family: str, diffusion_model: nn.Module) -> bool:
        """Only a Flux.2 CLIP's: the left padding moves any other CLIP's tokens."""
        return clip_family == self.family
