"""Self-Guidance: training-free targets on a prompt word's cross-attention, in the readout-guided sampler."""
from __future__ import annotations

from ..readout.targets.prompt_tokens import clip_family, word_token_positions
from ..readout.targets.self_guidance import SELF_GUIDANCE_EDITS, SelfGuidanceTarget as Target
from ..readout.targets.spatial import StepWindow
from .common import CATEGORY, require_finite
from .guidance import END_INPUT, START_INPUT, WEIGHT_INPUT, chained


def _fraction(default: float, low: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": low, "max": 1.0, "step": 0.01, "tooltip": tooltip})


class SelfGuidanceTarget:
    """Move, resize or hold the shape of what a prompt word draws, read from the UNet's cross-attention."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The CLIP that encodes the positive prompt: its tokenizer finds the "
                                             "words' token positions."}),
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "The positive prompt text, exactly as it is encoded for the "
                                                 "sampler."}),
                "words": ("STRING", {"default": "",
                                     "tooltip": "The word(s) of the prompt to steer, e.g. 'cat' or 'red car'."}),
                "edit": (list(SELF_GUIDANCE_EDITS), {
                    "default": "move_by",
                    "tooltip": "move_by: shift the words' attention centroid by (dx, dy) from where the unguided "
                               "image puts it; move_to: bring it to (x, y); scale_size: multiply its attention "
                               "mass by size_factor; keep_shape / keep_appearance: keep the unguided image's shape or look "
                               "(with a reference: take on the reference image's look)."}),
                "dx": _fraction(0.25, -1.0, "move_by: horizontal shift as a fraction of the width (+ = right)."),
                "dy": _fraction(0.0, -1.0, "move_by: vertical shift as a fraction of the height (+ = down)."),
                "x": _fraction(0.5, 0.0, "move_to: target x of the centroid, 0 = left edge, 1 = right edge."),
                "y": _fraction(0.5, 0.0, "move_to: target y of the centroid, 0 = top, 1 = bottom."),
                "size_factor": ("FLOAT", {"default": 1.5, "min": 0.1, "max": 4.0, "step": 0.05,
                                          "tooltip": "scale_size: how much bigger (> 1) or smaller (< 1)."}),
                "weight": WEIGHT_INPUT,
                "start_percent": START_INPUT,
                "end_percent": END_INPUT,
            },
            "optional": {
                "reference": ("READOUT_REFERENCE", {
                    "tooltip": "keep_appearance: a real image from ReadoutInvertImage whose appearance the words take "
                               "on. Leave empty to compare with the unguided image from the same seed."}),
                "guidance": ("READOUT_GUIDANCE", {"tooltip": "Targets to chain this one after (learned heads too)."}),
            },
        }

    RETURN_TYPES = ("READOUT_GUIDANCE",)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("The chained targets, for KSampler (Readout Guidance).",)
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Self-Guidance (Epstein et al. 2023): steer a prompt word's position, size, shape or appearance "
                   "through its cross-attention map; no head needed. Needs loss_branch cond.")

    def build(self, clip, prompt: str, words: str, edit: str, dx: float, dy: float, x: float, y: float,
              size_factor: float, weight: float, start_percent: float, end_percent: float, reference=None,
              guidance=None):
        if reference is not None and edit != "keep_appearance":
            raise ValueError(f"reference: only keep_appearance takes a real reference image; {edit} compares with "
                             "the unguided image (disconnect reference)")
        require_finite(dx=dx, dy=dy, x=x, y=y, size_factor=size_factor, weight=weight)
        tokens = word_token_positions(clip, prompt, words)
        target = Target(words.strip(), tokens, clip_family(clip), edit, weight, StepWindow(start_percent, end_percent),
                        offset=(dx, dy), point=(x, y), factor=size_factor, reference=reference)
        return (chained(guidance, target),)


NODE_CLASS_MAPPINGS = {"SelfGuidanceTarget": SelfGuidanceTarget}
NODE_DISPLAY_NAME_MAPPINGS = {"SelfGuidanceTarget": "Self-Guidance Target"}
