"""The model families the pack knows, and which one a model or CLIP is: the one list of families."""
from __future__ import annotations

from .base import Backbone, UnsupportedModel
from .dit import FluxBackbone, SD3Backbone
from .flux2 import Flux2Backbone
from .krea2 import Krea2Backbone
from .lumina import Lumina2Backbone
from .qwen_image import QwenImageBackbone
from .unet import SD15Backbone, SDXLBackbone

BACKBONES: tuple[Backbone, ...] = (SD15Backbone(), SDXLBackbone(), FluxBackbone(), Flux2Backbone(), SD3Backbone(),
                                   Lumina2Backbone(), QwenImageBackbone(), Krea2Backbone())
"""Tried in order by backbone_for and clip_backbone; a family whose configs subclass another's goes first."""
FAMILIES = {backbone.family: backbone for backbone in BACKBONES}


def _names(backbones: tuple[Backbone, ...] = BACKBONES) -> str:
    return ", ".join(backbone.label for backbone in backbones[:-1]) + f" or {backbones[-1].label}"


def backbone_for(model_patcher) -> Backbone:
    """The family of a ComfyUI MODEL, from its detected model config (never from file names)."""
    return backbone_for_config(model_patcher.model.model_config)


def backbone_for_config(config) -> Backbone:
    """The family of ComfyUI's detected model config (`model.model_config`)."""
    for backbone in BACKBONES:
        if backbone.matches(config):
            return backbone
    raise UnsupportedModel(f"readout heads read {_names()} models; this model is {type(config).__name__}: load an "
                           f"{_names()} checkpoint")


def clip_backbone(clip) -> Backbone:
    """The family whose prompts a CLIP encodes; a ValueError names anything else."""
    for backbone in BACKBONES:
        if backbone.matches_clip(clip):
            return backbone
    readable = tuple(backbone for backbone in BACKBONES if backbone.self_guidance)
    raise ValueError(f"clip: self-guidance needs an {_names(readable)} CLIP; got "
                     f"{type(getattr(clip, 'tokenizer', None)).__name__}")
