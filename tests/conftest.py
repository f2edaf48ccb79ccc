"""Test harness: a real ComfyUI imported in process on the CPU, with this pack loaded as a custom node."""
from __future__ import annotations

import ast
import glob
import os
import tempfile

import pytest

from testbed import comfyui_path, import_comfyui_in_process

COMFYUI = comfyui_path()
import_comfyui_in_process(COMFYUI)

import folder_paths

folder_paths.set_output_directory(tempfile.mkdtemp(prefix="rg-tests-out-"))

from helpers import comfy_server  # noqa: F401  (fixture)
from browser import browser, chromium, editor, editor_kept_open  # noqa: F401  (fixtures)


SERVER_FIXTURES = {"comfy_server", "browser", "chromium", "editor", "editor_kept_open"}
"""Fixtures that start the session's ComfyUI server or Chromium."""


def modules_using_the_server(tests_dir: str) -> set[str]:
    """The test modules with a function (test or fixture) that takes one of SERVER_FIXTURES."""
    found = set()
    for path in glob.glob(os.path.join(tests_dir, "test_*.py")):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        if any(isinstance(node, ast.FunctionDef) and SERVER_FIXTURES & {arg.arg for arg in node.args.args}
               for node in ast.walk(tree)):
            found.add(os.path.basename(path))
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (CI: `make test-comfyui-033 WORKERS=2`): one work unit per module, so that its fixtures
    load once, and one unit for all the modules that use the server, so that one worker holds it and its models."""
    from xdist.scheduler import LoadScopeScheduling

    on_server = modules_using_the_server(os.path.dirname(__file__))

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "the ComfyUI server's modules" if os.path.basename(module) in on_server else module

    return ModuleScheduling(config, log)


@pytest.fixture(autouse=True, scope="module")
def models_released_after_each_module():
    """The models a test module loaded are let go when it ends (its module fixtures are finalized first)."""
    yield
    from helpers import release_models

    release_models()


@pytest.fixture
def model_folders(tmp_path):
    """The test's own readout_heads and readout_datasets folders (tmp_path/<name>), listed before the tiny ones."""
    from helpers import own_model_folders

    with own_model_folders(tmp_path) as root:
        yield root


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
