"""The example-workflow builder's UI format: positional widget values (seed controls included), links by output
name, and the round trip back to an API prompt as the demo converts it."""
from __future__ import annotations

import pytest

from scripts.build_workflows import Workflow
from testbed.workflow_api import WorkflowError, ui_to_api


class Loader:
    RETURN_TYPES = ("MODEL", "CLIP")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": (["a.safetensors", "b.safetensors"],)}}


class Sampler:
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "seed": ("INT", {"default": 0}), "cfg": ("FLOAT", {"default": 5.0}),
                             "clip": ("CLIP",)},
                "optional": {"note": ("STRING", {"default": "", "forceInput": True}),
                             "scale": ("INT", {"default": 2, "control_after_generate": True})}}


def object_info(classes: dict) -> dict:
    """/object_info as the server serves it for these V1-style classes."""
    info = {}
    for name, cls in classes.items():
        spec = cls.INPUT_TYPES()
        info[name] = {"input": {s: {k: list(v) for k, v in spec.get(s, {}).items()} for s in ("required", "optional")}}
    return info


def small_graph() -> Workflow:
    wf = Workflow({"Loader": Loader, "Sampler": Sampler})
    loader = wf.add("Loader", (0, 0), {"name": "b.safetensors"})
    wf.add("Sampler", (400, 0), {"seed": 42}, title="Guided", model=(loader, "MODEL"), clip=(loader, "CLIP"))
    wf.note((0, 300), "read me")
    return wf


def test_ui_nodes_hold_positional_widgets_links_and_titles():
    ui = small_graph().to_ui()
    loader, sampler, note = ui["nodes"]
    assert loader["widgets_values"] == ["b.safetensors"]
    assert sampler["widgets_values"] == [42, "fixed", 5.0, 2, "fixed"]
    assert sampler["title"] == "Guided" and note["widgets_values"] == ["read me"]
    assert ui["links"] == [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "CLIP"]]
    assert loader["outputs"][1]["links"] == [2]
    assert [i["link"] for i in sampler["inputs"]] == [1, 2]
    assert (ui["last_node_id"], ui["last_link_id"]) == (3, 2)


def test_unknown_widgets_are_refused():
    wf = Workflow({"Loader": Loader})
    wf.add("Loader", (0, 0), {"nmae": "a.safetensors"})
    with pytest.raises(ValueError, match=r"Loader: no widget named \['nmae'\]"):
        wf.to_ui()


def test_ui_workflow_converts_back_to_the_api_prompt():
    classes = {"Loader": Loader, "Sampler": Sampler}
    prompt = ui_to_api(small_graph().to_ui(), object_info(classes))
    assert prompt == {"1": {"class_type": "Loader", "inputs": {"name": "b.safetensors"}},
                      "2": {"class_type": "Sampler", "inputs": {"seed": 42, "cfg": 5.0, "scale": 2, "model": ["1", 0],
                                                                "clip": ["1", 1]}}}
    with pytest.raises(WorkflowError, match="node types not installed: Sampler"):
        ui_to_api(small_graph().to_ui(), object_info({"Loader": Loader}))


def test_a_widget_added_since_the_workflow_was_saved_takes_its_default():
    """A workflow saved before the Sampler gained its last widget: the editor gives that widget its default."""
    ui = small_graph().to_ui()
    ui["nodes"][1]["widgets_values"] = ui["nodes"][1]["widgets_values"][:3]
    prompt = ui_to_api(ui, object_info({"Loader": Loader, "Sampler": Sampler}))
    assert prompt["2"]["inputs"]["scale"] == 2 and prompt["2"]["inputs"]["cfg"] == 5.0
