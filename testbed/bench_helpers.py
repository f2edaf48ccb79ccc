"""What the benchmarks need from the test bed: ComfyUI in process on the chosen device, a random head for any model."""
from __future__ import annotations

import torch

from testbed import add_comfyui_to_sys_path, comfyui_path, import_comfyui_in_process
from testbed.nodes import pack_module


def bootstrap(device: str) -> None:
    """Import ComfyUI with this pack; on the CPU unless device is cuda."""
    add_comfyui_to_sys_path(comfyui_path())
    import comfy.cli_args

    comfy.cli_args.args.cpu = device != "cuda"
    import_comfyui_in_process(comfyui_path())


def random_head(model):
    """A spatial head with random weights for this model's decoder, managed like a loaded one."""
    heads = pack_module("readout.heads.architecture")
    backbone = pack_module("readout.backbones.registry").backbone_for(model)
    head_model = pack_module("readout.heads.head_model")
    checkpoints = pack_module("readout.heads.files")
    config = heads.HeadConfig(kind="depth", family=backbone.family,
                              dims=tuple(backbone.feature_dims(model.model.diffusion_model)), use_output_head=True,
                              emb_dim=backbone.embedding_dim(model.model.diffusion_model))
    with torch.inference_mode(False):
        state = heads.ReadoutHead(config).state_dict()
    return head_model.managed_head("random_head", config, checkpoints.build_head(config, state))
