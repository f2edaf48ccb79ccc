"""A loaded readout head as the graph passes it around (READOUT_HEAD), managed by ComfyUI's model management."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .files import build_head, check_finite_weights, check_head_matches_model, load_head_file
from ..backbones.registry import backbone_for
from .architecture import FAMILY_LABELS, HeadConfig, ReadoutHead


@dataclass(frozen=True)
class HeadModel:
    """A readout head module, its config and file name, wrapped in a ModelPatcher so it follows the UNet's device."""

    name: str
    config: HeadConfig
    patcher: object

    @property
    def module(self) -> ReadoutHead:
        return self.patcher.model

    def describe(self) -> str:
        """One line for the node: kind, model family, layers."""
        role = "spatial map" if self.config.is_spatial else "feature map"
        return (f"{self.name}: {self.config.kind} head for {FAMILY_LABELS[self.config.family]} "
                f"({self.config.num_layers} decoder layers, {role} readout)")

    def check_model(self, model_patcher) -> None:
        """Raise HeadModelMismatch (naming this head) unless the model is the family and layout it reads."""
        backbone = backbone_for(model_patcher)
        check_head_matches_model(self.config, backbone.family,
                                 backbone.feature_dims(model_patcher.model.diffusion_model), self.name)

    def read(self, features: list[torch.Tensor], emb: torch.Tensor | None) -> torch.Tensor:
        """The head's readout (float32) of one evaluation's features, with any of its weights that ComfyUI left on
        another device (a partially loaded head) brought to the features' device for this call; with grad, each layer is
        checkpointed (the guided pass keeps one resized layer at a time, not all of them)."""
        device = features[0].device
        weights = dict(self.module.named_parameters())
        stray = {name: param.to(device) for name, param in weights.items() if param.device != device}
        options = {"checkpoint_layers": torch.is_grad_enabled()}
        if not stray:
            return self.module(features, emb, **options).float()
        return torch.func.functional_call(self.module, {**weights, **stray}, (features, emb), options).float()

    def device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.module.parameters())
        return param.device, param.dtype


def load_head_model(path: str, kind: str | None = None, reverse_timestep: bool | None = None) -> HeadModel:
    """Read a head file and hand the module to ComfyUI's model management."""
    config, state_dict = load_head_file(path, kind)
    check_finite_weights(state_dict, os.path.basename(path))
    if reverse_timestep is not None and reverse_timestep != config.reverse_timestep:
        config = HeadConfig.from_dict({**config.to_dict(), "reverse_timestep": reverse_timestep})
    return managed_head(os.path.basename(path), config, build_head(config, state_dict))


def managed_head(name: str, config: HeadConfig, module: ReadoutHead) -> HeadModel:
    """A head module in a ModelPatcher on ComfyUI's torch device (loaded with the UNet, offloaded with it)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return HeadModel(name, config, patcher)
