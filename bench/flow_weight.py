"""Print the fast rule's weight that matches the official guidance strength on each flow-matching family.

The official code takes 2e-2 steps on x_t over the first half of 100 steps; a flow latent is x_t itself, so the
weight is the sum of those steps over the sigma the first half descends, on the family's own model sampling (its
shift, as ComfyUI's model config gives it). Families that ComfyUI lacks are left out.
Run: `.venv/bin/python -m bench.flow_weight` (the 2026 families with COMFYUI_PATH set to ComfyUI 0.33).
"""
from __future__ import annotations

from testbed import comfyui_path, import_comfyui_in_process

OFFICIAL_STEP, STEPS = 2e-2, 100
FAMILIES = (("SD3", "SD3", "FLOW"), ("Flux.1", "Flux", "FLUX"), ("Z-Image", "ZImage", "FLOW"),
            ("Lumina 2", "Lumina2", "FLOW"), ("Qwen-Image", "QwenImage", "FLUX"), ("Flux.2", "Flux2", "FLUX"),
            ("Krea 2", "Krea2", "FLUX"))
"""(label, ComfyUI model config class, the model type comfy/model_base.py samples it with)."""
CONFIG_SIZES = {"hidden_size": 6144}
"""What a model config needs to be built without a state dict (Flux.2's memory estimate reads the width)."""


def matching_weight(sampling) -> tuple[float, float]:
    """The sigma the first half of a 100-step simple schedule ends at, and the weight that matches the official."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)
    return float(sigmas[STEPS // 2]), OFFICIAL_STEP * (STEPS // 2) / float(sigmas[0] - sigmas[STEPS // 2])


def main() -> None:
    import_comfyui_in_process(comfyui_path())
    import comfy.model_base as model_base
    import comfy.supported_models as sm

    from readout.backbones.dit import FLOW_WEIGHT

    for label, name, kind in FAMILIES:
        config = getattr(sm, name, None)
        if config is None:
            continue
        sampling = model_base.model_sampling(config(dict(CONFIG_SIZES)), model_base.ModelType[kind])
        half, weight = matching_weight(sampling)
        print(f"{label} ({name}, {kind} shift {sampling.shift:g}): sigma 1 -> {half:.3f} over the "
              f"first half; matching weight {weight:.2f} (FLOW_WEIGHT {FLOW_WEIGHT}, ratio {weight / FLOW_WEIGHT:.2f})")


if __name__ == "__main__":
    main()
