"""Fit a prompt to the tiny models: their file names, and a CPU-sized canvas."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from readout.tiny import TINY_CHECKPOINT, TINY_CONTROLNET, TINY_LORA  # noqa: E402

TINY_BY_INPUT = {"ckpt_name": TINY_CHECKPOINT, "control_net_name": TINY_CONTROLNET, "lora_name": TINY_LORA}


def swap_model_names(prompt: dict) -> dict:
    """The same prompt with every checkpoint, ControlNet and LoRA name replaced by its tiny stand-in."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, tiny in TINY_BY_INPUT.items():
            if isinstance(inputs.get(name), str):
                inputs[name] = tiny
    return prompt


def shrink_canvas(prompt: dict, size: int) -> dict:
    """Cap every integer width/height input at size pixels (the tiny SD1.5 UNet costs seconds per step at 512 px on a CPU)."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name in ("width", "height"):
            if isinstance(inputs.get(name), int) and inputs[name] > size:
                inputs[name] = size
    return prompt
