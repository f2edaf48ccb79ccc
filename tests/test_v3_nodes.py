"""The nodes on ComfyUI's V3 schema: loaded through `comfy_entrypoint` on the pinned API, with the previous release's
node ids, inputs, outputs and defaults, so its workflows load and run unchanged."""
from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import sys

import pytest

from testbed.server import PromptFailed
from helpers import (PREVIOUS_RELEASE, PREVIOUS_WORKFLOWS, call_node, node_class, pack_module, previous_schema,
                     schema_inputs)
from testbed import REPO, comfyui_path, pack_dir_in
from tiny.models import tiny_head_name
from testbed.tiny_names import fit_for_cpu
from testbed.workflow_api import ui_to_api

pytestmark = pytest.mark.every_comfyui  # registration, schemas and the previous release: every ComfyUI

WIDGET_OPTIONS = ("default", "min", "max", "step", "round", "forceInput", "control_after_generate")


def options_of(spec: list) -> list | None:
    """A combo's choices in either /object_info form: [[choices], {...}] (classic) or ["COMBO", {"options"}] (V3)."""
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options") if spec[0] == "COMBO" else None


def input_contract(spec: list) -> dict:
    """What a saved workflow relies on in one input: its type, widget options and choices."""
    kind = "COMBO" if isinstance(spec[0], (list, dict)) or spec[0] == "COMBO" else spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return {"type": kind, "multiline": bool(options.get("multiline")), **{k: options.get(k) for k in WIDGET_OPTIONS}}


def node_contract(info: dict) -> dict:
    return {
        "inputs": {section: [(name, input_contract(info["input"][section][name]))
                             for name in info["input_order"].get(section, [])] for section in ("required", "optional")},
        "outputs": list(zip(info["output"], info["output_name"], info["output_is_list"])),
        **{key: info[key] for key in ("category", "display_name", "output_node", "description")},
    }


def assert_keeps_contract(now: dict, before: dict, name: str) -> None:
    """The node as the previous release had it, except for optional inputs appended after its own (a saved workflow
    gives them their defaults)."""
    assert {k: v for k, v in now.items() if k != "inputs"} == {k: v for k, v in before.items() if k != "inputs"}, name
    assert now["inputs"]["required"] == before["inputs"]["required"], name
    optional, kept = now["inputs"]["optional"], before["inputs"]["optional"]
    assert optional[:len(kept)] == kept, name


def pack_node_ids() -> list[str]:
    """Every node of the pack, the previous release's and the ones added since."""
    return [node.GET_SCHEMA().node_id for node in pack_module("nodes").NODES]


def test_every_node_is_a_v3_node_of_the_pinned_api_loaded_through_comfy_entrypoint():
    from comfy_api.v0_0_2 import io

    assert set(previous_schema()) <= set(pack_node_ids())
    for name in pack_node_ids():
        assert issubclass(node_class(name), io.ComfyNode), name
    package = sys.modules[pack_dir_in(comfyui_path()).replace(".", "_x_")]
    assert callable(package.comfy_entrypoint)
    assert not hasattr(package, "NODE_CLASS_MAPPINGS"), "ComfyUI ignores comfy_entrypoint next to NODE_CLASS_MAPPINGS"
    sources = [os.path.join(root, f) for root, _, files in os.walk(os.path.join(REPO, "nodes")) for f in files
               if f.endswith(".py")]
    assert sources and not [path for path in sources if "INPUT_TYPES" in open(path, encoding="utf-8").read()]


def test_node_schemas_keep_the_previous_release_and_every_input_has_a_tooltip(comfy_server):
    info = comfy_server.get("/object_info")
    samplers = info["KSampler"]["input"]["required"]
    live = {"KSampler.sampler_name": options_of(samplers["sampler_name"]),
            "KSampler.scheduler": options_of(samplers["scheduler"])}
    for name, before in previous_schema().items():
        now = info[name]
        assert_keeps_contract(node_contract(now), node_contract(before), name)
        for section in ("required", "optional"):
            for input_name, spec in now["input"].get(section, {}).items():
                if input_name not in before["input"].get(section, {}):
                    continue
                source = (before["input"][section][input_name][0] if isinstance(before["input"][section][input_name][0],
                                                                                dict) else {}).get("options_from")
                if source in live:
                    assert options_of(spec) == live[source], f"{name}.{input_name}"
                elif source is None and options_of(spec) is not None:
                    assert options_of(spec) == options_of(before["input"][section][input_name]), f"{name}.{input_name}"
    for name in pack_node_ids():
        for section in ("required", "optional"):
            for input_name, spec in info[name]["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert all(info[name]["output_tooltips"]), f"{name} has an output without a tooltip"
        assert info[name]["category"] == "readout_guidance", name
    assert tiny_head_name("pose") in options_of(info["LoadReadoutHead"]["input"]["required"]["head_name"])


def test_a_head_rewritten_under_the_same_name_is_loaded_again(tmp_path):
    import folder_paths

    source = folder_paths.get_full_path("readout_heads", tiny_head_name("pose"))
    folder_paths.add_model_folder_path("readout_heads", str(tmp_path))
    try:
        shutil.copy(source, tmp_path / "retrained_pose.safetensors")
        fingerprint = node_class("LoadReadoutHead").fingerprint_inputs
        first = fingerprint(head_name="retrained_pose.safetensors", kind="auto")
        assert fingerprint(head_name="retrained_pose.safetensors", kind="auto") == first
        os.utime(tmp_path / "retrained_pose.safetensors", ns=(1, 10**18))
        assert fingerprint(head_name="retrained_pose.safetensors", kind="auto") != first
        head, info = call_node("LoadReadoutHead", head_name="retrained_pose.safetensors")
        assert head.config.kind == "pose" and "pose head" in info
    finally:
        folder_paths.get_folder_paths("readout_heads").remove(str(tmp_path))


def test_optional_inputs_left_out_take_the_schema_defaults():
    """A workflow of an older release may lack an optional widget; the executor then leaves it out, and the node
    must run with the default the editor shows."""
    options_signature = inspect.signature(pack_module("nodes.common").guidance_options).parameters
    checked = 0
    for name in pack_node_ids():
        parameters = inspect.signature(node_class(name).execute).parameters
        for input_id, spec in schema_inputs(name, optional=True).items():
            if getattr(spec, "default", None) is None:
                continue
            parameter = parameters.get(input_id) or options_signature[input_id]
            assert parameter.default == spec.default, f"{name}.{input_id}"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.sdxl_family) if name.startswith("sdxl")
                                  else name for name in PREVIOUS_WORKFLOWS])
def test_previous_release_workflow_runs_unchanged(comfy_server, name):
    """Each workflow saved with the previous release runs; on ComfyUI 0.3.75 the SD1.5 ones (the SDXL one is an
    SDXL-family run, which that leg leaves to model detection)."""
    with open(os.path.join(PREVIOUS_RELEASE, "workflows", name), encoding="utf-8") as f:
        workflow = json.load(f)
    prompt = fit_for_cpu(ui_to_api(workflow, comfy_server.get("/object_info")), 64, 4)
    entry = comfy_server.run(prompt)
    saved = [image for out in entry["outputs"].values() for image in out.get("images", []) if image["type"] == "output"]
    assert saved, f"{name} saved no image: {entry['outputs']}"
    assert os.path.exists(os.path.join(comfy_server.output_dir, saved[0]["subfolder"], saved[0]["filename"]))


def test_a_reversed_step_window_is_refused_when_the_prompt_is_queued(comfy_server):
    """The schema-level check (V3 validate_inputs): the target node is refused before anything runs, with a message
    that names the inputs and the fix (ComfyUI still runs the branches that do not depend on it)."""
    with open(os.path.join(PREVIOUS_RELEASE, "workflows", "spatial_depth.json"), encoding="utf-8") as f:
        prompt = fit_for_cpu(ui_to_api(json.load(f), comfy_server.get("/object_info")), 64, 4)
    target_id = next(key for key, node in prompt.items() if node["class_type"] == "ReadoutTarget")
    prompt[target_id]["inputs"].update(start_percent=0.8, end_percent=0.2)
    try:
        errors = comfy_server.post("/prompt", {"prompt": prompt})["node_errors"]
    except PromptFailed as refused:
        errors = json.loads(str(refused).split(": ", 1)[1])["node_errors"]
    assert target_id in errors, errors
    details = [error["details"] for error in errors[target_id]["errors"]]
    assert any("start_percent / end_percent: need 0 <= start <= end <= 1, got 0.8 and 0.2; set start_percent at most "
               "end_percent" in text for text in details), details


def test_the_example_workflows_are_what_the_builder_writes():
    """scripts/build_workflows.py reads every node's V3 schema (classic nodes' INPUT_TYPES); each committed example
    workflow in example_workflows/ is exactly its output."""
    import nodes

    from scripts.build_workflows import WORKFLOWS, workflow_text

    folder = os.path.join(REPO, "example_workflows")
    stale = []
    for name in WORKFLOWS:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            if f.read() != workflow_text(nodes.NODE_CLASS_MAPPINGS, name):
                stale.append(name)
    assert not stale, f"{stale} differ from what they are built from: run .venv/bin/python -m scripts.build_workflows"


def test_every_node_has_its_help_page_as_the_builder_writes_it():
    """web/docs/<node id>.md, which the editor's help panel serves, exists for every node and is what
    scripts/build_help_pages.py writes from the node's schema (every input and output with its tooltip)."""
    from scripts.build_help_pages import HELP_FOLDER, help_page

    stale = []
    for node in pack_module("nodes").NODES:
        path = os.path.join(HELP_FOLDER, f"{node.GET_SCHEMA().node_id}.md")
        if not os.path.exists(path):
            stale.append(node.GET_SCHEMA().node_id)
            continue
        with open(path, encoding="utf-8") as f:
            if f.read() != help_page(node):
                stale.append(node.GET_SCHEMA().node_id)
    assert not stale, f"{stale}: missing or stale: run .venv/bin/python -m scripts.build_help_pages"


def schema_node_ids(source: str) -> set[str]:
    """The node ids ComfyUI-Manager's scanner reads in a file: a class with a ComfyNode base (`ComfyNode` or
    `io.ComfyNode`) whose define_schema calls Schema(...) with node_id a string literal."""
    found = set()
    for cls in ast.walk(ast.parse(source)):
        bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in getattr(cls, "bases", [])]
        if not isinstance(cls, ast.ClassDef) or "ComfyNode" not in bases:
            continue
        for method in (m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == "define_schema"):
            for call in (c for c in ast.walk(method) if isinstance(c, ast.Call)):
                name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
                found |= {k.value.value for k in call.keywords if name == "Schema" and k.arg == "node_id"
                          and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
    return found


def test_comfyui_manager_scanner_finds_every_node_id():
    """ComfyUI-Manager's scanner maps node ids to packs from the source alone ("install missing nodes"): the ids it
    reads in the pack's files are exactly the registered ones."""
    found = set()
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("__pycache__", "output")]
        for name in (f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                found |= schema_node_ids(f.read())
    assert found == set(pack_node_ids())
