"""Node calls as ComfyUI's executor makes them, and this pack's modules as ComfyUI imported them."""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import torch

from testbed import comfyui_path, pack_dir_in


def node_class(name: str) -> type:
    """A registered node class, ours or ComfyUI's."""
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[name]


def _run(name: str, inputs: dict) -> Any:
    cls = node_class(name)
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def call_node(name: str, **inputs: Any) -> tuple:
    """Run one node the way ComfyUI's executor does: a fresh instance, under inference mode; its outputs (a V3
    node's result, a classic node's tuple or the "result" of its dict)."""
    out = _run(name, inputs)
    out = out["result"] if isinstance(out, dict) else out
    return getattr(out, "result", out)


def node_output(name: str, **inputs: Any) -> dict:
    """Run one V3 node like `call_node`, keeping what it shows in the editor: {"result": outputs, "ui": its ui dict}."""
    out = _run(name, inputs)
    return {"result": out.result, "ui": out.ui or {}}


def pack_module(submodule: str = "") -> ModuleType:
    """This pack's module (or a submodule) exactly as ComfyUI imported it.

    ComfyUI imports a custom node under a module name made from its folder's path; a plain `import readout` would
    load a second copy of every class, whose objects the nodes' isinstance checks and registries would not know."""
    base = pack_dir_in(comfyui_path()).replace(".", "_x_")
    if base not in sys.modules:
        raise RuntimeError(f"the pack was not loaded by ComfyUI under {base}")
    return importlib.import_module(f"{base}.{submodule}" if submodule else base)
