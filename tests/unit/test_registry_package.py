"""The registry package as `comfy node pack` builds it (comfy-cli's own packer, honouring .comfyignore): the runtime
only, small, complete (every node's help page, every example workflow with its thumbnail and input images), and
importing nothing that it leaves out."""
from __future__ import annotations

import ast
import json
import os
import zipfile

import pytest
from comfy_cli.file_utils import zip_files

from scripts.example_images import EXAMPLES
from testbed import REPO

MAX_PACKAGE_BYTES = 5 * 1024 * 1024
WORKSHOP = ("tests/", "bench/", "world/", "tiny/", "testbed/", "scripts/", ".ci/", "Makefile")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> zipfile.ZipFile:
    path = tmp_path_factory.mktemp("pack") / "node.zip"
    here = os.getcwd()
    os.chdir(REPO)
    try:
        zip_files(str(path))
    finally:
        os.chdir(here)
    assert os.path.getsize(path) <= MAX_PACKAGE_BYTES, f"the package is {os.path.getsize(path) / 2**20:.1f} MiB"
    return zipfile.ZipFile(path)


def test_the_package_is_the_runtime_without_the_workshop(package):
    names = package.namelist()
    assert [n for n in names if n.startswith(WORKSHOP)] == []
    for needed in ("__init__.py", "LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "requirements.txt",
                   "icon.png", "web/points_editor.js", "web/head_info.js"):
        assert needed in names, needed
    assert sum(1 for n in names if n.startswith("readout/") and n.endswith(".py")) > 40


def test_the_package_ships_every_example_with_its_thumbnail_inputs_and_every_help_page(package):
    names = set(package.namelist())
    workflows = [n for n in names if n.startswith("example_workflows/") and n.endswith(".json")]
    assert len(workflows) >= 14
    for workflow in workflows:
        assert workflow.replace(".json", ".jpg") in names, f"{workflow} has no thumbnail"
        loaded = {w for node in json.loads(package.read(workflow))["nodes"]
                  if node["type"] in ("LoadImage", "LoadImageMask") for w in node["widgets_values"][:1]}
        for image in loaded:
            assert f"example_workflows/input/{image}" in names, f"{workflow} loads {image}, which is not shipped"
    for image in EXAMPLES:
        assert f"example_workflows/input/{image}" in names
    node_ids = {node["type"] for w in workflows for node in json.loads(package.read(w))["nodes"]}
    ours = {n for n in node_ids if os.path.exists(os.path.join(REPO, "web", "docs", f"{n}.md"))}
    assert len(ours) >= 10 and all(f"web/docs/{n}.md" in names for n in ours)


def relative_imports(source: str, module_path: str) -> list[str]:
    """The files a module's relative imports name, as paths inside the package."""
    folder = os.path.dirname(module_path)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = folder
            for _ in range(node.level - 1):
                base = os.path.dirname(base)
            parts = (node.module or "").split(".") if node.module else []
            target = "/".join(p for p in [base, *parts] if p)
            candidates = [target] + [f"{target}/{alias.name}" for alias in node.names]
            found.append(candidates)
    return found


def test_every_relative_import_of_the_package_is_inside_it(package):
    names = set(package.namelist())
    for name in names:
        if not name.endswith(".py"):
            continue
        for candidates in relative_imports(package.read(name).decode("utf-8"), name):
            assert any(f"{c}.py" in names or f"{c}/__init__.py" in names for c in candidates), (name, candidates)
