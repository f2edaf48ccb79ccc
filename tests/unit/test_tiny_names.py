"""How the test bed fits an example's prompt to the tiny models (testbed/tiny_names.py), without ComfyUI."""
from __future__ import annotations

from testbed.tiny_names import comfyui_lacks_family


def dit_prompt(unet_name: str) -> dict:
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
            "2": {"class_type": "LoadReadoutHead", "inputs": {"head_name": "my_head_depth.safetensors"}}}


def test_a_comfyui_older_than_the_2026_families_detection_is_named_for_their_examples_only():
    """make demo skips, with this reason, an example the ComfyUI it runs on cannot size the tiny model of."""
    reason = comfyui_lacks_family(dit_prompt("z_image_turbo_bf16.safetensors"), (0, 3, 75))
    assert reason == "the tiny lumina2 model needs ComfyUI 0.33.0 or newer, this one is 0.3.75"
    assert comfyui_lacks_family(dit_prompt("z_image_turbo_bf16.safetensors"), (0, 33, 0)) is None
    assert comfyui_lacks_family(dit_prompt("flux1-dev.safetensors"), (0, 3, 75)) is None
    checkpoint = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}}}
    assert comfyui_lacks_family(checkpoint, (0, 3, 75)) is None
