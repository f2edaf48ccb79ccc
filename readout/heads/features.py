"""Which UNet decoder ResBlocks feed a readout head, and a context manager that captures their features."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from ..errors import ReadoutError


class UnsupportedModel(ReadoutError):
    """The model is not an SD1.5- or SDXL-family UNet."""


def model_family(model_patcher) -> str:
    """'sd15' or 'sdxl', from ComfyUI's detected model config (never from file names)."""
    import comfy.supported_models as sm

    config = model_patcher.model.model_config
    if isinstance(config, sm.SDXL):
        return "sdxl"
    if isinstance(config, sm.SD15):
        return "sd15"
    raise UnsupportedModel(
        f"readout heads read SD1.5 or SDXL UNets; this model is {type(config).__name__}: "
        "load an SD1.5 or SDXL checkpoint"
    )


def decoder_resblocks(diffusion_model: nn.Module) -> list[nn.Module]:
    """The ResBlock that opens each decoder (output) block, in order: the official readout layers."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    blocks = [block[0] for block in diffusion_model.output_blocks]
    if not blocks or not all(isinstance(b, ResBlock) for b in blocks):
        raise UnsupportedModel("the model's decoder is not made of ResBlocks: readout heads need an SD1.5/SDXL UNet")
    return blocks


def decoder_dims(model_patcher) -> list[int]:
    """Channels of each readout layer of this model, as the head config lists them."""
    return [block.out_channels for block in decoder_resblocks(model_patcher.model.diffusion_model)]


def timestep_embedding(diffusion_model: nn.Module, timesteps: torch.Tensor) -> torch.Tensor:
    """The UNet's own 1280-d timestep embedding E(t) (without SDXL's added size/text embedding)."""
    from comfy.ldm.modules.diffusionmodules.util import timestep_embedding as sinusoid

    weight = diffusion_model.time_embed[0].weight
    dtype = weight.dtype if weight.dtype.is_floating_point and weight.dtype.itemsize >= 2 else torch.float32
    return diffusion_model.time_embed(sinusoid(timesteps, diffusion_model.model_channels).to(dtype))


@dataclass
class DecoderFeatures:
    """The residual-branch outputs of the decoder ResBlocks of the last UNet call, by layer."""

    layers: list[torch.Tensor | None] = field(default_factory=list)

    def complete(self) -> list[torch.Tensor]:
        missing = [i for i, f in enumerate(self.layers) if f is None]
        if missing:
            raise RuntimeError(f"decoder layers {missing} produced no features in this UNet call")
        return list(self.layers)

    def clear(self) -> None:
        self.layers = [None] * len(self.layers)


@contextmanager
def capture_decoder_features(diffusion_model: nn.Module) -> Iterator[DecoderFeatures]:
    """Hook every decoder ResBlock's residual branch (before the skip add) while the block is open."""
    blocks = decoder_resblocks(diffusion_model)
    store = DecoderFeatures([None] * len(blocks))

    def hook_for(index: int):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            store.layers[index] = output
        return hook

    handles = [block.out_layers.register_forward_hook(hook_for(i)) for i, block in enumerate(blocks)]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def head_embedding(diffusion_model: nn.Module, config, timesteps: torch.Tensor) -> torch.Tensor | None:
    """The timestep embedding a head is fed: E(t), or E(num_timesteps - t) for heads trained that way."""
    if not config.use_emb or config.bottleneck_sequential:
        return None
    t = config.num_timesteps - timesteps if config.reverse_timestep else timesteps
    return timestep_embedding(diffusion_model, t.float())
