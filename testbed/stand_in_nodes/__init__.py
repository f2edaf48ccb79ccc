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
                              "tooltip": "The family's text width (Qwen-Image: 3584)."})}}

    def encode(self, text: str, text_width: int) -> tuple[list]:
        return (text_conditioning(text, text_width),)


NODE_CLASS_MAPPINGS = {"ReadoutTestbedTextConditioning": TextConditioningStandIn}
NODE_DISPLAY_NAME_MAPPINGS = {"ReadoutTestbedTextConditioning": "Text Conditioning Stand-in (test bed)"}
