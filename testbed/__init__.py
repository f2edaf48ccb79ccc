"""The test bed that tests, benchmarks, the demo and the world scripts share: where the ComfyUI checkout, its models
folder and this pack's link live, and ComfyUI imported in process. Run its users from the repository root
(`python -m scripts.demo`, `python -m bench.guidance_cost`, pytest with tests/pytest.ini): the root is then on
sys.path and `import testbed` needs no path edits."""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_COMFYUI = os.path.join(REPO, ".comfyui", "ComfyUI")
PACK_LINK_NAME = "comfyui-readout-guidance"
COMFYUI_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", os.path.join("comfy", "model_patcher.py"))


class TestbedError(RuntimeError):
    """Setup cannot go on; the message says what to fix."""


def comfyui_path() -> str:
    """COMFYUI_PATH when set, otherwise the ComfyUI extracted into this repo's .comfyui folder."""
    return os.path.abspath(os.environ.get("COMFYUI_PATH") or DEFAULT_COMFYUI)


def check_comfyui(path: str) -> None:
    """Refuse a folder that is not a ComfyUI checkout, naming what is missing."""
    missing = [m for m in COMFYUI_MARKERS if not os.path.exists(os.path.join(path, m))]
    if missing:
        raise TestbedError(
            f"COMFYUI_PATH={path} is not a ComfyUI checkout (missing {', '.join(missing)}). "
            "Point COMFYUI_PATH at the folder that holds ComfyUI's main.py, or unset it to use the bundled copy."
        )


def pack_dir_in(comfy: str) -> str:
    """This pack's folder inside ComfyUI's custom_nodes."""
    return os.path.join(comfy, "custom_nodes", PACK_LINK_NAME)


def add_comfyui_to_sys_path(comfy: str) -> None:
    """Make `import comfy`, `nodes`, `execution` resolve to this ComfyUI."""
    if comfy not in sys.path:
        sys.path.insert(0, comfy)


def import_comfyui_in_process(comfy: str):
    """Import ComfyUI on the CPU and load its extra nodes and custom nodes (this pack included); returns `nodes`."""
    import asyncio

    check_comfyui(comfy)
    add_comfyui_to_sys_path(comfy)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import utils.extra_config  # noqa: F401  (before `nodes`, so `utils` is ComfyUI's package)
    import nodes

    if "ReadoutGuidedKSampler" not in nodes.NODE_CLASS_MAPPINGS:
        failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        if any(PACK_LINK_NAME in str(f) for f in failed or []) or "LoadReadoutHead" not in nodes.NODE_CLASS_MAPPINGS:
            raise TestbedError(f"this pack failed to import in ComfyUI at {comfy}: see the log above")
    return nodes
