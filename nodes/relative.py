"""Nodes for relative guidance: drag, appearance, identity, and real-image references by inversion."""
from __future__ import annotations

import comfy.samplers
import comfy.utils
import nodes as comfy_nodes

from ..readout.targets.inversion import invert_image
from ..readout.targets.points import check_inside, parse_drag_pairs
from ..readout.targets.relative import AppearanceTarget, CorrespondenceTarget
from ..readout.targets.spatial import StepWindow
from .common import (CATEGORY, ReadoutHeadType, ReadoutReferenceType, StepWindowCheck, chain_input, chained,
                     guidance_output, io, require_finite, require_finite_map, require_vae_size, step_window_inputs, weight_input)

APPEARANCE_KINDS = ("appearance", "identity")


def reference_input() -> io.Input:
    return ReadoutReferenceType.Input("reference", optional=True, tooltip=(
        "A real image brought back by ReadoutInvertImage. Leave empty to use a generated reference: "
        "an unguided image sampled from the same seed next to the edit."))


def appearance_weight_input(default: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input("appearance_weight", default=default, min=0.0, max=10.0, step=0.01, optional=True,
                          tooltip=tooltip)


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


class ReadoutDragTarget(StepWindowCheck, io.ComfyNode):
    """Drag: move image content from source points to target points, keeping the rest of the appearance."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutDragTarget", display_name="Readout Drag Target", category=CATEGORY,
            description="Drag-based editing: correspondence at the moved points plus appearance elsewhere.",
            inputs=[
                ReadoutHeadType.Input("correspondence_head",
                                  tooltip="A correspondence head (drag_correspondence)."),
                io.String.Input("points", default="[]", tooltip=(
                    'Point pairs in reference-image pixels: [{"source": [x, y], "target": [x, y]}, ...]. '
                    "Edit them in the canvas: click a source then its target; drag to move; "
                    "right-click to delete.")),
                weight_input("drag_weight"),
                *step_window_inputs(),
                ReadoutHeadType.Input("appearance_head", optional=True, tooltip=(
                    "An appearance head that keeps everything else looking like the reference.")),
                appearance_weight_input(0.2, "Strength of the appearance-keeping term (0 turns it off)."),
                io.Mask.Input("appearance_mask", optional=True,
                              tooltip="Where appearance is enforced (white). Default: everywhere."),
                reference_input(),
                io.Image.Input("reference_image", optional=True, tooltip=(
                    "The image the points refer to: shown in the points editor; points are checked "
                    "against its size.")),
                io.String.Input("points_json", force_input=True, optional=True,
                                tooltip="Point pairs as JSON from another node; overrides points."),
                chain_input("Targets to chain these after."),
            ],
            outputs=[guidance_output("Drag (and appearance) targets for KSampler (Readout Guidance).")],
        )

    @classmethod
    def execute(cls, correspondence_head, points: str, drag_weight: float, start_percent: float,
                end_percent: float, appearance_head=None, appearance_weight: float = 0.2, appearance_mask=None,
                reference=None, reference_image=None, points_json=None, guidance=None) -> io.NodeOutput:
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
        return io.NodeOutput(chained(guidance, *targets),
                             ui={"reference_preview": save_reference_preview(size_image)})


class ReadoutAppearanceTarget(StepWindowCheck, io.ComfyNode):
    """Appearance variation: a new image that keeps the reference's colours, textures or whole object."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutAppearanceTarget", display_name="Readout Appearance Target", category=CATEGORY,
            description=("Low weights keep colours and textures of the reference; high weights keep the same "
                         "object. The edited branch starts from its own noise (seed + 1 for a generated reference)."),
            inputs=[
                ReadoutHeadType.Input("appearance_head", tooltip="An appearance head (drag_appearance)."),
                weight_input(),
                *step_window_inputs(),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where appearance is compared (white). Default: everywhere."),
                reference_input(),
                chain_input("Targets to chain this after."),
            ],
            outputs=[guidance_output("The appearance target for KSampler (Readout Guidance).")],
        )

    @classmethod
    def execute(cls, appearance_head, weight: float, start_percent: float, end_percent: float, mask=None,
                reference=None, guidance=None) -> io.NodeOutput:
        require_kind(appearance_head, APPEARANCE_KINDS, "appearance_head", "appearance guidance")
        require_finite(weight=weight)
        target = AppearanceTarget(appearance_head, weight, StepWindow(start_percent, end_percent),
                                  mask_map(mask, "mask"), reference=reference)
        return io.NodeOutput(chained(guidance, target))


class ReadoutIdentityTarget(StepWindowCheck, io.ComfyNode):
    """Identity: the face region reads like the reference's face; optionally the rest keeps its appearance."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutIdentityTarget", display_name="Readout Identity Target", category=CATEGORY,
            description="Identity-consistent generation: a reference portrait, a new prompt.",
            inputs=[
                ReadoutHeadType.Input("identity_head", tooltip=(
                    "An identity head from our trainer, or the released appearance head (no identity "
                    "head was released: the appearance head on the face region stands in).")),
                io.Mask.Input("face_mask", tooltip="The face region (white); its bounding box is compared."),
                weight_input(),
                *step_window_inputs(),
                ReadoutHeadType.Input("appearance_head", optional=True,
                                  tooltip="An appearance head for everything outside the face."),
                appearance_weight_input(0.0, "Strength outside the face (0 lets the new prompt decide)."),
                reference_input(),
                chain_input("Targets to chain these after."),
            ],
            outputs=[guidance_output("Identity (and appearance) targets for KSampler (Readout Guidance).")],
        )

    @classmethod
    def execute(cls, identity_head, face_mask, weight: float, start_percent: float, end_percent: float,
                appearance_head=None, appearance_weight: float = 0.0, reference=None, guidance=None) -> io.NodeOutput:
        require_kind(identity_head, APPEARANCE_KINDS, "identity_head", "identity guidance")
        require_finite(weight=weight, appearance_weight=appearance_weight)
        window, mask = StepWindow(start_percent, end_percent), mask_map(face_mask, "face_mask")
        if float(mask.max()) <= 0.5:
            raise ValueError("face_mask: the mask is empty; paint the face region white")
        targets = [AppearanceTarget(identity_head, weight, window, mask, crop=True, reference=reference,
                                    role="identity", mask_input="face_mask")]
        if appearance_head is not None and appearance_weight > 0:
            require_kind(appearance_head, APPEARANCE_KINDS, "appearance_head", "keeping appearance")
            targets.append(AppearanceTarget(appearance_head, appearance_weight, window, mask, invert_mask=True,
                                            reference=reference, mask_input="face_mask"))
        return io.NodeOutput(chained(guidance, *targets))


class ReadoutInvertImage(io.ComfyNode):
    """Bring a real image back to noise along the sampler's schedule (DDIM inversion) to use it as a reference."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutInvertImage", display_name="Readout Invert Image (DDIM)", category=CATEGORY,
            description="DDIM inversion: with no edit, the sampler then reconstructs the image.",
            inputs=[
                io.Model.Input("model", tooltip="The model that will sample the edit."),
                io.Vae.Input("vae", tooltip="Encodes the image."),
                io.Image.Input("image", tooltip="The real image to edit (one image)."),
                io.Conditioning.Input("positive",
                                      tooltip="A prompt describing the image (inversion runs at CFG 1)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Must equal the sampler's steps."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform",
                               tooltip="Must equal the sampler's scheduler (use ddim or euler)."),
                io.Int.Input("refinements", default=5, min=0, max=20, tooltip=(
                    "Fixed-point iterations per step that make the inversion the exact inverse of the "
                    "ddim/euler sampler step (0 = plain DDIM inversion; each costs one UNet call per step).")),
            ],
            outputs=[ReadoutReferenceType.Output(display_name="reference",
                                             tooltip="The inverted image, for drag, appearance and identity targets.")],
        )

    @classmethod
    def execute(cls, model, vae, image, positive, steps: int, scheduler: str, refinements: int = 5) -> io.NodeOutput:
        if image.shape[0] != 1:
            raise ValueError(f"image: invert one image at a time (got a batch of {image.shape[0]})")
        require_vae_size(image, "image", "Readout Invert Image")
        progress = comfy.utils.ProgressBar(steps)
        return io.NodeOutput(invert_image(model, vae, image, positive, steps, scheduler, refinements, progress))


NODES = [ReadoutDragTarget, ReadoutAppearanceTarget, ReadoutIdentityTarget, ReadoutInvertImage]
