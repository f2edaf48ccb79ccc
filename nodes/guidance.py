"""Nodes that build readout targets and sample with readout guidance."""
from __future__ import annotations

import comfy.samplers

from ..readout.guidance.loss_plot import plot_losses
from ..readout.guidance.patch import apply_readout_guidance
from ..readout.heads.readouts import spatial_to_unit
from ..readout.guidance.sampling import sample_guided
from ..readout.targets.spatial import SpatialTarget, StepWindow
from .common import (CATEGORY, ReadoutType, ReadoutGuidanceType, ReadoutHeadType, StepWindowCheck, chain_input, chained,
                     guidance_option_inputs, guidance_options, guidance_output, io, report_text, require_finite,
                     require_finite_map, seed_input, show_on_running_node, step_window_inputs, weight_input)

APPLIES_TO = "The chained targets, for ReadoutGuidedKSampler or ApplyReadoutGuidance."


class ReadoutTarget(StepWindowCheck, io.ComfyNode):
    """A spatial target: the pose/depth/edge map the head's readout should become."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutTarget", display_name="Readout Target (spatial)", category=CATEGORY,
            description="Spatial control: steer sampling so a pose/depth/edge head reads this map.",
            inputs=[
                ReadoutHeadType.Input("head", tooltip="A pose, depth or edge head from LoadReadoutHead."),
                weight_input(),
                *step_window_inputs(),
                io.Image.Input("target_image", optional=True, tooltip=(
                    "The map to reach, drawn like a ControlNet control image (any size: it is resized "
                    "to the latent). One image for the whole batch, or one per latent. Connect this or "
                    "target_readout.")),
                ReadoutType.Input("target_readout", optional=True, tooltip=(
                    "Instead of target_image: a readout from ExtractReadout (e.g. the pose of a "
                    "reference picture).")),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where the map matters (white); elsewhere the readout is free."),
                chain_input(),
            ],
            outputs=[guidance_output(APPLIES_TO)],
        )

    @classmethod
    def execute(cls, head, weight: float, start_percent: float, end_percent: float, target_image=None,
                target_readout=None, mask=None, guidance=None) -> io.NodeOutput:
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
        return io.NodeOutput(chained(guidance, target))


def sampler_inputs() -> list[io.Input]:
    """KSampler's inputs under KSampler's names and defaults, so workflows swap the two nodes freely."""
    return [
        io.Model.Input("model", tooltip="The model to sample with (after LoRA etc.); guidance patches a clone."),
        seed_input("The seed of the starting noise (and of the generated reference of relative targets).",
                   control=True),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps."),
        io.Float.Input("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale, as in KSampler."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                       tooltip="Any of ComfyUI's samplers (rule official needs ddim, euler or euler_ancestral)."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                       tooltip="Any of ComfyUI's schedulers."),
        io.Conditioning.Input("positive", tooltip="The prompt's conditioning (ControlNet/T2I-Adapter applied)."),
        io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning."),
        io.Latent.Input("latent_image", tooltip="The latent to denoise (an empty latent, or an encoded image)."),
        io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="How much of the schedule to run; below 1 keeps the input latent's structure."),
        ReadoutGuidanceType.Input("guidance", tooltip="Targets from ReadoutTarget nodes."),
    ]


class ReadoutGuidedKSampler(io.ComfyNode):
    """KSampler with readout guidance: every sampler and scheduler, ComfyUI's progress bar and previews."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ReadoutGuidedKSampler", display_name="KSampler (Readout Guidance)", category=CATEGORY,
            description=("Samples like KSampler while readout heads steer the latent toward your targets; after a "
                         "run it shows what guidance did per target, with a WARNING where it could not act."),
            inputs=[*sampler_inputs(), *guidance_option_inputs()],
            outputs=[
                io.Latent.Output(display_name="LATENT", tooltip="The guided (edited) latent."),
                io.Image.Output(display_name="loss_plot",
                                tooltip="Readout loss per guided model evaluation, per target."),
                io.Latent.Output(display_name="reference", tooltip=(
                    "Relative targets: the reference branch (sampled from the same seed, or the real image). "
                    "Spatial-only guidance has no reference branch: this repeats LATENT.")),
            ],
        )

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0, guidance=(), **options) -> io.NodeOutput:
        require_finite(cfg=cfg, denoise=denoise)
        result = sample_guided(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise, tuple(guidance or ()), guidance_options(**options))
        plot = plot_losses(result.patch.last_run.loss_history(), [t.label for t in result.patch.targets])
        return io.NodeOutput({**latent_image, "samples": result.edited}, plot,
                             {**latent_image, "samples": result.reference},
                             ui={"text": [report_text(result.patch.last_report)]})


class ApplyReadoutGuidance(io.ComfyNode):
    """Readout guidance as a MODEL patch, for KSamplerAdvanced and SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ApplyReadoutGuidance", display_name="Apply Readout Guidance", category=CATEGORY,
            description=("Patches a clone of the model so any sampler node applies readout guidance; where guidance "
                         "could not act, a WARNING shows on the sampler node and in the log."),
            inputs=[
                io.Model.Input("model", tooltip="The model to guide (after LoRA etc.); it is cloned, not changed."),
                ReadoutGuidanceType.Input("guidance", tooltip="Targets from ReadoutTarget nodes."),
                *guidance_option_inputs(),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model that samples with readout guidance.")],
        )

    @classmethod
    def execute(cls, model, guidance, **options) -> io.NodeOutput:
        guided, _ = apply_readout_guidance(model, tuple(guidance), guidance_options(**options),
                                           report_to=show_on_running_node)
        return io.NodeOutput(guided)


NODES = [ReadoutTarget, ReadoutGuidedKSampler, ApplyReadoutGuidance]
