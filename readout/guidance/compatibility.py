"""Model patches readout guidance cannot run next to: refused before sampling, naming both nodes and the way out."""
from __future__ import annotations

TORCH_COMPILE_OPTION = "torch_compile_kwargs"
"""The model_options key TorchCompileModel leaves on the model it compiles (comfy_api.torch_helpers)."""


def check_compatible(model_options: dict) -> None:
    """Raise a ValueError when the model carries a patch that cannot run inside the guided UNet call."""
    if TORCH_COMPILE_OPTION in model_options:
        raise ValueError(
            "model: TorchCompileModel cannot be combined with readout guidance (KSampler (Readout Guidance) / "
            "Apply Readout Guidance): the guided UNet call runs with autograd, feature hooks and per-call weight "
            "aliases that a compiled UNet would recompile for at every step. Remove TorchCompileModel from this "
            "model's chain, or sample this model without readout guidance")
