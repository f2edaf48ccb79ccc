"""Nodes that build readout targets and sample with readout guidance."""
from __future__ import annotations

import nodes as comfy_nodes

from ..readout.guidance.rule import OFFICIAL_WEIGHT
from ..readout.guidance.loss_plot import plot_losses
from ..readout.guidance.patch import apply_readout_guidance
from ..readout.heads.readouts import spatial_to_unit
from ..readout.guidance.sampling import sample_guided
from ..readout.targets.spatial import SpatialTarget, StepWindow
from .common import (CATEGORY, guidance_option_inputs, guidance_options, report_text, require_finite,
                     require_finite_map, show_on_running_node)

WEIGHT_INPUT = ("FLOAT", {
    "default": OFFICIAL_WEIGHT, "min": 0.0, "max": 10.0, "step": 0.01,
    "tooltip": "Guidance strength w (latent moved by w per unit of sigma, along the normalized gradient). "
               f"{OFFICIAL_WEIGHT} matches the official code's strength; 0 turns this target off."})
START_INPUT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                         "tooltip": "Fraction of the schedule where guidance starts (0 = first step)."})
END_INPUT = ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                       "tooltip": "Fraction of the schedule where guidance stops; the paper guides the first half."})


def chained(previous, target) -> tuple:
    """Append a target to an incoming READOUT_GUIDANCE (None starts a new one)."""
    return tuple(previous or ()) + (target,)


class ReadoutTarget:
    """A spatial target: the pose/depth/edge map the head's readout should become."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "head": ("READOUT_HEAD", {"tooltip": "A pose, depth or edge head from LoadReadoutHead."}),
                "weight": WEIGHT_INPUT,
                "start_percent": START_INPUT,
                "end_percent": END_INPUT,
            },
            "optional": {
                "target_image": ("IMAGE", {
                    "tooltip": "The map to reach, drawn like a ControlNet control image (any size: it is resized "
                               "to the latent). One image for the whole batch, or one per latent."}),
                "target_readout": ("READOUT", {
                    "tooltip": "Instead of target_image: a readout from ExtractReadout (e.g. the pose of a "
                               "reference picture)."}),
                "mask": ("MASK", {"tooltip": "Where the map matters (white); elsewhere the readout is free."}),
                "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets to chain this one after."}),
            },
        }

    RETURN_TYPES = ("READOUT_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("The chained targets, for ReadoutGuidedKSampler or ApplyReadoutGuidance.",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "Spatial control: steer sampling so a pose/depth/edge head reads this map."

    def build(self, head, weight: float, start_percent: float, end_percent: float,
              target_image=None, target_readout=None, mask=None, guidance=None):
        if not head.config.is_spatial:
            raise ValueError(f"head: ReadoutTarget needs a pose, depth or edge head; {head.name!r} is a "
                             f"{head.config.kind} head (relative heads take reference images, not maps)")
        require_finite(weight=weight)
        if (target_image is None) == (target_readout is None):
            raise ValueError("target_image / target_readout: connect exactly one of them")
        if target_readout is not None:
            if not target_readout.config.is_spatial:
                raise ValueError("target_readout: comes from a relative head; connect a pose/depth/edge readout")
            require_finite_map(target_readout.tensor, "target_readout")
            image = spatial_to_unit(target_readout.tensor, target_readout.config.control_range)
        else:
            image = target_image[..., :3].movedim(-1, 1).float()
            require_finite_map(image, "target_image")
        require_finite_map(mask, "mask")
        mask_map = None
        if mask is not None:
            mask_map = (mask if mask.ndim == 3 else mask[None]).float()[:, None]
        window = StepWindow(start_percent, end_percent)
        target = SpatialTarget(head, image.clone(), weight, window, None if mask_map is None else mask_map.clone())
        return (chained(guidance, target),)


def _sampler_inputs() -> dict:
    inputs = comfy_nodes.KSampler.INPUT_TYPES()["required"]
    return {**inputs, "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets from ReadoutTarget nodes."})}


class ReadoutGuidedKSampler:
    """KSampler with readout guidance: every sampler and scheduler, ComfyUI's progress bar and previews."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _sampler_inputs(), "optional": guidance_option_inputs()}

    RETURN_TYPES = ("LATENT", "IMAGE", "LATENT")
    RETURN_NAMES = ("LATENT", "loss_plot", "reference")
    OUTPUT_TOOLTIPS = ("The guided (edited) latent.", "Readout loss per guided model evaluation, per target.",
                       "Relative targets: the reference branch (sampled from the same seed, or the real image). "
                       "Spatial-only guidance has no reference branch: this repeats LATENT.")
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Samples like KSampler while readout heads steer the latent toward your targets; after a run it "
                   "shows what guidance did per target, with a WARNING where it could not act.")

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
               denoise=1.0, guidance=(), loss_branch="cond", gradient_checkpointing=True, compute_dtype="auto",
               rule="fast"):
        require_finite(cfg=cfg, denoise=denoise)
        options = guidance_options(loss_branch, gradient_checkpointing, compute_dtype, rule)
        result = sample_guided(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise, tuple(guidance or ()), options)
        plot = plot_losses(result.patch.last_run.loss_history(), [t.label for t in result.patch.targets])
        latents = ({**latent_image, "samples": result.edited}, plot, {**latent_image, "samples": result.reference})
        return {"ui": {"text": [report_text(result.patch.last_report)]}, "result": latents}


class ApplyReadoutGuidance:
    """Readout guidance as a MODEL patch, for KSamplerAdvanced and SamplerCustomAdvanced."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to guide (after LoRA etc.); it is cloned, not changed."}),
                "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets from ReadoutTarget nodes."}),
            },
            "optional": guidance_option_inputs(),
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A clone of the model that samples with readout guidance.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Patches a clone of the model so any sampler node applies readout guidance; where guidance "
                   "could not act, a WARNING shows on the sampler node and in the log.")

    def apply(self, model, guidance, loss_branch="cond", gradient_checkpointing=True, compute_dtype="auto",
              rule="fast"):
        options = guidance_options(loss_branch, gradient_checkpointing, compute_dtype, rule)
        guided, patch = apply_readout_guidance(model, tuple(guidance), options)
        patch.report_to = show_on_running_node
        return (guided,)


NODE_CLASS_MAPPINGS = {
    "ReadoutTarget": ReadoutTarget,
    "ReadoutGuidedKSampler": ReadoutGuidedKSampler,
    "ApplyReadoutGuidance": ApplyReadoutGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ReadoutTarget": "Readout Target (spatial)",
    "ReadoutGuidedKSampler": "KSampler (Readout Guidance)",
    "ApplyReadoutGuidance": "Apply Readout Guidance",
}
