"""Inputs shared by the nodes that sample with readout guidance."""
from __future__ import annotations

from ..readout.patch import COMPUTE_DTYPES, LOSS_BRANCHES, GuidanceOptions

CATEGORY = "readout_guidance"


def guidance_option_inputs() -> dict:
    """The options of the guided pass, with the official code's behaviour as defaults."""
    return {
        "loss_branch": (list(LOSS_BRANCHES), {
            "default": "both",
            "tooltip": "Which CFG branch's features feed the readout loss: both (the official code sums the "
                       "cond and uncond halves), cond only, or uncond only (the empty/negative prompt, as the "
                       "heads were trained). cond or uncond is about a third faster per guided step: the other "
                       "half then runs without autograd."}),
        "gradient_checkpointing": ("BOOLEAN", {
            "default": True,
            "tooltip": "Recompute UNet activations during the backward pass instead of storing them: much "
                       "less memory, somewhat slower."}),
        "compute_dtype": (list(COMPUTE_DTYPES), {
            "default": "auto",
            "tooltip": "Autocast dtype of the guided UNet pass and the heads. auto keeps the model's own dtype."}),
    }


def guidance_options(loss_branch: str, gradient_checkpointing: bool, compute_dtype: str) -> GuidanceOptions:
    return GuidanceOptions(loss_branch, gradient_checkpointing, compute_dtype)
