"""The pack's V3 node API (one pinned `comfy_api` version), its custom types, and the inputs and checks nodes share."""
from __future__ import annotations

import math

import torch
from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401  (the pinned API every node module imports from here)

from ..readout.backbones.base import LATENT_SCALE
from ..readout.guidance.patch import LOSS_BRANCHES, MAX_RECURRENCE, RULES, GuidanceOptions
from ..readout.guidance.precision import COMPUTE_DTYPES
from ..readout.guidance.recurrence import AUTO
from ..readout.guidance.run import OFFICIAL_WEIGHT
from ..readout.targets.base import StepWindow
from ..readout.train.progress import show_text

CATEGORY = "readout_guidance"

ReadoutHeadType = io.Custom("READOUT_HEAD")
ReadoutGuidanceType = io.Custom("READOUT_GUIDANCE")
ReadoutType = io.Custom("READOUT")
ReadoutReferenceType = io.Custom("READOUT_REFERENCE")


def weight_input(name: str = "weight") -> io.Float.Input:
    """Guidance strength w, defaulting to the official code's strength."""
    return io.Float.Input(
        name, default=OFFICIAL_WEIGHT, min=0.0, max=10.0, step=0.01,
        tooltip="Guidance strength w (latent moved by w per unit of sigma, along the normalized gradient). "
                f"{OFFICIAL_WEIGHT} matches the official code's strength; 0 turns this target off.")


def step_window_inputs() -> list[io.Float.Input]:
    """start_percent / end_percent: the part of the schedule a target acts in (the paper: the first half)."""
    return [
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the schedule where guidance starts (0 = first step)."),
        io.Float.Input("end_percent", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the schedule where guidance stops; the paper guides the first half."),
    ]


class StepWindowCheck:
    """Mixed into a target node (before `io.ComfyNode`): checks its step window (start_percent / end_percent)."""

    @classmethod
    def validate_inputs(cls, start_percent: float | None = None, end_percent: float | None = None) -> bool | str:
        """Refuse a window outside 0..1 or ending before it starts when the prompt is queued, before anything runs
        (a linked value is None here and is checked when the node runs)."""
        if start_percent is None or end_percent is None:
            return True
        try:
            StepWindow(start_percent, end_percent)
        except ValueError as error:
            return f"{error}; set start_percent at most end_percent"
        return True


def chain_input(tooltip: str = "Targets to chain this one after.") -> io.Input:
    """The optional incoming READOUT_GUIDANCE a target node appends to."""
    return ReadoutGuidanceType.Input("guidance", optional=True, tooltip=tooltip)


def guidance_output(tooltip: str) -> io.Output:
    return ReadoutGuidanceType.Output(display_name="guidance", tooltip=tooltip)


def chained(previous, *targets) -> tuple:
    """Append targets to an incoming READOUT_GUIDANCE (None starts a new one)."""
    return tuple(previous or ()) + targets


def guidance_option_inputs() -> list[io.Input]:
    """The options of the guided pass (optional inputs); defaults keep a guided step near 2x an unguided one."""
    return [
        io.Combo.Input("loss_branch", options=list(LOSS_BRANCHES), default="cond", optional=True, tooltip=(
            "Which CFG branch's features feed the readout loss. cond (default): the prompt's half; the "
            "other half runs without autograd (SD1.5 512 px: about 1.9x the time of an unguided step). "
            "both: the official code's sum over the cond and uncond halves (about 3x, more memory). "
            "uncond: the empty/negative prompt's half, as the heads were trained. At cfg 1, where ComfyUI "
            "skips the negative half, uncond and both still run it for the loss.")),
        io.Boolean.Input("gradient_checkpointing", default=True, optional=True, tooltip=(
            "Recompute UNet activations during the backward pass instead of storing them: much "
            "less memory, somewhat slower.")),
        io.Combo.Input("compute_dtype", options=list(COMPUTE_DTYPES), default="auto", optional=True, tooltip=(
            "Autocast dtype of the guided UNet pass and the heads. auto keeps the model's own dtype. bfloat16 "
            "needs an NVIDIA Ampere (RTX 30xx) or newer GPU. float32 raises a float16/bfloat16 model's guided pass "
            "to float32 on CUDA only; elsewhere it needs a float32 model (--fp32-unet) and is refused otherwise.")),
        io.Combo.Input("rule", options=list(RULES), default="fast", optional=True, tooltip=(
            "fast (default): our rule, the gradient of the sampler's own UNet call corrects its "
            "prediction (about 2x faster per guided step). official: the official code's step, a fresh "
            "Adam step on the latent from the loss over both CFG halves (loss_branch is ignored), then "
            "the sampler's step from the moved latent; needs sampler ddim, euler or euler_ancestral. "
            "docs/measurements.md, Fidelity, lists every difference.")),
        io.Int.Input("recurrence", default=AUTO, min=AUTO, max=MAX_RECURRENCE, optional=True, tooltip=(
            "Guided passes per guided step (rule fast): the step is taken, re-noised back to its sigma and guided "
            "again, as Universal Guidance's recurrence does. 0 (auto, default): 2 passes in runs of 8 steps or "
            "fewer (distilled and Turbo models; 1 on Z-Image), 1 in longer runs and in runs with a reference branch "
            "(drag, appearance, identity, relative Self-Guidance edits). On the learned SD1.5 and Flux test models "
            "at 4-8 steps a second pass raised the spatial effect by a third to double; on the learned Z-Image it "
            "lowered it, and a drag moved no further. Each pass costs one more guided model evaluation. "
            "docs/families.md, Few steps, has the measurements.")),
    ]


def guidance_options(loss_branch: str = "cond", gradient_checkpointing: bool = True, compute_dtype: str = "auto",
                     rule: str = "fast", recurrence: int = AUTO) -> GuidanceOptions:
    return GuidanceOptions(loss_branch, gradient_checkpointing, compute_dtype, rule, recurrence)


def seed_input(tooltip: str = "Seed of the noise added at that timestep.", control: bool = False) -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=control or None,
                        tooltip=tooltip)


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
    if report[1]:
        show_text(report_text(report))
