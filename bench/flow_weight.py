"""Print the fast rule's weight that matches the official guidance strength on the flow-matching families.

The official code takes 2e-2 steps on x_t over the first half of 100 steps; a flow latent is x_t itself, so the
weight is the sum of those steps over the sigma the first half descends. Run: `.venv/bin/python -m bench.flow_weight`.
"""
from __future__ import annotations



from testbed import comfyui_path, import_comfyui_in_process

OFFICIAL_STEP, STEPS = 2e-2, 100


def main() -> None:
    import_comfyui_in_process(comfyui_path())
    import comfy.model_sampling as ms
    import comfy.samplers
    import comfy.supported_models as sm

    from readout.backbones.dit import FLOW_WEIGHT

    for name, config in (("SD3 (shift 3)", sm.SD3), ("Flux dev (shift 1.15)", sm.Flux)):
        settings = config({}).sampling_settings if config is sm.SD3 else {"shift": 1.15}
        sampling_class = ms.ModelSamplingDiscreteFlow if config is sm.SD3 else ms.ModelSamplingFlux

        class Sampling(sampling_class, ms.CONST):
            pass

        sampling = Sampling(type("Config", (), {"sampling_settings": {**settings, "multiplier": 1000}})())
        sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)
        descended = float(sigmas[0] - sigmas[STEPS // 2])
        weight = OFFICIAL_STEP * (STEPS // 2) / descended
        print(f"{name}: sigma {float(sigmas[0]):.3f} -> {float(sigmas[STEPS // 2]):.3f} over the first half; "
              f"matching weight {weight:.2f} (FLOW_WEIGHT {FLOW_WEIGHT}, ratio {weight / FLOW_WEIGHT:.2f})")


if __name__ == "__main__":
    main()
