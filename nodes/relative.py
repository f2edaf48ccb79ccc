"""Nodes for relative guidance: drag, appearance, identity, and real-image references by inversion."""
from __future__ import annotations

import comfy.samplers
import comfy.utils
import nodes as comfy_nodes

from ..readout.targets.inversion import invert_image
from ..readout.targets.points import check_inside, parse_drag_pairs
from ..readout.targets.relative import AppearanceTarget, CorrespondenceTarget
from ..readout.targets.spatial import StepWindow
from .common import CATEGORY, require_finite, require_finite_map, require_vae_size
from .guidance import END_INPUT, START_INPUT, WEIGHT_INPUT, chained

APPEARANCE_KINDS = ("appearance", "identity")
REFERENCE_INPUT = ("READOUT_REFERENCE", {
    "tooltip": "A real image brought back by ReadoutInvertImage. Leave empty to use a generated reference: "
               "an unguided image sampled from the same seed next to the edit."})


def require_kind(head, kinds: tuple[str, ...], input_name: str, use: str):
    """Refuse a head of the wrong kind, naming the input and what it needs."""
    if head.config.kind not in kinds:
        raise ValueError(f"{input_name}: {use} needs a {' or '.join(kinds)} head; {head.name!r} is a "
                         f"{head.config.kind} head")
    return head


def mask_map(mask, name: str):
    """A MASK (input `name`) as a (B, 1, H, W) float tensor, or None; NaN or infinite values are refused."""
    if mask is None:
        return None
    require_finite_map(mask, name)
    return (mask if mask.ndim == 3 else mask[None]).float()[:, None].clone()


def save_reference_preview(image) -> list[dict]:
    """Save the reference image as a temp preview for the points editor."""
    return comfy_nodes.PreviewImage().save_images(image[:1], filename_prefix="readout_drag_reference")["ui"]["images"]


class ReadoutDragTarget:
    """Drag: move image content from source points to target points, keeping the rest of the appearance."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "correspondence_head": ("READOUT_HEAD", {"tooltip": "A correspondence head (drag_correspondence)."}),
                "points": ("STRING", {
                    "default": "[]",
                    "tooltip": 'Point pairs in reference-image pixels: [{"source": [x, y], "target": [x, y]}, ...]. '
                               "Edit them in the canvas: click a source then its target; drag to move; "
                               "right-click to delete."}),
                "drag_weight": WEIGHT_INPUT,
                "start_percent": START_INPUT,
                "end_percent": END_INPUT,
            },
            "optional": {
                "appearance_head": ("READOUT_HEAD", {
                    "tooltip": "An appearance head that keeps everything else looking like the reference."}),
                "appearance_weight": ("FLOAT", {
                    "default": 0.2, "min": 0.0, "max": 10.0, "step": 0.01,
                    "tooltip": "Strength of the appearance-keeping term (0 turns it off)."}),
                "appearance_mask": ("MASK", {"tooltip": "Where appearance is enforced (white). Default: everywhere."}),
                "reference": REFERENCE_INPUT,
                "reference_image": ("IMAGE", {
                    "tooltip": "The image the points refer to: shown in the points editor; points are checked "
                               "against its size."}),
                "points_json": ("STRING", {"forceInput": True,
                                           "tooltip": "Point pairs as JSON from another node; overrides points."}),
                "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets to chain these after."}),
            },
        }

    RETURN_TYPES = ("READOUT_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("Drag (and appearance) targets for KSampler (Readout Guidance).",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "Drag-based editing: correspondence at the moved points plus appearance elsewhere."

    def build(self, correspondence_head, points: str, drag_weight: float, start_percent: float, end_percent: float,
              appearance_head=None, appearance_weight: float = 0.2, appearance_mask=None, reference=None,
              reference_image=None, points_json=None, guidance=None):
        require_kind(correspondence_head, ("correspondence",), "correspondence_head", "dragging")
        require_finite(drag_weight=drag_weight, appearance_weight=appearance_weight)
        text, source = (points_json, "points_json") if points_json is not None else (points, "points")
        pairs = parse_drag_pairs(text, source)
        size_image = reference_image if reference_image is not None else (reference.image if reference else None)
        if size_image is None:
            raise ValueError("reference_image: connect the image the points refer to (or a reference), "
                             "so the points can be placed on it")
        height, width = size_image.shape[1], size_image.shape[2]
        check_inside(pairs, width, height, source)
        window = StepWindow(start_percent, end_percent)
        targets = [CorrespondenceTarget(correspondence_head, tuple(pairs), (height, width), drag_weight, window,
                                        reference)]
        if appearance_head is not None:
            require_kind(appearance_head, APPEARANCE_KINDS, "appearance_head", "keeping appearance")
            targets.append(AppearanceTarget(appearance_head, appearance_weight, window,
                                            mask_map(appearance_mask, "appearance_mask"), reference=reference,
                                            shares_reference_noise=True, mask_input="appearance_mask"))
        ui = {"reference_preview": save_reference_preview(size_image)}
        return {"ui": ui, "result": (tuple(guidance or ()) + tuple(targets),)}


class ReadoutAppearanceTarget:
    """Appearance variation: a new image that keeps the reference's colours, textures or whole object."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "appearance_head": ("READOUT_HEAD", {"tooltip": "An appearance head (drag_appearance)."}),
                "weight": WEIGHT_INPUT,
                "start_percent": START_INPUT,
                "end_percent": END_INPUT,
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Where appearance is compared (white). Default: everywhere."}),
                "reference": REFERENCE_INPUT,
                "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets to chain this after."}),
            },
        }

    RETURN_TYPES = ("READOUT_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("The appearance target for KSampler (Readout Guidance).",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Low weights keep colours and textures of the reference; high weights keep the same object. "
                   "The edited branch starts from its own noise (seed + 1 for a generated reference).")

    def build(self, appearance_head, weight: float, start_percent: float, end_percent: float, mask=None,
              reference=None, guidance=None):
        require_kind(appearance_head, APPEARANCE_KINDS, "appearance_head", "appearance guidance")
        require_finite(weight=weight)
        target = AppearanceTarget(appearance_head, weight, StepWindow(start_percent, end_percent),
                                  mask_map(mask, "mask"), reference=reference)
        return (chained(guidance, target),)


class ReadoutIdentityTarget:
    """Identity: the face region reads like the reference's face; optionally the rest keeps its appearance."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "identity_head": ("READOUT_HEAD", {
                    "tooltip": "An identity head from our trainer, or the released appearance head (no identity "
                               "head was released: the appearance head on the face region stands in)."}),
                "face_mask": ("MASK", {"tooltip": "The face region (white); its bounding box is compared."}),
                "weight": WEIGHT_INPUT,
                "start_percent": START_INPUT,
                "end_percent": END_INPUT,
            },
            "optional": {
                "appearance_head": ("READOUT_HEAD", {"tooltip": "An appearance head for everything outside the face."}),
                "appearance_weight": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                                "tooltip": "Strength outside the face (0 lets the new prompt decide)."}),
                "reference": REFERENCE_INPUT,
                "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets to chain these after."}),
            },
        }

    RETURN_TYPES = ("READOUT_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("Identity (and appearance) targets for KSampler (Readout Guidance).",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "Identity-consistent generation: a reference portrait, a new prompt."

    def build(self, identity_head, face_mask, weight: float, start_percent: float, end_percent: float,
              appearance_head=None, appearance_weight: float = 0.0, reference=None, guidance=None):
        require_kind(identity_head, APPEARANCE_KINDS, "identity_head", "identity guidance")
        require_finite(weight=weight, appearance_weight=appearance_weight)
        window, mask = StepWindow(start_percent, end_percent), mask_map(face_mask, "face_mask")
        if float(mask.max()) <= 0.5:
            raise ValueError("face_mask: the mask is empty; paint the face region white")
        result = chained(guidance, AppearanceTarget(identity_head, weight, window, mask, crop=True,
                                                    reference=reference, role="identity", mask_input="face_mask"))
        if appearance_head is not None and appearance_weight > 0:
            require_kind(appearance_head, APPEARANCE_KINDS, "appearance_head", "keeping appearance")
            result = chained(result, AppearanceTarget(appearance_head, appearance_weight, window, mask,
                                                      invert_mask=True, reference=reference, mask_input="face_mask"))
        return (result,)


class ReadoutInvertImage:
    """Bring a real image back to noise along the sampler's schedule (DDIM inversion) to use it as a reference."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model that will sample the edit."}),
                "vae": ("VAE", {"tooltip": "Encodes the image."}),
                "image": ("IMAGE", {"tooltip": "The real image to edit (one image)."}),
                "positive": ("CONDITIONING", {"tooltip": "A prompt describing the image (inversion runs at CFG 1)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                                  "tooltip": "Must equal the sampler's steps."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {
                    "default": "ddim_uniform", "tooltip": "Must equal the sampler's scheduler (use ddim or euler)."}),
                "refinements": ("INT", {
                    "default": 5, "min": 0, "max": 20,
                    "tooltip": "Fixed-point iterations per step that make the inversion the exact inverse of the "
                               "ddim/euler sampler step (0 = plain DDIM inversion; each costs one UNet call per step)."}),
            },
        }

    RETURN_TYPES = ("READOUT_REFERENCE",)
    RETURN_NAMES = ("reference",)
    OUTPUT_TOOLTIPS = ("The inverted image, for drag, appearance and identity targets.",)
    FUNCTION = "invert"
    CATEGORY = CATEGORY
    DESCRIPTION = "DDIM inversion: with no edit, the sampler then reconstructs the image."

    def invert(self, model, vae, image, positive, steps: int, scheduler: str, refinements: int = 5):
        if image.shape[0] != 1:
            raise ValueError(f"image: invert one image at a time (got a batch of {image.shape[0]})")
        require_vae_size(image, "image", "Readout Invert Image")
        progress = comfy.utils.ProgressBar(steps)
        return (invert_image(model, vae, image, positive, steps, scheduler, refinements, progress),)


NODE_CLASS_MAPPINGS = {
    "ReadoutDragTarget": ReadoutDragTarget,
    "ReadoutAppearanceTarget": ReadoutAppearanceTarget,
    "ReadoutIdentityTarget": ReadoutIdentityTarget,
    "ReadoutInvertImage": ReadoutInvertImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReadoutDragTarget": "Readout Drag Target",
    "ReadoutAppearanceTarget": "Readout Appearance Target",
    "ReadoutIdentityTarget": "Readout Identity Target",
    "ReadoutInvertImage": "Readout Invert Image (DDIM)",
}
