"""Test bed stand-ins that ComfyUI loads beside the pack (scripts/setup_testbed.py links this folder into the test
bed's custom_nodes): nodes in place of models no tiny one replaces. Never part of the pack users install."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
if REPO not in sys.path:
    sys.path.append(REPO)  # after ComfyUI's own folders: its `nodes` stays ComfyUI's

from tiny.families import text_conditioning  # noqa: E402


class TextConditioningStandIn:
    """A prompt's CONDITIONING at a family's text width, in place of CLIP Text Encode with a text encoder ComfyUI
    builds only at full size (Qwen-Image's Qwen2.5-VL 7B): random per text, as the tiny models' weights are."""

    CATEGORY = "testbed"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    DESCRIPTION = "Test bed stand-in for a text encoder no tiny model replaces."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "text": ("STRING", {"multiline": True, "tooltip": "The prompt; the same text gives the same tokens."}),
            "text_width": ("INT", {"default": 3584, "min": 1, "max": 16384,
                              "tooltip": "The family's text width (Qwen-Image: 3584)."})},
            "optional": {
                "vae": ("VAE", {"tooltip": "With image: the VAE that encodes the edit's reference image."}),
                "image": ("IMAGE", {"tooltip": "An edit model's reference image (Qwen-Image-Edit's image1), set as "
                                               "the conditioning's reference latent."})}}

    def encode(self, text: str, text_width: int, vae=None, image=None) -> tuple[list]:
        conditioning = text_conditioning(text, text_width)
        if vae is None or image is None:
            return (conditioning,)
        import node_helpers

        latent = vae.encode(image[:, :, :, :3])
        frames = latent if latent.ndim == 5 else latent[:, :, None]  # Qwen-Image reads one-frame Wan latents
        return (node_helpers.conditioning_set_values(conditioning, {"reference_latents": [frames]}, append=True),)


NODE_CLASS_MAPPINGS = {"ReadoutTestbedTextConditioning": TextConditioningStandIn}
NODE_DISPLAY_NAME_MAPPINGS = {"ReadoutTestbedTextConditioning": "Text Conditioning Stand-in (test bed)"}
