"""Fit a prompt to the tiny models: their file names, and a CPU-sized canvas."""
from __future__ import annotations

import json

from tiny.dit import TINY_DIT_CLIP_L, TINY_DIT_VAE, TINY_FLUX, TINY_SD3
from tiny.families import DETECTED_SINCE, QWEN_TEXT_WIDTH, TAEF2, TINY_FLUX2, TINY_LUMINA2, TINY_QWEN_IMAGE
from tiny.models import (TINY_2026_FAMILIES, TINY_CHECKPOINTS, TINY_CONTROLNET, TINY_HEAD_KINDS, TINY_LORA,
                         tiny_head_name)

CHECKPOINT_FAMILIES = {"v1-5-pruned-emaonly.safetensors": "sd15", "sd_xl_base_1.0.safetensors": "sdxl"}
"""The checkpoints our example workflows name, by the family of their tiny stand-in."""
DIFFUSION_MODEL_FAMILIES = {"flux1-dev.safetensors": "flux", "sd3.5_large.safetensors": "sd3",
                            "z_image_turbo_bf16.safetensors": "lumina2", "flux2_dev_fp8mixed.safetensors": "flux2",
                            "qwen_image_fp8_e4m3fn.safetensors": "qwen_image",
                            "qwen_image_edit_2509_fp8_e4m3fn.safetensors": "qwen_image"}
"""The diffusion models (UNETLoader) our DiT example workflows name, by the family of their tiny stand-in."""
TINY_DIFFUSION_MODELS = {"flux": TINY_FLUX, "sd3": TINY_SD3, "lumina2": TINY_LUMINA2, "flux2": TINY_FLUX2,
                         "qwen_image": TINY_QWEN_IMAGE}
TINY_CLIP_TYPES = {"flux": "stable_diffusion", "sd3": "sd3", "lumina2": "stable_diffusion", "flux2": "stable_diffusion"}
"""How the tiny DiTs' one text encoder (CLIP-L) loads in place of the family's text encoders (DualCLIPLoader,
TripleCLIPLoader, or CLIPLoader of Qwen3 or Mistral, which no tiny model stands in for)."""
TEXT_STAND_IN = "ReadoutTestbedTextConditioning"
TEXT_STAND_IN_WIDTHS = {"qwen_image": QWEN_TEXT_WIDTH}
"""Families whose tiny model reads a text width no CLIP gives (Qwen-Image's 3584): each CLIP Text Encode becomes the
test bed's stand-in node (testbed/stand_in_nodes) at that width, and the text encoder's loader goes."""
EDIT_TEXT_ENCODER = "TextEncodeQwenImageEditPlus"
"""Qwen-Image-Edit's text encoder node (its Qwen2.5-VL reads the prompt and the images; the VAE encodes image1-3 as
reference latents)."""
EMPTY_PROMPT_STAND_IN = "empty_prompt_stand_in"
"""The prompt id of the stand-in's empty prompt that an Extract Readout gets in place of its CLIP."""
TINY_VAES = {"flux2": TAEF2}
"""The tiny VAE of a DiT family whose latent is not the 16-channel one (Flux.2's 128 channels: a tiny TAEF2)."""
HEAD_FILE_FAMILIES = {"sdv15": "sd15", "sdxl": "sdxl"}
"""The family an official head file names (readout_{sdv15,sdxl}_...)."""
TINY_BY_INPUT = {"control_net_name": {"sd15": TINY_CONTROLNET}, "lora_name": {"sd15": TINY_LORA}}
HEAD_STAND_INS = {"identity": "appearance"}
WRITERS = {"TrainReadoutHead"}
"""Nodes whose head_name is a file they write (the user's own name), not a head to stand in for."""


class NoStandIn(ValueError):
    """A workflow names a model that no tiny model can stand in for."""


def comfyui_lacks_family(prompt: dict, version: tuple[int, ...]) -> str | None:
    """Why a ComfyUI of this version cannot run the prompt on the tiny models (its detection does not size the tiny
    model of the prompt's family), or None when it can."""
    family = workflow_family(prompt)
    if family in TINY_2026_FAMILIES and version < DETECTED_SINCE:
        needed = ".".join(map(str, DETECTED_SINCE))
        return f"the tiny {family} model needs ComfyUI {needed} or newer, this one is {'.'.join(map(str, version))}"
    return None


def workflow_family(prompt: dict) -> str:
    """The model family of a prompt's checkpoints (every one must have a tiny stand-in, and all one family)."""
    names = {node["inputs"]["ckpt_name"] for node in prompt.values()
             if isinstance(node["inputs"].get("ckpt_name"), str)}
    dits = {node["inputs"]["unet_name"] for node in prompt.values()
            if isinstance(node["inputs"].get("unet_name"), str)}
    if dits:
        unknown = sorted(n for n in dits if n not in DIFFUSION_MODEL_FAMILIES and n not in TINY_DIFFUSION_MODELS.values())
        if unknown or names:
            raise NoStandIn(f"diffusion model {(unknown or sorted(dits))[0]!r} has no tiny stand-in here: name one of "
                            f"{sorted(DIFFUSION_MODEL_FAMILIES)} (and no checkpoint) in the workflow")
        by_tiny = {v: k for k, v in TINY_DIFFUSION_MODELS.items()}
        families = {DIFFUSION_MODEL_FAMILIES.get(n) or by_tiny[n] for n in dits}
        if len(families) > 1:
            raise NoStandIn(f"the workflow mixes model families {sorted(families)}: the tiny stand-ins cannot")
        return families.pop()
    unknown = sorted(n for n in names if n not in CHECKPOINT_FAMILIES and n not in TINY_CHECKPOINTS.values())
    if unknown:
        raise NoStandIn(f"checkpoint {unknown[0]!r} has no tiny stand-in: name one of {sorted(CHECKPOINT_FAMILIES)} "
                        "in the workflow, or add it to testbed/tiny_names.py")
    by_tiny = {v: k for k, v in TINY_CHECKPOINTS.items()}
    families = {CHECKPOINT_FAMILIES.get(n) or by_tiny[n] for n in names}
    if len(families) > 1:
        raise NoStandIn(f"the workflow mixes model families {sorted(families)}: the tiny stand-ins cannot")
    return families.pop() if families else "sd15"


def tiny_head_for(name: str, family: str = "sd15") -> str:
    """The family's tiny head of the kind an official or user head file name mentions (identity: the appearance
    head); a head file that names another family than the workflow's checkpoint has no stand-in."""
    lowered = name.lower()
    named = [f for key, f in HEAD_FILE_FAMILIES.items() if f"_{key}_" in lowered]
    if named and named[0] != family:
        raise NoStandIn(f"head file {name!r} is for {named[0]} but the workflow's checkpoint is {family}")
    for kind in (*TINY_HEAD_KINDS, *HEAD_STAND_INS):
        if kind in lowered:
            return tiny_head_name(HEAD_STAND_INS.get(kind, kind), family=family)
    raise NoStandIn(f"head file {name!r} names no head kind ({', '.join(TINY_HEAD_KINDS)}): "
                    "cannot pick a tiny stand-in")


def swap_model_names(prompt: dict) -> dict:
    """The same prompt with every checkpoint, ControlNet, LoRA and readout head name replaced by the tiny stand-in of
    the workflow's model family; a model with no stand-in for that family raises NoStandIn (never a silent swap)."""
    family = workflow_family(prompt)
    if family in TEXT_STAND_IN_WIDTHS:
        stand_in_text_encoders(prompt, TEXT_STAND_IN_WIDTHS[family])
    for node in prompt.values():
        if family in TINY_DIFFUSION_MODELS:
            swap_dit_loaders(node, family)
        inputs = node["inputs"]
        if isinstance(inputs.get("ckpt_name"), str):
            inputs["ckpt_name"] = TINY_CHECKPOINTS[family]
        for name, tiny in TINY_BY_INPUT.items():
            if isinstance(inputs.get(name), str):
                if family not in tiny:
                    raise NoStandIn(f"{name} {inputs[name]!r}: no tiny {family} stand-in (only {sorted(tiny)})")
                inputs[name] = tiny[family]
        if isinstance(inputs.get("head_name"), str) and node["class_type"] not in WRITERS:
            inputs["head_name"] = tiny_head_for(inputs["head_name"], family)
    return prompt


def stand_in_text_encoders(prompt: dict, width: int) -> None:
    """Each CLIP Text Encode (and Qwen-Image-Edit's text encoder: its prompt, VAE and first image) as the test bed's
    text stand-in at width, its text kept; an Extract Readout that encoded the empty prompt with the CLIP gets the
    stand-in's empty prompt as its positive; the CLIP loaders go."""
    loaders = set()
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CLIPTextEncode":
            loaders.add(inputs["clip"][0])
            node["class_type"], node["inputs"] = TEXT_STAND_IN, {"text": inputs["text"], "text_width": width}
        elif node["class_type"] == EDIT_TEXT_ENCODER:
            loaders.add(inputs["clip"][0])
            reference = {k: inputs[v] for k, v in (("vae", "vae"), ("image", "image1")) if v in inputs}
            node["class_type"], node["inputs"] = TEXT_STAND_IN, {"text": inputs["prompt"], "text_width": width,
                                                                  **reference}
    for node in list(prompt.values()):
        clip = node["inputs"].get("clip")
        if not (isinstance(clip, list) and clip[0] in loaders):
            continue
        if node["class_type"] != "ExtractReadout":
            raise NoStandIn(f"{node['class_type']} reads the text encoder, which no tiny model stands in for")
        del node["inputs"]["clip"]
        prompt[EMPTY_PROMPT_STAND_IN] = {"class_type": TEXT_STAND_IN, "inputs": {"text": "", "text_width": width}}
        node["inputs"].setdefault("positive", [EMPTY_PROMPT_STAND_IN, 0])
    for key in loaders:
        del prompt[key]


def swap_dit_loaders(node: dict, family: str) -> None:
    """A DiT graph's loaders on the tiny DiT: its diffusion model, its tiny VAE, and its one CLIP-L in place of the
    family's text encoders."""
    inputs = node["inputs"]
    if isinstance(inputs.get("unet_name"), str):
        inputs["unet_name"] = TINY_DIFFUSION_MODELS[family]
    if isinstance(inputs.get("vae_name"), str):
        inputs["vae_name"] = TINY_VAES.get(family, TINY_DIT_VAE)
    if node["class_type"] in ("DualCLIPLoader", "TripleCLIPLoader", "CLIPLoader"):
        node["class_type"] = "CLIPLoader"
        node["inputs"] = {"clip_name": TINY_DIT_CLIP_L, "type": TINY_CLIP_TYPES[family]}


def shrink_canvas(prompt: dict, size: int) -> dict:
    """Cap every integer width/height (and training resolution) input at size pixels and scale drag points with the
    canvas (the tiny SD1.5 UNet costs seconds per step at 512 px on a CPU)."""
    sides = [v for node in prompt.values() for k, v in node["inputs"].items() if k in ("width", "height") and isinstance(v, int)]
    factor = min(1.0, size / max(sides)) if sides else 1.0
    for node in prompt.values():
        inputs = node["inputs"]
        for name in ("width", "height", "resolution"):
            if isinstance(inputs.get(name), int) and inputs[name] > size:
                inputs[name] = size
        if isinstance(inputs.get("points"), str) and factor < 1.0:
            pairs = json.loads(inputs["points"] or "[]")
            inputs["points"] = json.dumps([{k: [c * factor for c in pair[k]] for k in ("source", "target")} for pair in pairs])
    return prompt


def cap_steps(prompt: dict, steps: int, refinements: int = 2) -> dict:
    """Cap every sampler's and inverter's steps (they stay equal to each other) and inversion refinements."""
    for node in prompt.values():
        inputs = node["inputs"]
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], steps)
        if isinstance(inputs.get("refinements"), int):
            inputs["refinements"] = min(inputs["refinements"], refinements)
    return prompt


def fit_for_cpu(prompt: dict, size: int, steps: int) -> dict:
    """Tiny model names, a small canvas and few steps: what the demo and the tests run on a CPU."""
    return cap_steps(shrink_canvas(swap_model_names(prompt), size), steps)
