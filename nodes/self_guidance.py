"""Self-Guidance: training-free targets on a prompt word's cross-attention, in the readout-guided sampler."""
from __future__ import annotations

from ..readout.targets.prompt_tokens import clip_family, word_token_positions
from ..readout.targets.self_guidance import SELF_GUIDANCE_EDITS, SelfGuidanceTarget as Target
from ..readout.targets.spatial import StepWindow
from .common import (CATEGORY, ReadoutReferenceType, StepWindowCheck, chain_input, chained, guidance_output, io,
                     require_finite, step_window_inputs, weight_input)


def _fraction(name: str, default: float, low: float, tooltip: str) -> io.Float.Input:
    return io.Float.Input(name, default=default, min=low, max=1.0, step=0.01, tooltip=tooltip)


class SelfGuidanceTarget(StepWindowCheck, io.ComfyNode):
    """Move, resize or hold the shape of what a prompt word draws, read from the UNet's cross-attention."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SelfGuidanceTarget", display_name="Self-Guidance Target", category=CATEGORY,
            description=("Self-Guidance (Epstein et al. 2023): steer a prompt word's position, size, shape or "
                         "appearance through its cross-attention map; no head needed. Needs loss_branch cond."),
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP that encodes the positive prompt: its tokenizer finds the "
                                              "words' token positions."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The positive prompt text, exactly as it is encoded for the sampler."),
                io.String.Input("words", default="",
                                tooltip="The word or words of the prompt to steer, e.g. 'cat' or 'red car'."),
                io.Combo.Input("edit", options=list(SELF_GUIDANCE_EDITS), default="move_by", tooltip=(
                    "move_by: shift the words' attention centroid by (dx, dy) from where the unguided "
                    "image puts it; move_to: bring it to (x, y); scale_size: multiply its attention "
                    "mass by size_factor; keep_shape / keep_appearance: keep the unguided image's shape or look "
                    "(with a reference: take on the reference image's look).")),
                _fraction("dx", 0.25, -1.0, "move_by: horizontal shift as a fraction of the width (+ = right)."),
                _fraction("dy", 0.0, -1.0, "move_by: vertical shift as a fraction of the height (+ = down)."),
                _fraction("x", 0.5, 0.0, "move_to: target x of the centroid, 0 = left edge, 1 = right edge."),
                _fraction("y", 0.5, 0.0, "move_to: target y of the centroid, 0 = top, 1 = bottom."),
                io.Float.Input("size_factor", default=1.5, min=0.1, max=4.0, step=0.05,
                               tooltip="scale_size: how much bigger (> 1) or smaller (< 1)."),
                weight_input(),
                *step_window_inputs(),
                ReadoutReferenceType.Input("reference", optional=True, tooltip=(
                    "keep_appearance: a real image from ReadoutInvertImage whose appearance the words take "
                    "on. Leave empty to compare with the unguided image from the same seed.")),
                chain_input("Targets to chain this one after (learned heads too)."),
            ],
            outputs=[guidance_output("The chained targets, for KSampler (Readout Guidance).")],
        )

    @classmethod
    def execute(cls, clip, prompt: str, words: str, edit: str, dx: float, dy: float, x: float, y: float,
                size_factor: float, weight: float, start_percent: float, end_percent: float, reference=None,
                guidance=None) -> io.NodeOutput:
        if reference is not None and edit != "keep_appearance":
            raise ValueError(f"reference: only keep_appearance takes a real reference image; {edit} compares with "
                             "the unguided image (disconnect reference)")
        require_finite(dx=dx, dy=dy, x=x, y=y, size_factor=size_factor, weight=weight)
        tokens = word_token_positions(clip, prompt, words)
        target = Target(words.strip(), tokens, clip_family(clip), edit, weight, StepWindow(start_percent, end_percent),
                        offset=(dx, dy), point=(x, y), factor=size_factor, reference=reference)
        return io.NodeOutput(chained(guidance, target))


NODES = [SelfGuidanceTarget]
