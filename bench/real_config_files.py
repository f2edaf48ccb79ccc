"""Files for the GPU check: a checkpoint of ComfyUI's real SD1.5 or SDXL UNet config with random weights (the text
encoders and VAE of the family's tiny checkpoint) and a random depth head of its decoder widths.

    python -m bench.real_config_files sd15|sdxl CHECKPOINT_NAME HEAD_NAME
"""
from __future__ import annotations

import os
import sys

import torch

from bench.guidance_cost import SD15_UNET, SDXL_UNET
from testbed import MODELS_DIR, comfyui_path, import_comfyui_in_process
from testbed.nodes import pack_module
from tiny.models import TINY_CHECKPOINTS
from tiny.parts import init_weights

UNET_PREFIX = "model.diffusion_model."


def write(model: str, ckpt: str, head: str) -> None:
    import_comfyui_in_process(comfyui_path())
    import comfy.supported_models as sm
    from safetensors.torch import load_file, save_file

    config_class, unet = (sm.SD15, SD15_UNET) if model == "sd15" else (sm.SDXL, SDXL_UNET)
    with torch.inference_mode(False):
        base = config_class(dict(unet)).get_model({})
        init_weights(base.diffusion_model, 0)
        tiny = load_file(os.path.join(MODELS_DIR, "checkpoints", TINY_CHECKPOINTS[model]))
        state = {k: v for k, v in tiny.items() if not k.startswith(UNET_PREFIX)}
        state.update({UNET_PREFIX + k: v.to(torch.float16).contiguous()
                      for k, v in base.diffusion_model.state_dict().items()})
        save_file(state, os.path.join(MODELS_DIR, "checkpoints", ckpt))
        heads = pack_module("readout.heads.architecture")
        dims = tuple(block[0].out_channels for block in base.diffusion_model.output_blocks)
        config = heads.HeadConfig(kind="depth", family=model, dims=dims, use_output_head=True)
        pack_module("readout.heads.files").save_head_safetensors(
            os.path.join(MODELS_DIR, "readout_heads", head), config, heads.ReadoutHead(config).state_dict())
    print(f"wrote {ckpt} and {head} into {MODELS_DIR}")


if __name__ == "__main__":
    write(*sys.argv[1:4])
