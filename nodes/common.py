"""Inputs shared by the nodes that sample with readout guidance."""
from __future__ import annotations

from ..readout.guidance.patch import COMPUTE_DTYPES, LOSS_BRANCHES, RULES, GuidanceOptions

CATEGORY = "readout_guidance"


def guidance_option_inputs() -> dict:
    """The options of the guided pass; defaults keep a guided step near 2x an unguided one."""
    return {
        "loss_branch": (list(LOSS_BRANCHES), {
            "default": "cond",
            "tooltip": "Which CFG branch's features feed the readout loss. cond (default): the prompt's half; the "
                       "other half runs without autograd (SD1.5 512 px: about 1.9x the time of an unguided step). "
                       "both: the official code's sum over the cond and uncond halves (about 3x, more memory). "
                       "uncond: the empty/negative prompt's half, as the heads were trained."}),
        "gradient_checkpointing": ("BOOLEAN", {
            "default": True,
            "tooltip": "Recompute UNet activations during the backward pass instead of storing them: much "
                       "less memory, somewhat slower."}),
        "compute_dtype": (list(COMPUTE_DTYPES), {
            "default": "auto",
            "tooltip": "Autocast dtype of the guided UNet pass and the heads. auto keeps the model's own dtype."}),
        "rule": (list(RULES), {
            "default": "fast",
            "tooltip": "fast (default): our rule, the gradient of the sampler's own UNet call corrects its "
                       "prediction (about 2x faster per guided step). official: the official code's step, a fresh "
                       "Adam step on the latent from the loss over both CFG halves (loss_branch is ignored), then "
                       "the sampler's step from the moved latent; needs sampler ddim, euler or euler_ancestral. "
                       "README, Fidelity, lists every difference."}),
    }


def guidance_options(loss_branch: str, gradient_checkpointing: bool, compute_dtype: str,
                     rule: str = "fast") -> GuidanceOptions:
    return GuidanceOptions(loss_branch, gradient_checkpointing, compute_dtype, rule)
