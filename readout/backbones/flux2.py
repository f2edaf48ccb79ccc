"""Flux.2 (dev and Klein): Flux's double- then single-stream layout in ComfyUI's Flux module, shared modulation and
a 128-channel latent at 1/16 of the image (the 32-channel VAE latent patchified 2x2, so the model's patch is 1).

Its prompt is padded on the left to 512 tokens before the blocks, so Self-Guidance's word positions are not the
tokenizer's; Self-Guidance is refused on it until they are mapped.
"""
from __future__ import annotations

from .dit import FluxBackbone


class Flux2Backbone(FluxBackbone):
    """Flux.2 and models ComfyUI detects as Flux.2: features from the image half of the double-stream blocks and
    the image span of the single-stream blocks, as for Flux.1."""

    family, label = "flux2", "Flux.2"
    latent_channels = 128
    latent_scale = 16
    self_guidance = False

    def matches(self, model_config) -> bool:
        import comfy.supported_models as sm

        flux2 = getattr(sm, "Flux2", None)
        return flux2 is not None and isinstance(model_config, flux2)

    def matches_clip(self, clip) -> bool:
        return False
