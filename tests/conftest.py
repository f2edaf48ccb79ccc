"""Test harness: a real ComfyUI imported in process on the CPU, with this pack loaded as a custom node."""
from __future__ import annotations

import os
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "scripts"), REPO]

from testbed import comfyui_path, import_comfyui_in_process  # noqa: E402

COMFYUI = comfyui_path()
import_comfyui_in_process(COMFYUI)

import folder_paths  # noqa: E402

folder_paths.set_output_directory(tempfile.mkdtemp(prefix="rg-tests-out-"))

from helpers import comfy_server  # noqa: E402,F401  (fixture)
from browser import browser  # noqa: E402,F401  (fixture)


@pytest.fixture(scope="session")
def comfyui_dir() -> str:
    return COMFYUI


@pytest.fixture(scope="module")
def family(request) -> str:
    """The model family a test runs on: sd15, or each family for tests marked `@every_family` (helpers)."""
    return getattr(request, "param", "sd15")


@pytest.fixture(scope="module")
def tiny(family):
    """The family's tiny checkpoint's (MODEL, CLIP, VAE), loaded by Load Checkpoint once per test module."""
    from helpers import call_node
    from tiny.models import TINY_CHECKPOINTS

    return call_node("CheckpointLoaderSimple", ckpt_name=TINY_CHECKPOINTS[family])[:3]
