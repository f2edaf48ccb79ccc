"""How the test bed fits an example's prompt to the tiny models (testbed/tiny_names.py), without ComfyUI."""
from __future__ import annotations

import pytest

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


def qwen_image_prompt(clip_reader: str = "ExtractReadout") -> dict:
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "qwen_image_fp8_e4m3fn.safetensors",
                                                        "weight_dtype": "default"}},
            "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
                                                        "type": "qwen_image"}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cozy living room", "clip": ["2", 0]}},
            "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
            "9": {"class_type": clip_reader, "inputs": {"model": ["1", 0], "clip": ["2", 0], "seed": 0}}}


def test_qwen_image_text_comes_from_the_stand_in_node_at_its_width():
    """No tiny text encoder gives Qwen-Image's 3584-wide text: each CLIP Text Encode becomes the test bed's stand-in,
    Extract Readout's empty prompt comes from it too, and the 7B text encoder's loader is gone."""
    from testbed.tiny_names import EMPTY_PROMPT_STAND_IN, TEXT_STAND_IN, swap_model_names

    prompt = swap_model_names(qwen_image_prompt())
    assert "2" not in prompt
    assert prompt["1"]["inputs"]["unet_name"] == "readout_tiny_qwen_image.safetensors"
    assert prompt["4"] == {"class_type": TEXT_STAND_IN, "inputs": {"text": "a cozy living room", "text_width": 3584}}
    assert prompt["5"]["inputs"] == {"text": "", "text_width": 3584}
    assert prompt["9"]["inputs"] == {"model": ["1", 0], "seed": 0, "positive": [EMPTY_PROMPT_STAND_IN, 0]}
    assert prompt[EMPTY_PROMPT_STAND_IN]["inputs"] == {"text": "", "text_width": 3584}


def test_a_qwen_image_node_that_reads_the_text_encoder_itself_has_no_stand_in():
    from testbed.tiny_names import NoStandIn, swap_model_names

    with pytest.raises(NoStandIn, match="TrainReadoutHead reads the text encoder"):
        swap_model_names(qwen_image_prompt("TrainReadoutHead"))
