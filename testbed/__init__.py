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
STAND_INS_LINK_NAME = "readout-testbed-stand-ins"
STAND_INS_DIR = os.path.join(REPO, "testbed", "stand_in_nodes")
"""The test bed's own nodes (text encoders no tiny model replaces), linked into custom_nodes beside the pack."""
COMFYUI_MARKERS = ("main.py", "nodes.py", "execution.py", "folder_paths.py", os.path.join("comfy", "model_patcher.py"))
MODELS_DIR = os.path.join(REPO, ".models")
"""The models folder every test-bed ComfyUI shares (tiny and world models, written once for all versions)."""
MODEL_PATHS_FILE = "readout_test_bed_model_paths.yaml"
"""Our own file, beside a user's extra_model_paths.yaml (never overwritten): servers get it by --extra-model-paths-config."""
MODEL_PATHS_KEY = "readout_guidance_test_bed"


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


def model_paths_file(comfy: str) -> str:
    """The test bed's model paths file in a ComfyUI folder (extra_model_paths.yaml's format)."""
    return os.path.join(comfy, MODEL_PATHS_FILE)


def write_model_paths(comfy: str) -> str:
    """List MODELS_DIR's folders in this ComfyUI's model paths file (searched after ComfyUI's own models folder)."""
    folders = sorted(f for f in os.listdir(MODELS_DIR) if os.path.isdir(os.path.join(MODELS_DIR, f)))
    lines = [f"{MODEL_PATHS_KEY}:  # written by scripts/setup_testbed.py: the test bed's shared models",
             f"  base_path: {MODELS_DIR}", *(f"  {folder}: {folder}" for folder in folders)]
    path, text = model_paths_file(comfy), "\n".join(lines) + "\n"
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path
    partial = f"{path}.{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)  # a test bed starting beside this setup reads the old file or the new one, never half
    return path


def load_model_paths(comfy: str) -> None:
    """Read the test bed's model paths file into folder_paths as main.py reads --extra-model-paths-config (once)."""
    import folder_paths
    import utils.extra_config

    path = model_paths_file(comfy)
    listed = any(MODELS_DIR in p for paths, _ in folder_paths.folder_names_and_paths.values() for p in paths)
    if os.path.isfile(path) and not listed:
        utils.extra_config.load_extra_path_config(path)


def import_comfyui_in_process(comfy: str):
    """Import ComfyUI on the CPU and load its extra nodes and custom nodes (this pack included); returns `nodes`."""
    import asyncio

    folder = comfy
    check_comfyui(folder)
    add_comfyui_to_sys_path(folder)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import utils.extra_config  # noqa: F401  (before `nodes`, so `utils` is ComfyUI's package)
    import nodes

    load_model_paths(folder)

    if "ReadoutGuidedKSampler" not in nodes.NODE_CLASS_MAPPINGS:
        failed = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        if any(PACK_LINK_NAME in str(f) for f in failed or []) or "LoadReadoutHead" not in nodes.NODE_CLASS_MAPPINGS:
            raise TestbedError(f"this pack failed to import in ComfyUI at {folder}: see the log above")
    return nodes
