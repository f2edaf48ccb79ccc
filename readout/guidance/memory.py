"""The guided pass and the GPU's memory: what it asks ComfyUI to keep free, and what to lower when it runs out."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

GUIDANCE_OUT_OF_MEMORY = (
    "readout guidance ran out of GPU memory in its guided pass (latent {height}x{width}, batch {batch}, "
    "loss_branch {branch}, gradient_checkpointing {checkpointing}): lower the resolution or the batch size, "
    "{branch_fix}{checkpointing_fix}narrow the guidance window (a target's start_percent / end_percent), or launch "
    "ComfyUI with --reserve-vram 2 (or --lowvram). The model is left unchanged")


class GuidanceOutOfMemory(torch.OutOfMemoryError):
    """Out of memory in the guided pass, with what to lower (still an OutOfMemoryError: ComfyUI frees its models)."""

    __module__ = "readout_guidance"


@contextmanager
def out_of_memory_explained(x: torch.Tensor, options) -> Iterator[None]:
    """Turn an out-of-memory error inside the guided pass into one that names what to lower."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        if isinstance(error, GuidanceOutOfMemory):
            raise
        raise GuidanceOutOfMemory(GUIDANCE_OUT_OF_MEMORY.format(
            height=x.shape[-2], width=x.shape[-1], batch=x.shape[0], branch=options.loss_branch,
            checkpointing="on" if options.gradient_checkpointing else "off",
            branch_fix="set loss_branch to cond, " if options.loss_branch == "both" else "",
            checkpointing_fix="" if options.gradient_checkpointing else "turn gradient_checkpointing on, ",
        )) from error


FLOAT32_BYTES = 4
RECOMPUTED_LAYER_CHANNELS = 6
"""Per projection channel, the activations one bottleneck block's recompute holds at the readout size (its input
width comes on top); with their gradients, twice that. Fitted to `python -m bench.head_memory`: SD1.5 512 px and
SDXL 1024 px depth heads, measured 129 and 492 MiB added at the peak, estimated 124 and 496."""
UNET_BACKWARD_FACTOR = {True: 2, False: 8}
"""The UNet's backward over its own forward estimate, with and without gradient checkpointing (checkpointed: the
saved block inputs and one block recomputed; without: every block's activations kept)."""


def head_pass_bytes(config, batch: int, height: int, width: int) -> int:
    """What one head needs for the backward on `batch` readouts of height x width with its layers checkpointed (as the
    guided pass runs it): the mixed map and its gradient throughout, and at the peak one layer (or the output head)
    recomputed with its gradients."""
    from ..heads.architecture import OUTPUT_HEAD_HIDDEN

    layer = 2 * (max(config.dims) + RECOMPUTED_LAYER_CHANNELS * config.projection_dim)
    output_head = 2 * (2 * sum(OUTPUT_HEAD_HIDDEN) + config.projection_dim) if config.use_output_head else 0
    per_pixel = 2 * config.projection_dim + max(layer, output_head)
    return FLOAT32_BYTES * batch * height * width * per_pixel


def weight_copy_bytes(layers: list, checkpointing: bool) -> int:
    """The weights' private copies the backward keeps where ComfyUI casts them (dynamic VRAM, offloaded layers):
    the largest checkpointed block's with gradient checkpointing, every block's without."""
    sizes = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers] or [0]
    return max(sizes) if checkpointing else sum(sizes)


def guided_pass_bytes(base_model, heads: list, noise_shape, loss_chunks: int, checkpointing: bool,
                      layers: list) -> int:
    """Memory the guided pass needs beyond ComfyUI's own estimate for the sampler's calls: the heads' and the UNet's
    backward on the loss chunks, and the copies of the checkpointed `layers`' weights (an estimate by shapes; see
    docs/compatibility.md, Running on a GPU)."""
    batch, height, width = noise_shape[0] * loss_chunks, noise_shape[-2], noise_shape[-1]
    heads_bytes = sum(head_pass_bytes(head.config, batch, height, width) for head in heads)
    unet = base_model.memory_required([batch] + list(noise_shape[1:]))
    return int(heads_bytes + UNET_BACKWARD_FACTOR[checkpointing] * unet + weight_copy_bytes(layers, checkpointing))


@contextmanager
def extra_memory_declared(base_model, extra_bytes: int) -> Iterator[None]:
    """ComfyUI's estimate of the model's sampling memory raised by `extra_bytes` (what it frees or offloads for)."""
    own = base_model.__dict__.get("memory_required")
    plain = base_model.memory_required

    def memory_required(input_shape, *args, **kwargs):
        return plain(input_shape, *args, **kwargs) + extra_bytes

    base_model.memory_required = memory_required
    try:
        yield
    finally:
        if own is None:
            del base_model.memory_required
        else:
            base_model.memory_required = own
