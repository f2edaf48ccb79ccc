"""What the benchmark needs from the test bed: ComfyUI in process, node calls, a random head for any UNet."""
from __future__ import annotations

import torch

from testbed import comfyui_path, import_comfyui_in_process


def bootstrap(device: str) -> None:
    """Import ComfyUI with this pack; on the CPU unless device is cuda."""
    import sys

    sys.path.insert(0, comfyui_path())
    import comfy.cli_args

    comfy.cli_args.args.cpu = device != "cuda"
    import_comfyui_in_process(comfyui_path())


def call_node(name: str, **inputs):
    """A node call as ComfyUI's executor makes it (under inference mode); dict and V3 results give their `result`."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[name]
    with torch.inference_mode():
        out = getattr(cls(), cls.FUNCTION)(**inputs)
    out = out["result"] if isinstance(out, dict) else out
    return getattr(out, "result", out)


def random_head(model):
    """A spatial head with random weights for this model's decoder, managed like a loaded one."""
    import importlib

    from testbed import pack_dir_in

    base = pack_dir_in(comfyui_path()).replace(".", "_x_")
    heads = importlib.import_module(f"{base}.readout.heads.architecture")
    backbone = importlib.import_module(f"{base}.readout.backbones.registry").backbone_for(model)
    head_model = importlib.import_module(f"{base}.readout.heads.head_model")
    checkpoints = importlib.import_module(f"{base}.readout.heads.files")
    config = heads.HeadConfig(kind="depth", family=backbone.family,
                              dims=tuple(backbone.feature_dims(model.model.diffusion_model)), use_output_head=True,
                              emb_dim=backbone.embedding_dim(model.model.diffusion_model))
    with torch.inference_mode(False):
        state = heads.ReadoutHead(config).state_dict()
    return head_model.managed_head("random_head", config, checkpoints.build_head(config, state))
