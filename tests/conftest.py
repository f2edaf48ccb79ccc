"""Test harness: a real ComfyUI imported in process on the CPU, with this pack loaded as a custom node."""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "scripts"), REPO]

from testbed import add_comfyui_to_sys_path, check_comfyui, comfyui_path, pack_dir_in  # noqa: E402

COMFYUI = comfyui_path()
check_comfyui(COMFYUI)
add_comfyui_to_sys_path(COMFYUI)

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
comfy.cli_args.args.disable_all_custom_nodes = False

import utils.extra_config  # noqa: E402,F401  (before `nodes`, so `utils` is ComfyUI's package)
import folder_paths  # noqa: E402
import nodes  # noqa: E402

folder_paths.set_output_directory(tempfile.mkdtemp(prefix="rg-tests-out-"))

_loaded = False


def load_comfyui_nodes() -> None:
    """Load ComfyUI's extra nodes and custom nodes (this pack included) once per session."""
    global _loaded
    if _loaded:
        return
    failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    pack = pack_dir_in(COMFYUI)
    if any(pack in str(f) or os.path.basename(pack) in str(f) for f in failed or []):
        raise RuntimeError(f"this pack failed to import in ComfyUI: {failed}")
    _loaded = True


load_comfyui_nodes()

from helpers import comfy_server  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="session")
def comfyui_dir() -> str:
    return COMFYUI
