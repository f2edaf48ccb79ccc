"""Write a help page per node into web/docs/<node id>.md, which the editor's node help panel shows: what the node
does and where it goes (written here), then every input and output with its tooltip (from the node's V3 schema).

Run with the test bed's Python: `.venv/bin/python -m scripts.build_help_pages` (needs the pack loaded in ComfyUI).
"""
from __future__ import annotations

import os

from testbed import REPO, comfyui_path, import_comfyui_in_process

HELP_FOLDER = os.path.join(REPO, "web", "docs")

USAGE = {
    "LoadReadoutHead": (
        "Put head files in `ComfyUI/models/readout_heads/`: the official heads (`readout_sdv15_*.pt`, "
        "`readout_sdxl_*.pt`, from the `weights/` folder of the authors' Hugging Face repository "
        "`g-luo/readout-guidance`) or `.safetensors` heads from Train Readout Head. Connect `head` to a target node "
        "or to Extract Readout; `info` says which model, kind and decoder layers the head reads."),
    "ExtractReadout": (
        "Shows what a head reads in an image: connect an image (or a latent), the model and VAE, and the head. Its "
        "`readout` is a target for Readout Target (guide a new image to read like this one) and the input of "
        "Readout Score."),
    "ReadoutTarget": (
        "Spatial control with a pose, depth or edge head: the guided image is steered until the head reads "
        "`target_image` (a map like a ControlNet's input) or `target_readout` (from Extract Readout). Chain it into "
        "KSampler (Readout Guidance) or Apply Readout Guidance. Example: `spatial_depth.json`, `spatial_pose.json`.\n\n"
        "![A depth map, the same seed unguided and guided on the learned world model](images/spatial_depth_world.jpg)"),
    "ReadoutDragTarget": (
        "Drag editing: click a source point on the reference image and then where it should go; the arrow shows the "
        "drag. The reference is a generated image (Readout Invert Image not needed) or a real one through Readout "
        "Invert Image. Example: `drag_generated.json`, `drag_real_image.json`.\n\n"
        "![The points editor on the node: a source point (red) dragged to its target (blue)]"
        "(images/drag_points_editor.jpg)"),
    "ReadoutAppearanceTarget": (
        "Keeps the colours and textures of a reference (generated, or a real image through Readout Invert Image) "
        "in a new image from another seed or prompt. Example: `appearance_variation.json`."),
    "ReadoutIdentityTarget": (
        "Keeps a face from a reference portrait in a new prompt: connect an identity head, the portrait's "
        "reference (Readout Invert Image) and a mask of the face. Example: `identity.json`."),
    "ReadoutInvertImage": (
        "Turns a real image into the starting noise that reproduces it (DDIM inversion): its `reference` feeds the "
        "drag, appearance and identity targets so that they edit your image. Use the same model, prompt and step "
        "count as the sampler."),
    "SelfGuidanceTarget": (
        "Training-free: moves, resizes or restyles what a word of the prompt draws, read from the model's "
        "attention; no head needed. Give the same prompt as the sampler's. Example: "
        "`self_guidance_move_object.json`."),
    "ReadoutGuidedKSampler": (
        "A KSampler that applies the connected targets at every step of their window. Its text output reports what "
        "guidance did (the loss at the first and last guided step). Same seed, guidance weight 0: the same image "
        "as KSampler."),
    "ApplyReadoutGuidance": (
        "Patches a MODEL with the targets, for any sampler node (SamplerCustomAdvanced, other packs' samplers). "
        "The patch is removed when sampling ends, also after an error or a cancel."),
    "ReadoutScore": (
        "Measures how far a readout is from the targets that guided it: connect the readout of the unguided and of "
        "the guided image (same seed) to two Readout Score nodes to see what guidance did."),
    "DrawDragPoints": (
        "Draws a drag target's points over an image: where content moves from (red) and to (green). Put it after "
        "the guided image's VAE Decode to check the drag."),
    "WordAttentionMap": (
        "Shows where a prompt word's attention lies in a latent and how far it is from a Self-Guidance goal; "
        "connect `unguided_samples` to compare."),
    "ReadoutSpatialDataset": (
        "First step of training a pose, depth or edge head: feed images and their maps (from any preprocessor "
        "node). Queue again with other images to grow the dataset. Example: `train_edge_head.json`."),
    "ReadoutCorrespondenceDataset": (
        "First step of training a drag (correspondence) head: each image and a random warp of it make a pair with "
        "exact point matches."),
    "ReadoutTripletDataset": (
        "First step of training an appearance or identity head: an anchor, a positive that looks like it and a "
        "negative that does not."),
    "LoadReadoutDataset": "Loads a dataset made earlier by the dataset nodes, to train on it again.",
    "TrainReadoutHead": (
        "Trains a head on a dataset with your checkpoint frozen, showing a loss plot; the head appears in Load "
        "Readout Head. Cancel keeps its state: queue again to resume. Example: `train_edge_head.json`."),
}


def cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def input_rows(schema) -> list[str]:
    rows = []
    for item in schema.inputs:
        options = item.as_dict()
        default = options.get("default")
        shown = "" if default is None or isinstance(default, (list, dict)) else f"`{default}`"
        needed = "optional" if item.optional else "required"
        rows.append(f"| `{item.id}` | {item.get_io_type()} | {needed} | {shown} | {cell(item.tooltip)} |")
    return rows


def output_rows(schema) -> list[str]:
    return [f"| `{item.display_name or item.get_io_type()}` | {item.get_io_type()} | {cell(item.tooltip)} |"
            for item in schema.outputs]


def help_page(node) -> str:
    """The help page of one node: its description, where it goes, its inputs and outputs."""
    schema = node.GET_SCHEMA()
    lines = [f"# {schema.display_name}", "", schema.description or "", "", USAGE[schema.node_id], "",
             "## Inputs", "", "| input | type | | default | what it does |", "|---|---|---|---|---|",
             *input_rows(schema), ""]
    if schema.outputs:
        lines += ["## Outputs", "", "| output | type | what it is |", "|---|---|---|", *output_rows(schema), ""]
    lines += ["More: the pack's README and docs/usage.md (Readout Guidance for ComfyUI).", ""]
    return "\n".join(lines)


def pack_nodes(classes: dict) -> list:
    """The pack's node classes, in the order it registers them."""
    import sys

    return sys.modules[classes["LoadReadoutHead"].__module__.rsplit(".", 1)[0]].NODES


def main() -> None:
    classes = import_comfyui_in_process(comfyui_path()).NODE_CLASS_MAPPINGS
    os.makedirs(HELP_FOLDER, exist_ok=True)
    for node in pack_nodes(classes):
        path = os.path.join(HELP_FOLDER, f"{node.GET_SCHEMA().node_id}.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(help_page(node))
        print(path)


if __name__ == "__main__":
    main()
