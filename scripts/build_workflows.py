"""Write the example workflows in example_workflows/ in the editor's UI format, from the registered node definitions.

Run with the test bed's Python: `.venv/bin/python -m scripts.build_workflows` (needs the pack loaded in ComfyUI).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from testbed.demo_roles import GUIDED_SCORE, GUIDED_VIEW, LOSS_PLOT, REFERENCE_VIEW, TARGET_MAP, UNGUIDED_SCORE, UNGUIDED_VIEW
from testbed import REPO, comfyui_path, import_comfyui_in_process
from testbed.workflow_api import WIDGET_TYPES
from readout.backbones.registry import FAMILIES
from readout.heads.official import official_head_url

SEED_NAMES = {"seed", "noise_seed"}
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
NEGATIVE = "blurry, low quality, deformed, watermark"
SIZES = {"Note": [420, 220], "ReadoutDragTarget": [520, 780], "LoadImage": [320, 360], "PreviewImage": [260, 300],
         "ExtractReadout": [320, 230], "ReadoutScore": [320, 150], "WordAttentionMap": [320, 250],
         "ReadoutGuidedKSampler": [320, 400]}
TITLE_BAR, GROUP_TITLE, PAD = 30, 34, 10


def size_of(type_: str) -> list[int]:
    return SIZES.get(type_, [320, 120])


def node_inputs(cls) -> list[tuple[str, tuple]]:
    """(name, (type, options)) of each input in the editor's order: a V3 node's from its schema, a classic node's from
    INPUT_TYPES."""
    if hasattr(cls, "GET_SCHEMA"):
        return [(i.id, (i.get_io_type(), i.as_dict())) for i in cls.GET_SCHEMA().inputs]
    spec = cls.INPUT_TYPES()
    return [(name, value) for section in ("required", "optional") for name, value in spec.get(section, {}).items()]


def node_outputs(cls) -> list[tuple[str, str]]:
    """(name, type) of each output, named as the editor names its slots."""
    if hasattr(cls, "GET_SCHEMA"):
        return [(o.display_name or o.get_io_type(), o.get_io_type()) for o in cls.GET_SCHEMA().outputs]
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return list(zip(names, cls.RETURN_TYPES))


def node_properties(node: Node) -> dict:
    """The editor's node properties; an official head's loader also names its file, folder and download address,
    which the editor's missing-models dialog offers to a user who lacks it."""
    properties = {"Node name for S&R": node.type}
    url = official_head_url(node.widgets.get("head_name", "")) if node.type == "LoadReadoutHead" else None
    if url:
        properties["models"] = [{"name": node.widgets["head_name"], "url": url, "directory": "readout_heads"}]
    return properties


IMAGE_SAVERS = {"SaveImage", "PreviewImage"}
"""Their unlinked outputs are left out of the file: 0.33's Save and Preview Image return an IMAGE that 0.3.75's do not,
and the editor adds a node's outputs when it loads one."""


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict
    inputs: dict = field(default_factory=dict)
    title: str | None = None


class Workflow:
    """A graph described by node types, widget values by name and links by output name."""

    def __init__(self, node_classes: dict) -> None:
        self.classes = node_classes
        self.nodes: list[Node] = []
        self.groups: list[dict] = []

    def add(self, type_: str, pos: tuple[int, int], widgets: dict | None = None, title: str | None = None,
            **inputs) -> Node:
        node = Node(len(self.nodes) + 1, type_, pos, widgets or {}, inputs, title)
        self.nodes.append(node)
        return node

    def group(self, title: str, nodes: list[Node], color: str = "#3f789e") -> None:
        """A titled frame around nodes (their positions and sizes, plus the title bars)."""
        boxes = [(n.pos[0], n.pos[1] - TITLE_BAR, *size_of(n.type)) for n in nodes]
        left, top = min(b[0] for b in boxes) - PAD, min(b[1] for b in boxes) - PAD - GROUP_TITLE
        right, bottom = max(b[0] + b[2] for b in boxes) + PAD, max(b[1] + TITLE_BAR + b[3] for b in boxes) + PAD
        self.groups.append({"title": title, "bounding": [left, top, right - left, bottom - top], "color": color,
                            "font_size": 24, "flags": {}})

    def note(self, pos: tuple[int, int], text: str) -> Node:
        return self.add("Note", pos, {"text": text})

    def _outputs(self, type_: str) -> list[tuple[str, str]]:
        return node_outputs(self.classes[type_])

    def _spec(self, type_: str) -> list[tuple[str, tuple]]:
        return node_inputs(self.classes[type_])

    @staticmethod
    def _is_widget(value: tuple) -> bool:
        kind = value[0]
        options = value[1] if len(value) > 1 else {}
        return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")

    def _widget_values(self, node: Node) -> list:
        if node.type == "Note":
            return [node.widgets["text"]]
        values = []
        for name, value in self._spec(node.type):
            if not self._is_widget(value):
                continue
            options = value[1] if len(value) > 1 else {}
            choices = value[0] if isinstance(value[0], list) else options.get("options")
            default = options.get("default", choices[0] if choices else None)
            values.append(node.widgets.get(name, default))
            if value[0] == "INT" and (name in SEED_NAMES or options.get("control_after_generate")):
                values.append("fixed")
        unknown = set(node.widgets) - {name for name, _ in self._spec(node.type)}
        if unknown:
            raise ValueError(f"{node.type}: no widget named {sorted(unknown)}")
        return values

    def to_ui(self) -> dict:
        """The editor's workflow JSON: nodes with positional widget values, and links."""
        links, out_links, ui_nodes = [], {}, []
        for node in self.nodes:
            for input_name, (source, output) in node.inputs.items():
                names = [name for name, _ in self._outputs(source.type)]
                slot = names.index(output)
                kind = self._outputs(source.type)[slot][1]
                link_id = len(links) + 1
                target_slot = [n for n, v in self._spec(node.type) if n in node.inputs].index(input_name)
                links.append([link_id, source.id, slot, node.id, target_slot, kind])
                out_links.setdefault((source.id, slot), []).append(link_id)
        by_target = {(link[3], link[4]): link for link in links}
        for order, node in enumerate(self.nodes):
            entry = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": size_of(node.type),
                     "flags": {}, "order": order, "mode": 0, "properties": node_properties(node),
                     "widgets_values": self._widget_values(node)}
            if node.type == "Note":
                entry.update(inputs=[], outputs=[], color="#432", bgcolor="#653")
            else:
                linked = [(n, v) for n, v in self._spec(node.type) if n in node.inputs]
                entry["inputs"] = [{"name": n, "type": v[0], "link": by_target[(node.id, i)][0]}
                                   for i, (n, v) in enumerate(linked)]
                outputs = [{"name": name, "type": kind, "links": out_links.get((node.id, slot), []),
                            "slot_index": slot} for slot, (name, kind) in enumerate(self._outputs(node.type))]
                unused = node.type in IMAGE_SAVERS and not any(o["links"] for o in outputs)
                entry["outputs"] = [] if unused else outputs
            if node.title:
                entry["title"] = node.title
            ui_nodes.append(entry)
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
                "groups": self.groups, "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


@dataclass
class Loaders:
    """Where a graph's MODEL, CLIP and VAE come from: one checkpoint loader, or a DiT's three loaders."""

    model: tuple
    clip: tuple
    vae: tuple

    @classmethod
    def checkpoint(cls, node: Node) -> Loaders:
        return cls((node, "MODEL"), (node, "CLIP"), (node, "VAE"))


def base_graph(wf: Workflow, ckpt: str, prompt: str, size: int = 512):
    """Checkpoint, prompts and an empty latent: what every example starts from."""
    loader = Loaders.checkpoint(wf.add("CheckpointLoaderSimple", (0, 0), {"ckpt_name": ckpt}))
    positive = wf.add("CLIPTextEncode", (360, 0), {"text": prompt}, clip=loader.clip)
    negative = wf.add("CLIPTextEncode", (360, 200), {"text": NEGATIVE}, clip=loader.clip)
    latent = wf.add("EmptyLatentImage", (360, 400), {"width": size, "height": size, "batch_size": 1})
    return loader, positive, negative, latent


SAMPLER = {"seed": 42, "steps": 30, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "ddim_uniform"}
CHECK_Y = 1420  # the "what guidance did" group sits under the graph
ROW = 330


def finish(wf: Workflow, loader, sampler, prefix: str, reference: bool = False) -> None:
    """Decode and save the result, show the loss plot (and save the reference branch)."""
    decoded = wf.add("VAEDecode", (1700, 0), samples=(sampler, "LATENT"), vae=loader.vae)
    wf.add("SaveImage", (1950, 0), {"filename_prefix": prefix}, images=(decoded, "IMAGE"))
    wf.add("PreviewImage", (1700, 420), title=LOSS_PLOT, images=(sampler, "loss_plot"))
    if reference:
        ref = wf.add("VAEDecode", (1700, 250), samples=(sampler, "reference"), vae=loader.vae)
        wf.add("SaveImage", (1950, 420), {"filename_prefix": f"{prefix}_reference"}, images=(ref, "IMAGE"))


def guided_sampler(wf: Workflow, loader, positive, negative, latent, guidance, **widgets):
    """KSampler (Readout Guidance); positive / negative are (node, output) pairs."""
    return wf.add("ReadoutGuidedKSampler", (1350, 0), {**SAMPLER, **widgets}, model=loader.model, positive=positive,
                  negative=negative, latent_image=(latent, "LATENT"), guidance=(guidance, "guidance"))


def unguided_twin(wf: Workflow, loader, positive, negative, latent, **widgets) -> Node:
    """The same sampling without guidance (same seed and settings): what guidance is compared with."""
    return wf.add("KSampler", (0, CHECK_Y), {**SAMPLER, **widgets}, title="Same seed, no guidance",
                  model=loader.model, positive=positive, negative=negative, latent_image=(latent, "LATENT"))


def readout_rows(wf: Workflow, loader, head, guidance, rows: list[tuple], reference_row: bool = False,
                 draw_points: bool = False) -> list[Node]:
    """ExtractReadout of each row's image with the head, shown and scored against the guidance.

    rows: ((node, "IMAGE" or a LATENT output), view title, score title or None): a sampler's latent is read as it
    is (no VAE round trip); with reference_row the first row is the reference, whose readout colours the others and
    is what relative targets compare with."""
    added, reference = [], None
    for index, (source, view_title, score_title) in enumerate(rows):
        y = CHECK_Y + ROW * index
        colors = {} if reference is None else {"colors_from": (reference, "readout")}
        read_input = {"image": source} if source[1] == "IMAGE" else {"latent": source}
        read = wf.add("ExtractReadout", (720, y), {"timestep": -1, "seed": 0}, model=loader.model,
                      vae=loader.vae, head=(head, "head"), clip=loader.clip, **read_input, **colors)
        shown = read, "readout_image"
        added.append(read)
        if draw_points:
            shown = wf.add("DrawDragPoints", (1080, y), image=shown, guidance=(guidance, "guidance")), "IMAGE"
            added.append(shown[0])
        added.append(wf.add("PreviewImage", (1440, y), title=view_title, images=shown))
        if reference_row and index == 0:
            reference = read
        if score_title:
            compared = {} if reference is None else {"reference": (reference, "readout")}
            added.append(wf.add("ReadoutScore", (1740, y), title=score_title, readout=(read, "readout"),
                                guidance=(guidance, "guidance"), **compared))
    return added


def check_group(wf: Workflow, nodes: list[Node], what: str) -> None:
    """Frame the comparison nodes, with a note saying how to read them."""
    note = wf.note((2100, CHECK_Y), f"What guidance did: {what}\nThe Score nodes show their numbers after a run; "
                   "delete this group if you only want the guided image.")
    wf.group("What guidance did (same seed, with and without guidance)", [*nodes, note], color="#3f5e3f")


def main_group(wf: Workflow) -> None:
    wf.group("Readout guidance", [n for n in wf.nodes if n.pos[1] < CHECK_Y])


def spatial(classes, kind: str, ckpt: str = SD15, family: str = "sdv15", controlnet: bool = False,
            size: int = 512) -> dict:
    wf = Workflow(classes)
    prompt = {"pose": "a dancer on a beach, golden hour, photo", "depth": "a cozy living room, photo",
              "edge": "a castle on a hill, detailed illustration"}[kind]
    loader, positive, negative, latent = base_graph(wf, ckpt, prompt, size)
    head = wf.add("LoadReadoutHead", (0, 250), {"head_name": f"readout_{family}_spatial_{kind}.pt"})
    image = wf.add("LoadImage", (0, 420), {"image": f"readout_example_{kind}.png"}, title=TARGET_MAP)
    target = wf.add("ReadoutTarget", (780, 250), {"weight": 0.43, "start_percent": 0.0, "end_percent": 0.5},
                    head=(head, "head"), target_image=(image, "IMAGE"))
    conditioning = (positive, "CONDITIONING"), (negative, "CONDITIONING")
    if controlnet:
        net = wf.add("ControlNetLoader", (360, 600), {"control_net_name": "control_v11p_sd15_openpose.pth"})
        applied = wf.add("ControlNetApplyAdvanced", (780, 0), {"strength": 0.8, "start_percent": 0.0, "end_percent": 1.0},
                         positive=conditioning[0], negative=conditioning[1],
                         control_net=(net, "CONTROL_NET"), image=(image, "IMAGE"), vae=loader.vae)
        conditioning = (applied, "positive"), (applied, "negative")
    sampler = guided_sampler(wf, loader, *conditioning, latent, target)
    finish(wf, loader, sampler, f"readout_{kind}")
    net_text = ("\nControlNet: put your OpenPose ControlNet name in ControlNetLoader; readout guidance refines "
                "what the ControlNet starts.") if controlnet else ""
    wf.note((0, 650), f"Spatial control with a {kind} readout head ({'SDXL' if family == 'sdxl' else 'SD1.5'}).\n"
            f"Change: the checkpoint, the prompt, the target {kind} map in LoadImage (drawn like a ControlNet "
            f"control image), and the head file (readout_{family}_spatial_{kind}.pt in models/readout_heads).\n"
            "weight 0.43 matches the official strength; raise it for tighter control (too high looks cartoonish). "
            f"The loss plot shows the readout loss falling.{net_text}")
    main_group(wf)
    unguided = unguided_twin(wf, loader, *conditioning, latent)
    rows = [((unguided, "LATENT"), UNGUIDED_VIEW, UNGUIDED_SCORE), ((sampler, "LATENT"), GUIDED_VIEW, GUIDED_SCORE)]
    check_group(wf, [unguided, *readout_rows(wf, loader, head, target, rows)],
                f"the {kind} head's readout of the image without and with guidance, and its loss against the "
                "target map (lower is better).")
    return wf.to_ui()


DIT_MODELS = {
    "flux": {"label": "Flux.1 dev", "backbone": "flux", "unet": "flux1-dev.safetensors", "vae": "ae.safetensors",
             "clip": ("DualCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl_fp16.safetensors",
                                         "type": "flux"}),
             "sampler": {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}},
    "sd3": {"label": "SD3.5 Large", "backbone": "sd3", "unet": "sd3.5_large.safetensors",
            "vae": "sd3.5_vae.safetensors",
            "clip": ("TripleCLIPLoader", {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
                                          "clip_name3": "t5xxl_fp16.safetensors"}),
            "sampler": {"seed": 42, "steps": 28, "cfg": 4.5, "sampler_name": "euler", "scheduler": "sgm_uniform"}},
    "zimage": {"label": "Z-Image Turbo", "backbone": "lumina2", "unet": "z_image_turbo_bf16.safetensors",
               "vae": "ae.safetensors",
               "clip": ("CLIPLoader", {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}),
               "sampler": {"seed": 42, "steps": 8, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}},
    "flux2": {"label": "Flux.2 dev", "backbone": "flux2", "unet": "flux2_dev_fp8mixed.safetensors",
              "vae": "flux2-vae.safetensors",
              "clip": ("CLIPLoader", {"clip_name": "mistral_3_small_flux2_fp8.safetensors", "type": "flux2"}),
              "latent": "EmptyFlux2LatentImage", "guidance": 4.0,
              "sampler": {"seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}},
    "qwen_image": {"label": "Qwen-Image", "backbone": "qwen_image", "unet": "qwen_image_fp8_e4m3fn.safetensors",
                   "vae": "qwen_image_vae.safetensors",
                   "clip": ("CLIPLoader", {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "type": "qwen_image"}),
                   "sampler": {"seed": 42, "steps": 20, "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple"}},
}
"""The DiT examples: loaded as their model cards and ComfyUI's templates say (diffusion model, text encoders, VAE:
three loaders), sampled at their own steps and CFG (the distilled ones at CFG 1)."""


FEW_STEPS_NOTES = {
    1: "\nAt 8 steps or fewer the sampler's recurrence (0, auto) guides each guided step once in this family: on the "
       "learned Z-Image a second pass lowered the effect (depth IoU gain +0.35 -> +0.28 at 8 steps).",
    2: "\nAt 8 steps or fewer the sampler's recurrence (0, auto) guides each guided step twice: on the learned test "
       "model that raised the effect by half at 8 steps and doubled it at 4.",
}
"""The few-step note of an example, by its family's passes per guided step under auto (Backbone.few_step_passes)."""


def dit_base_graph(wf: Workflow, family: str, prompt: str, size: int = 1024):
    """Load Diffusion Model, the family's CLIP loader and Load VAE, prompts (FluxGuidance on Flux), an empty latent."""
    spec = DIT_MODELS[family]
    unet = wf.add("UNETLoader", (0, 0), {"unet_name": spec["unet"], "weight_dtype": "default"})
    clip_type, clip_widgets = spec["clip"]
    clip = wf.add(clip_type, (0, 130), clip_widgets)
    vae = wf.add("VAELoader", (0, 330), {"vae_name": spec["vae"]})
    loader = Loaders((unet, "MODEL"), (clip, "CLIP"), (vae, "VAE"))
    positive = wf.add("CLIPTextEncode", (360, 0), {"text": prompt}, clip=loader.clip)
    cfg_one = spec["sampler"]["cfg"] == 1.0
    negative = wf.add("CLIPTextEncode", (360, 200), {"text": "" if cfg_one else NEGATIVE}, clip=loader.clip)
    conditioning = (positive, "CONDITIONING")
    if family in ("flux", "flux2"):
        conditioning = (wf.add("FluxGuidance", (360, 400), {"guidance": spec.get("guidance", 3.5)},
                               conditioning=conditioning), "CONDITIONING")
    latent = wf.add(spec.get("latent", "EmptySD3LatentImage"), (360, 560),
                    {"width": size, "height": size, "batch_size": 1})
    return loader, conditioning, (negative, "CONDITIONING"), latent


def dit_spatial(classes, family: str, kind: str = "depth") -> dict:
    """Spatial control of a DiT with a head the user trained on it (Train Readout Head)."""
    wf = Workflow(classes)
    spec = DIT_MODELS[family]
    loader, positive, negative, latent = dit_base_graph(wf, family, "a cozy living room, photo")
    head_file = f"my_{family}_{kind}.safetensors"
    head = wf.add("LoadReadoutHead", (0, 460), {"head_name": head_file})
    image = wf.add("LoadImage", (0, 630), {"image": f"readout_example_{kind}.png"}, title=TARGET_MAP)
    target = wf.add("ReadoutTarget", (780, 250), {"weight": 0.43, "start_percent": 0.0, "end_percent": 0.5},
                    head=(head, "head"), target_image=(image, "IMAGE"))
    sampler = guided_sampler(wf, loader, positive, negative, latent, target, **spec["sampler"])
    finish(wf, loader, sampler, f"readout_{family}_{kind}")
    wf.note((0, 900), f"Spatial control of {spec['label']} with a {kind} readout head.\n"
            f"No official heads exist for {spec['label']}: train one on your model with Train Readout Head "
            f"(example_workflows/train_edge_head.json, with these three loaders) and pick it in Load Readout Head "
            f"({head_file} here).\nweight 0.43 is the official strength in every family (the pack rescales it to "
            "the flow-matching parameterization). The loss plot shows the readout loss falling."
            + FEW_STEPS_NOTES[FAMILIES[spec["backbone"]].few_step_passes] * (spec["sampler"]["steps"] <= 8))
    main_group(wf)
    unguided = wf.add("KSampler", (0, CHECK_Y), spec["sampler"], title="Same seed, no guidance",
                      model=loader.model, positive=positive, negative=negative, latent_image=(latent, "LATENT"))
    rows = [((unguided, "LATENT"), UNGUIDED_VIEW, UNGUIDED_SCORE), ((sampler, "LATENT"), GUIDED_VIEW, GUIDED_SCORE)]
    check_group(wf, [unguided, *readout_rows(wf, loader, head, target, rows)],
                f"the {kind} head's readout of the image without and with guidance, and its loss against the "
                "target map (lower is better).")
    return wf.to_ui()


def drag_target(wf: Workflow, corr: Node, app: Node, pair: tuple[list[int], list[int]], reference_image) -> Node:
    """Readout Drag Target at the default weights and window: one point pair, the correspondence and appearance
    heads, and the image the point refers to (a (node, output) pair)."""
    return wf.add("ReadoutDragTarget", (780, 150), {
        "points": json.dumps([{"source": pair[0], "target": pair[1]}]), "drag_weight": 0.43,
        "start_percent": 0.0, "end_percent": 0.5, "appearance_weight": 0.2},
        correspondence_head=(corr, "head"), appearance_head=(app, "head"), reference_image=reference_image)


def drag_generated(classes) -> dict:
    wf = Workflow(classes)
    loader, positive, negative, latent = base_graph(wf, SD15, "a photo of a bear dancing in a forest")
    plain = wf.add("KSampler", (780, 960), SAMPLER, title="Reference (same seed, no guidance)",
                   model=loader.model, positive=(positive, "CONDITIONING"), negative=(negative, "CONDITIONING"),
                   latent_image=(latent, "LATENT"))
    reference = wf.add("VAEDecode", (1350, 960), samples=(plain, "LATENT"), vae=loader.vae)
    corr = wf.add("LoadReadoutHead", (0, 250), {"head_name": "readout_sdv15_drag_correspondence.pt"})
    app = wf.add("LoadReadoutHead", (0, 420), {"head_name": "readout_sdv15_drag_appearance.pt"})
    drag = drag_target(wf, corr, app, ([190, 260], [330, 200]), (reference, "IMAGE"))
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, drag)
    finish(wf, loader, sampler, "readout_drag", reference=True)
    wf.note((0, 650), "Drag a generated image. The plain KSampler shows the reference (same seed as the guided "
            "sampler); run once, then click points in the Readout Drag Target canvas: a source, then where it should "
            "go (drag to move, right-click to delete).\nChange: checkpoint, prompt, seed (keep both samplers on the "
            "same seed and steps), the points, drag_weight / appearance_weight.")
    main_group(wf)
    drag_check(wf, loader, corr, drag, sampler)
    return wf.to_ui()


QWEN_IMAGE_EDIT_UNET = "qwen_image_edit_2509_fp8_e4m3fn.safetensors"


def qwen_image_edit_drag(classes) -> dict:
    """Drag on Qwen-Image-Edit: the photo is the edit's reference image, which its prompt keeps; the points move what
    they hold (heads the user trained on the model)."""
    wf = Workflow(classes)
    spec = DIT_MODELS["qwen_image"]
    unet = wf.add("UNETLoader", (0, 0), {"unet_name": QWEN_IMAGE_EDIT_UNET, "weight_dtype": "default"})
    clip = wf.add("CLIPLoader", (0, 130), spec["clip"][1])
    vae = wf.add("VAELoader", (0, 330), {"vae_name": spec["vae"]})
    loader = Loaders((unet, "MODEL"), (clip, "CLIP"), (vae, "VAE"))
    image = wf.add("LoadImage", (0, 460), {"image": "readout_example_photo.png"})
    scaled = wf.add("ImageScale", (0, 820), {"upscale_method": "lanczos", "width": 1024, "height": 1024,
                                             "crop": "center"}, image=(image, "IMAGE"))
    reference = {"clip": loader.clip, "vae": loader.vae, "image1": (scaled, "IMAGE")}
    positive = wf.add("TextEncodeQwenImageEditPlus", (360, 0), {"prompt": "keep the photo as it is"}, **reference)
    negative = wf.add("TextEncodeQwenImageEditPlus", (360, 250), {"prompt": ""}, **reference)
    latent = wf.add("VAEEncode", (360, 500), pixels=(scaled, "IMAGE"), vae=loader.vae)
    corr = wf.add("LoadReadoutHead", (360, 650), {"head_name": "my_qwen_image_edit_drag_correspondence.safetensors"})
    app = wf.add("LoadReadoutHead", (360, 800), {"head_name": "my_qwen_image_edit_drag_appearance.safetensors"})
    drag = drag_target(wf, corr, app, ([400, 440], [680, 440]), (scaled, "IMAGE"))
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, drag,
                             **spec["sampler"])
    finish(wf, loader, sampler, "readout_qwen_image_edit_drag", reference=True)
    wf.note((0, 1000), "Drag a photo with Qwen-Image-Edit: the photo is the edit's reference image and the prompt "
            "keeps it, so the sampler's reference output (the same seed without the drag) is the photo redrawn; "
            "the points move what they hold. Click points in the Readout Drag Target canvas: a source, then where it "
            "should go.\nThe edit model keeps redrawing the photo after the guided steps: on the learned test model the "
            "object moved about half way (0.54 of the drag); guiding every step (end_percent 1) moved it the whole "
            "way but scattered stray colour over the picture.\nNo official heads exist for Qwen-Image: train a correspondence and an appearance head on "
            "your model with Train Readout Head and pick them in the two Load Readout Head nodes.\nWith a Lightning "
            "LoRA (Load LoRA after the model loader): 8 or 4 steps at CFG 1, as measured on the learned test model.")
    main_group(wf)
    drag_check(wf, loader, corr, drag, sampler)
    return wf.to_ui()


def drag_check(wf: Workflow, loader, corr, drag, sampler, twin: list[Node] = ()) -> None:
    """Readouts of the reference and of the edit, points drawn; with twin (a photo: its drag at weight 0 and that
    sampler) the reconstruction without the drag is the before, as the photo is not reproduced exactly."""
    rows = [((sampler, "reference"), REFERENCE_VIEW, None if twin else UNGUIDED_SCORE),
            *([((twin[-1], "LATENT"), UNGUIDED_VIEW, UNGUIDED_SCORE)] if twin else []),
            ((sampler, "LATENT"), GUIDED_VIEW, GUIDED_SCORE)]
    check_group(wf, [*twin, *readout_rows(wf, loader, corr, drag, rows, reference_row=True, draw_points=True)],
                "the correspondence head's readout (colours: its principal components) of the reference (the "
                "sampler's reference output: the same seed, or the photo reconstructed from its inversion, without "
                "guidance) and of the edit, points drawn (red source, green target); the scores are the similarity of the reference's "
                "feature at the source with the image's feature at the target (higher is better).")


def real_image_branch(wf: Workflow, loader, positive, image_name: str, pos=(0, 420)):
    image = wf.add("LoadImage", pos, {"image": image_name})
    scaled = wf.add("ImageScale", (360, 600), {"upscale_method": "bilinear", "width": 512, "height": 512,
                                               "crop": "center"}, image=(image, "IMAGE"))
    inverted = wf.add("ReadoutInvertImage", (780, 960), {"steps": 30, "scheduler": "ddim_uniform", "refinements": 5},
                      model=loader.model, vae=loader.vae, image=(scaled, "IMAGE"),
                      positive=(positive, "CONDITIONING"))
    return scaled, inverted


def drag_real_image(classes) -> dict:
    wf = Workflow(classes)
    loader, positive, negative, latent = base_graph(wf, SD15, "a photo of a cat sitting on a sofa")
    scaled, inverted = real_image_branch(wf, loader, positive, "readout_example_photo.png")
    corr = wf.add("LoadReadoutHead", (0, 250), {"head_name": "readout_sdv15_drag_correspondence.pt"})
    app = wf.add("LoadReadoutHead", (0, 800), {"head_name": "readout_sdv15_drag_appearance.pt"})
    drag = wf.add("ReadoutDragTarget", (780, 150), {
        "points": json.dumps([{"source": [200, 220], "target": [340, 220]}]), "drag_weight": 0.43,
        "start_percent": 0.0, "end_percent": 0.5, "appearance_weight": 0.2},
        correspondence_head=(corr, "head"), appearance_head=(app, "head"), reference=(inverted, "reference"),
        reference_image=(scaled, "IMAGE"))
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, drag, cfg=3.5)
    finish(wf, loader, sampler, "readout_drag_real", reference=True)
    no_drag = wf.add("ReadoutDragTarget", (0, CHECK_Y), {**drag.widgets, "drag_weight": 0.0, "appearance_weight": 0.0},
                     title="Same drag at weight 0", correspondence_head=(corr, "head"), reference=(inverted, "reference"),
                     reference_image=(scaled, "IMAGE"))
    twin = wf.add("ReadoutGuidedKSampler", (0, CHECK_Y + 820), {**SAMPLER, "cfg": 3.5},
                  title="Same seed, no drag (reconstruction)", model=loader.model,
                  positive=(positive, "CONDITIONING"), negative=(negative, "CONDITIONING"),
                  latent_image=(latent, "LATENT"), guidance=(no_drag, "guidance"))
    wf.note((0, 1000), "Drag a real photo: it is inverted (DDIM) along the sampler's schedule, so with no points "
            "the sampler reconstructs it. Keep ReadoutInvertImage's steps/scheduler equal to the sampler's (ddim).\n"
            "Change: the image in LoadImage, a prompt that describes it, the points (click source then target in "
            "the canvas), cfg (3.5 as in the paper; 1.0 reconstructs most faithfully).")
    main_group(wf)
    drag_check(wf, loader, corr, drag, sampler, [no_drag, twin])
    return wf.to_ui()


def appearance_check(wf: Workflow, loader, positive, negative, latent, head, target, reference, sampler,
                     role: str) -> None:
    unguided = unguided_twin(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, seed=7)
    rows = [((reference, "IMAGE"), REFERENCE_VIEW, None), ((unguided, "LATENT"), UNGUIDED_VIEW, UNGUIDED_SCORE),
            ((sampler, "LATENT"), GUIDED_VIEW, GUIDED_SCORE)]
    check_group(wf, [unguided, *readout_rows(wf, loader, head, target, rows, reference_row=True)],
                f"the {role} head's readout (colours: the reference's principal components) of the reference, of "
                f"the same seed without guidance and of the guided image; the scores are the {role} distance to the "
                "reference's readout (lower is better).")


def appearance_variation(classes) -> dict:
    wf = Workflow(classes)
    loader, positive, negative, latent = base_graph(wf, SD15, "a photo of a toy robot on a table")
    scaled, inverted = real_image_branch(wf, loader, positive, "readout_example_photo.png")
    app = wf.add("LoadReadoutHead", (0, 250), {"head_name": "readout_sdv15_drag_appearance.pt"})
    target = wf.add("ReadoutAppearanceTarget", (780, 150), {"weight": 0.43, "start_percent": 0.0, "end_percent": 0.5},
                    appearance_head=(app, "head"), reference=(inverted, "reference"))
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, target, seed=7)
    finish(wf, loader, sampler, "readout_appearance", reference=True)
    wf.note((0, 1000), "Appearance variations of a reference image: a new sample (its own seed) whose appearance "
            "follows the reference. Low weights keep colours and textures, high weights the same object.\n"
            "Change: the reference image, the prompt, the seed, the weight (try 0.2, 0.43, 1.0).")
    main_group(wf)
    appearance_check(wf, loader, positive, negative, latent, app, target, scaled, sampler, "appearance")
    return wf.to_ui()


def identity(classes) -> dict:
    wf = Workflow(classes)
    loader, positive, negative, latent = base_graph(wf, SD15, "a portrait photo of a person as an astronaut")
    scaled, inverted = real_image_branch(wf, loader, positive, "readout_example_portrait.png")
    mask = wf.add("LoadImageMask", (0, 800), {"image": "readout_example_face_mask.png", "channel": "red"})
    face = wf.add("LoadReadoutHead", (0, 250), {"head_name": "readout_sdv15_drag_appearance.pt"})
    target = wf.add("ReadoutIdentityTarget", (780, 150), {"weight": 0.43, "start_percent": 0.0, "end_percent": 0.5,
                                                          "appearance_weight": 0.0},
                    identity_head=(face, "head"), face_mask=(mask, "MASK"), reference=(inverted, "reference"))
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, target, seed=7)
    finish(wf, loader, sampler, "readout_identity", reference=True)
    wf.note((0, 1000), "Identity-consistent generation: a reference portrait, a new prompt. No identity head was "
            "released, so this uses the released appearance head on the face region (the mask's bounding box); "
            "an identity head trained with our trainer gives a closer likeness.\nChange: the portrait, its face "
            "mask (white = face), the new prompt, the weight.")
    main_group(wf)
    appearance_check(wf, loader, positive, negative, latent, face, target, scaled, sampler, "identity")
    return wf.to_ui()


def self_guidance_move_object(classes) -> dict:
    wf = Workflow(classes)
    prompt = "a photo of a cat sitting on a sofa in a living room"
    loader, positive, negative, latent = base_graph(wf, SD15, prompt)
    move = wf.add("SelfGuidanceTarget", (780, 150), {
        "prompt": prompt, "words": "cat", "edit": "move_by", "dx": 0.25, "dy": 0.0, "x": 0.5, "y": 0.5,
        "size_factor": 1.5, "weight": 1.0, "start_percent": 0.0, "end_percent": 0.5}, clip=loader.clip)
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, move)
    finish(wf, loader, sampler, "self_guidance_move", reference=True)
    wf.note((0, 650), "Self-Guidance: move the cat a quarter of the width to the right, read from its "
            "cross-attention (no head file needed). The reference output is the same seed unguided.\n"
            "Change: the checkpoint, the prompt (keep the Self-Guidance Target's prompt identical to the positive "
            "prompt), words, edit (move_by dx/dy, move_to x/y, scale_size size_factor, keep_shape), weight (raise it "
            "if the object does not move). Chain a ReadoutTarget into its guidance input to combine with a learned "
            "head; it works with ControlNet conditioning too.")
    main_group(wf)
    added = []
    rows = (("reference", UNGUIDED_VIEW, UNGUIDED_SCORE), ("LATENT", GUIDED_VIEW, GUIDED_SCORE))
    for index, (output, title, score_title) in enumerate(rows):
        y = CHECK_Y + ROW * index
        read = wf.add("WordAttentionMap", (720, y), {"timestep": 500, "seed": 0}, title=score_title,
                      model=loader.model, positive=(positive, "CONDITIONING"), samples=(sampler, output),
                      guidance=(move, "guidance"), unguided_samples=(sampler, "reference"))
        added += [read, wf.add("PreviewImage", (1080, y), title=title, images=(read, "attention_map"))]
    check_group(wf, added, "the word's cross-attention map (yellow = most, blue = least) in the unguided latent (the "
                "sampler's reference output) and in the guided one; white cross: its centroid, green ring: the goal (the "
                "unguided centroid moved by dx, dy). Each node reports the Self-Guidance loss (lower is better).")
    return wf.to_ui()

TRAINING_Y = 800  # train_edge_head.json: the dataset and training row, under the guided graph


def train_edge_head(classes) -> dict:
    """Generate images -> Canny -> dataset -> Train Readout Head -> guide with the new head."""
    wf = Workflow(classes)
    loader, positive, negative, latent = base_graph(wf, SD15, "a castle on a hill, detailed illustration")
    images_latent = wf.add("EmptyLatentImage", (480, TRAINING_Y), {"width": 512, "height": 512, "batch_size": 16},
                           title="Training images: 16 per run")
    samples = wf.add("KSampler", (840, TRAINING_Y), SAMPLER, title="Training images (change the seed to add others)",
                     model=loader.model, positive=(positive, "CONDITIONING"), negative=(negative, "CONDITIONING"),
                     latent_image=(images_latent, "LATENT"))
    decoded = wf.add("VAEDecode", (1200, TRAINING_Y), samples=(samples, "LATENT"), vae=loader.vae)
    edges = wf.add("Canny", (1200, TRAINING_Y + 160), {"low_threshold": 0.4, "high_threshold": 0.8},
                   image=(decoded, "IMAGE"))
    dataset = wf.add("ReadoutSpatialDataset", (1560, TRAINING_Y), {"dataset_name": "my_edge_data", "kind": "edge"},
                     images=(decoded, "IMAGE"), labels=(edges, "IMAGE"))
    trained = wf.add("TrainReadoutHead", (1920, TRAINING_Y), {
        "kind": "edge", "head_name": "my_edge_head", "steps": 2000, "learning_rate": 1e-4, "batch_size": 4,
        "resolution": 512, "seed": 0, "existing": "resume", "validation_fraction": 0.1, "projection_dim": 384},
        model=loader.model, vae=loader.vae, clip=loader.clip, dataset=(dataset, "dataset"))
    loss = wf.add("PreviewImage", (2280, TRAINING_Y), title="Training loss", images=(trained, "loss_plot"))
    image = wf.add("LoadImage", (0, 250), {"image": "readout_example_edge.png"}, title=TARGET_MAP)
    target = wf.add("ReadoutTarget", (780, 250), {"weight": 0.43, "start_percent": 0.0, "end_percent": 0.5},
                    head=(trained, "head"), target_image=(image, "IMAGE"))
    sampler = guided_sampler(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent, target)
    finish(wf, loader, sampler, "readout_trained_edge")
    wf.note((0, TRAINING_Y), "Train an edge head on your own model, then guide with it.\n1. The bottom row makes 16 "
            "images with your checkpoint, labels them with ComfyUI's Canny node and appends them to the dataset "
            "models/readout_datasets/my_edge_data (its node shows the count). Queue a few times with other seeds or "
            "prompts: the paper's heads need about a hundred examples.\n2. Train Readout Head trains on that dataset "
            "(models/readout_heads/my_edge_head.safetensors); Cancel keeps its state and queueing again resumes. "
            "Raise steps and queue again to train on.\n3. The top row guides a new image with the trained head "
            "towards the edge map in LoadImage (draw it as a Canny map). Any preprocessor node (depth, pose, line "
            "art) can label the images instead of Canny: set kind in both Readout nodes.")
    training = [images_latent, samples, decoded, edges, dataset, trained, loss, wf.nodes[-1]]
    wf.group("1-2. Build a dataset from your model's images and train the head", training, color="#5e4f3f")
    wf.group("3. Guide with the trained head", [n for n in wf.nodes if n.pos[1] < TRAINING_Y])
    unguided = unguided_twin(wf, loader, (positive, "CONDITIONING"), (negative, "CONDITIONING"), latent)
    rows = [((unguided, "LATENT"), UNGUIDED_VIEW, UNGUIDED_SCORE), ((sampler, "LATENT"), GUIDED_VIEW, GUIDED_SCORE)]
    check_group(wf, [unguided, *readout_rows(wf, loader, trained, target, rows)],
                "the trained edge head's readout of the image without and with guidance, and its loss against the "
                "target map (lower is better).")
    return wf.to_ui()


WORKFLOWS = {
    "spatial_pose.json": lambda c: spatial(c, "pose"),
    "spatial_depth.json": lambda c: spatial(c, "depth"),
    "spatial_edge.json": lambda c: spatial(c, "edge"),
    "spatial_pose_with_controlnet.json": lambda c: spatial(c, "pose", controlnet=True),
    "sdxl_spatial.json": lambda c: spatial(c, "pose", SDXL, "sdxl", size=1024),
    "drag_generated.json": drag_generated,
    "drag_real_image.json": drag_real_image,
    "appearance_variation.json": appearance_variation,
    "identity.json": identity,
    "self_guidance_move_object.json": self_guidance_move_object,
    "train_edge_head.json": train_edge_head,
    "flux_spatial.json": lambda c: dit_spatial(c, "flux"),
    "sd35_spatial.json": lambda c: dit_spatial(c, "sd3"),
    "z_image_turbo_spatial.json": lambda c: dit_spatial(c, "zimage"),
    "flux2_spatial.json": lambda c: dit_spatial(c, "flux2"),
    "qwen_image_spatial.json": lambda c: dit_spatial(c, "qwen_image"),
    "qwen_image_edit_drag.json": qwen_image_edit_drag,
}


def workflow_text(classes: dict, name: str) -> str:
    """The file text of one example workflow, as committed in example_workflows/."""
    return json.dumps(WORKFLOWS[name](classes), indent=1) + "\n"


def main() -> None:
    classes = import_comfyui_in_process(comfyui_path()).NODE_CLASS_MAPPINGS
    for name in WORKFLOWS:
        path = os.path.join(REPO, "example_workflows", name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(workflow_text(classes, name))
        print(path)


if __name__ == "__main__":
    main()
