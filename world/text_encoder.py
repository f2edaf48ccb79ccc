"""A deterministic CLIP-L text encoder whose tokens stay their own word: every residual branch is zero, so each
token's output is the final LayerNorm of its word embedding plus its position embedding."""
from __future__ import annotations

import json
import os

import torch

TEXT_SEED = 77
POSITION_SCALE = 0.5
"""Position embeddings at half the word embeddings' spread: the UNet can tell the first object's words from the second's."""


def build_text_encoder(seed: int = TEXT_SEED) -> torch.nn.Module:
    """ComfyUI's SD1 CLIP-L architecture with random word and position embeddings and identity layers."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    config_path = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    clip = comfy.clip_model.CLIPTextModel(config, torch.float32, "cpu", comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(clip.named_parameters(), key=lambda item: item[0]):
            if "layer_norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()
        embeddings = clip.text_model.embeddings
        embeddings.token_embedding.weight.copy_(torch.randn(embeddings.token_embedding.weight.shape, generator=gen))
        embeddings.position_embedding.weight.copy_(
            POSITION_SCALE * torch.randn(embeddings.position_embedding.weight.shape, generator=gen))
    return clip


def text_encoder_state_dict(seed: int = TEXT_SEED) -> dict[str, torch.Tensor]:
    """The encoder in the SD1.5 single-file layout (`cond_stage_model.transformer.`), fp16."""
    sd = {f"cond_stage_model.transformer.{k}": v.to(torch.float16).contiguous()
          for k, v in build_text_encoder(seed).state_dict().items()}
    sd.pop("cond_stage_model.transformer.text_projection.weight", None)
    return sd
