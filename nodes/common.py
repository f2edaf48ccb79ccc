"""Inputs shared by the nodes that sample with readout guidance, and the input checks all nodes share."""
from __future__ import annotations

import math

import torch

from ..readout.backbones.base import LATENT_SCALE
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
                       "uncond: the empty/negative prompt's half, as the heads were trained. At cfg 1, where ComfyUI "
                       "skips the negative half, uncond and both still run it for the loss."}),
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


def require_finite(**numbers: float) -> None:
    """Refuse NaN numbers, which ComfyUI's min/max check lets through from the API (NaN compares false)."""
    for name, value in numbers.items():
        if not math.isfinite(value):
            raise ValueError(f"{name}: got {value}, not a number; send a finite value in the input's range")


def require_finite_map(tensor: torch.Tensor | None, name: str) -> None:
    """Refuse a map with NaN or infinite values: its loss would be NaN and every guided step skipped."""
    if tensor is not None and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name}: {bad} of its {tensor.numel()} values are NaN or infinite; connect a finite map "
                         "(an image or mask in 0..1, or a readout of a sound head)")


def require_vae_size(image: torch.Tensor, name: str, node: str) -> None:
    """Refuse an image smaller than one latent cell on a side: the VAE would fail deep inside its convolutions."""
    height, width = image.shape[1], image.shape[2]
    if min(height, width) < LATENT_SCALE:
        raise ValueError(f"{name}: it is {width}x{height} px; the VAE encodes {LATENT_SCALE}x{LATENT_SCALE} px "
                         f"cells, so {node} needs at least {LATENT_SCALE} px on each side (sizes are cut to multiples "
                         f"of {LATENT_SCALE}): scale it up (Upscale Image) first")


def report_text(report: tuple[list[str], list[str]]) -> str:
    """What guidance did, one line per target, then a WARNING line where it could not act."""
    lines, warnings = report
    return "\n".join([*(f"WARNING: {w}" for w in warnings), *lines])


def show_on_running_node(report: tuple[list[str], list[str]]) -> None:
    """Show a run's guidance warnings on the node being executed (the sampler of a patched MODEL), where the
    server can show text on a node; they are logged in any case."""
    import server
    from comfy_execution.utils import get_executing_context

    instance = getattr(server.PromptServer, "instance", None)
    context = get_executing_context()
    if report[1] and context is not None and hasattr(instance, "send_progress_text"):
        instance.send_progress_text(report_text(report), context.node_id)
