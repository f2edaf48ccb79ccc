"""Fit a prompt to the tiny models: their file names, and a CPU-sized canvas."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tiny.models import TINY_CHECKPOINT, TINY_CONTROLNET, TINY_HEAD_KINDS, TINY_LORA, tiny_head_name  # noqa: E402

TINY_BY_INPUT = {"ckpt_name": TINY_CHECKPOINT, "control_net_name": TINY_CONTROLNET, "lora_name": TINY_LORA}
HEAD_STAND_INS = {"identity": "appearance"}


def tiny_head_for(name: str) -> str:
    """The tiny head of the kind an official or user head file name mentions (identity: the appearance head)."""
    for kind in (*TINY_HEAD_KINDS, *HEAD_STAND_INS):
        if kind in name.lower():
            return tiny_head_name(HEAD_STAND_INS.get(kind, kind))
    raise ValueError(f"head file {name!r} names no head kind ({', '.join(TINY_HEAD_KINDS)}): cannot pick a tiny stand-in")


def swap_model_names(prompt: dict) -> dict:
    """The same prompt with every checkpoint, ControlNet, LoRA and readout head name replaced by its tiny stand-in."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, tiny in TINY_BY_INPUT.items():
            if isinstance(inputs.get(name), str):
                inputs[name] = tiny
        if isinstance(inputs.get("head_name"), str):
            inputs["head_name"] = tiny_head_for(inputs["head_name"])
    return prompt


def shrink_canvas(prompt: dict, size: int) -> dict:
    """Cap every integer width/height input at size pixels and scale drag points with the canvas
    (the tiny SD1.5 UNet costs seconds per step at 512 px on a CPU)."""
    sides = [v for node in prompt.values() for k, v in node["inputs"].items() if k in ("width", "height") and isinstance(v, int)]
    factor = min(1.0, size / max(sides)) if sides else 1.0
    for node in prompt.values():
        inputs = node["inputs"]
        for name in ("width", "height"):
            if isinstance(inputs.get(name), int) and inputs[name] > size:
                inputs[name] = size
        if isinstance(inputs.get("points"), str) and factor < 1.0:
            pairs = json.loads(inputs["points"] or "[]")
            inputs["points"] = json.dumps([{k: [c * factor for c in pair[k]] for k in ("source", "target")} for pair in pairs])
    return prompt


def cap_steps(prompt: dict, steps: int, refinements: int = 2) -> dict:
    """Cap every sampler's and inverter's steps (they stay equal to each other) and inversion refinements."""
    for node in prompt.values():
        inputs = node["inputs"]
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], steps)
        if isinstance(inputs.get("refinements"), int):
            inputs["refinements"] = min(inputs["refinements"], refinements)
    return prompt


def fit_for_cpu(prompt: dict, size: int, steps: int) -> dict:
    """Tiny model names, a small canvas and few steps: what the demo and the tests run on a CPU."""
    return cap_steps(shrink_canvas(swap_model_names(prompt), size), steps)
