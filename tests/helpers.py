"""Helpers that drive the real ComfyUI: node calls as the executor makes them, prompts, a live server."""
from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch

from comfy_server import ComfyServer, start_server, stop_server
from testbed import comfyui_path, pack_dir_in

from tiny.models import TINY_CHECKPOINT as TINY_CKPT, TINY_CONTROLNET, TINY_LORA  # noqa: F401


def node_class(name: str) -> type:
    """A registered node class, ours or ComfyUI's."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


def call_node(name: str, **inputs: Any) -> tuple:
    """Run one node the way ComfyUI's executor does: a fresh instance, under inference mode."""
    cls = node_class(name)
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def with_tiny_controlnet(positive, negative, vae) -> tuple:
    """Both prompts through the tiny ControlNet (a bright box as the hint), as ControlNetApplyAdvanced makes them."""
    controlnet = call_node("ControlNetLoader", control_net_name=TINY_CONTROLNET)[0]
    hint = torch.zeros(1, 64, 64, 3)
    hint[:, 8:40, 20:50] = 1.0
    return call_node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=controlnet,
                     image=hint, strength=1.0, start_percent=0.0, end_percent=1.0, vae=vae)


def pack_module(submodule: str = "") -> ModuleType:
    """This pack's module (or a submodule) exactly as ComfyUI imported it."""
    base = pack_dir_in(comfyui_path()).replace(".", "_x_")
    if base not in sys.modules:
        raise RuntimeError(f"the pack was not loaded by ComfyUI under {base}")
    return importlib.import_module(f"{base}.{submodule}" if submodule else base)


class _ServerStub:
    """The part of PromptServer the executor talks to."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event: str, data: dict, sid: str | None = None) -> None:
        self.messages.append((event, data))


@dataclass
class PromptResult:
    success: bool
    outputs: dict
    messages: list = field(default_factory=list)

    def error_text(self) -> str:
        return "\n".join(json.dumps(d, default=str)[:2000] for e, d in self.messages if e == "execution_error")


def run_prompt(prompt: dict) -> PromptResult:
    """Validate and execute an API-format prompt in process through execution.PromptExecutor."""
    import execution

    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid[0]:
        raise AssertionError(f"prompt failed validation: {valid[1]} {valid[3]}")
    server = _ServerStub()
    # "ram_inactive" is read by ComfyUI 0.33's executor; 0.3.75 ignores it
    cache_args = {"lru": 0, "ram": 0, "ram_inactive": 0}
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args=cache_args)
    executor.execute(prompt, prompt_id, {}, valid[2])
    return PromptResult(executor.success, executor.history_result["outputs"], executor.status_messages)


@pytest.fixture(scope="session")
def comfy_server() -> Iterator[ComfyServer]:
    """The real ComfyUI server with this pack, for the whole test session.

    Its user folder is fresh: the editor's settings are the defaults, except that the first-run templates
    dialog has been seen (it would cover the canvas).
    """
    out = tempfile.mkdtemp(prefix="rg-server-out-")
    user_dir = tempfile.mkdtemp(prefix="rg-server-user-")
    os.makedirs(os.path.join(user_dir, "default"))
    with open(os.path.join(user_dir, "default", "comfy.settings.json"), "w", encoding="utf-8") as f:
        json.dump({"Comfy.TutorialCompleted": True}, f)
    server = start_server(comfyui_path(), out, os.path.join(out, "server.log"), user_dir=user_dir)
    try:
        yield server
    finally:
        stop_server(server)


def text_to_image_prompt(seed: int = 1, steps: int = 4, size: int = 64, prefix: str = "rg_test") -> dict:
    """A plain text-to-image API prompt on the tiny checkpoint."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
