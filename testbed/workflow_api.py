"""Convert an editor (UI-format) workflow into the API format `POST /prompt` takes, using /object_info.

The editor does this in the browser (`app.graphToPrompt()`); the demo needs it without a browser.
Frontend-only nodes (notes, reroutes) are dropped, muted nodes skipped, reroutes followed; a widget a saved workflow
has no value for (an input added to the node since) takes its default, as the editor gives it.
"""
from __future__ import annotations

from typing import Any

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be converted; the message names the node."""


def _input_order(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, info["input"][section][name]) for section in ("required", "optional") for name in order.get(section, [])]


def _is_widget(spec: list) -> bool:
    """Whether the editor shows this input as a widget (a forceInput one is a socket and holds no widget value)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def _has_control_value(name: str, spec: list) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] == "INT" and (name in SEED_NAMES or bool(options.get("control_after_generate")))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a UI workflow; raises WorkflowError for unknown node types."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}
    missing = sorted({n["type"] for n in nodes.values() if n["type"] not in FRONTEND_ONLY and n["type"] not in object_info})
    if missing:
        raise WorkflowError(f"node types not installed: {', '.join(missing)}")

    def source_of(link_id: int) -> list:
        link = links[link_id]
        origin = nodes[link[1]]
        if origin["type"] == "Reroute":
            return source_of(origin["inputs"][0]["link"])
        return [str(link[1]), link[2]]

    prompt: dict[str, dict] = {}
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) == MUTED:
            continue
        if node.get("mode", 0) == BYPASSED:
            raise WorkflowError(f"node {node['id']} ({node['type']}) is bypassed: un-bypass or delete it")
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values", [])
        position = 0
        for name, spec in _input_order(object_info[node["type"]]):
            if not _is_widget(spec):
                continue
            if isinstance(values, dict):
                if name in values:
                    inputs[name] = values[name]
                continue
            if position < len(values):
                inputs[name] = values[position]
            elif len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                inputs[name] = spec[1]["default"]
            position += 2 if _has_control_value(name, spec) else 1
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                inputs[slot["name"]] = source_of(slot["link"])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
