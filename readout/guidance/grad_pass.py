"""Making one UNet call differentiable inside ComfyUI, and undoing every change afterwards.

ComfyUI runs nodes under `torch.inference_mode()`: weights and inputs are inference tensors, which
autograd cannot save. For the guided call, inputs are cloned outside inference mode and each inference
parameter is swapped for a normal tensor sharing its memory (no copy). Parameters of other tensor types
(quantized weights) fall back to copies: an identity weight/bias function on `comfy.ops` layers (ComfyUI's
cast path then hands the layer a normal copy), a clone elsewhere.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_MISSING = object()


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def normal_copies(value: Any) -> Any:
    """Clone every tensor in nested lists/tuples/dicts outside inference mode (other values kept)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: normal_copies(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normal_copies(v) for v in value)
    return value


def _is_comfy_op(module: nn.Module) -> bool:
    return hasattr(type(module), "weight_function") and hasattr(module, "comfy_cast_weights")


def normal_alias(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor on the same memory as `tensor`; call outside inference mode."""
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


def _plain(param: nn.Parameter) -> bool:
    return type(param.data) is torch.Tensor


@contextmanager
def autograd_safe_weights(model: nn.Module) -> Iterator[None]:
    """Let autograd save this model's weights for one pass; every module is restored on exit."""
    saved_functions: list[tuple[nn.Module, str, Any]] = []
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for module in model.modules():
            inference = [(name, param) for name, param in module.named_parameters(recurse=False)
                         if param.is_inference()]
            if _is_comfy_op(module) and not all(_plain(param) for _, param in inference):
                for attr in ("weight_function", "bias_function"):
                    previous = module.__dict__.get(attr, _MISSING)
                    saved_functions.append((module, attr, previous))
                    setattr(module, attr, list(getattr(module, attr)) + [_identity])
                continue
            for name, param in inference:
                swapped.append((module, name, param))
                data = normal_alias(param) if _plain(param) else param.detach().clone()
                setattr(module, name, nn.Parameter(data, requires_grad=False))
        yield
    finally:
        for module, attr, previous in reversed(saved_functions):
            if previous is _MISSING:
                module.__dict__.pop(attr, None)
            else:
                setattr(module, attr, previous)
        for module, name, param in reversed(swapped):
            setattr(module, name, param)


def _snapshot(value: Any) -> Any:
    """A shallow copy of a dict argument (the UNet keeps writing its transformer_options after a layer ran)."""
    return dict(value) if isinstance(value, dict) else value


def _checkpointed(forward):
    """The layer's forward under checkpointing; the recomputation sees transformer_options as the forward saw them
    (block, indices: what attention replace patches such as PAG's or IPAdapter's look up) and inputs as they came
    (each call gets copies: Flux's blocks add into their inputs in place)."""
    def run(*args, **kwargs):
        recompute = (tuple(_snapshot(a) for a in args), {k: _snapshot(v) for k, v in kwargs.items()})
        calls = iter([(args, kwargs)])

        def body():
            call_args, call_kwargs = next(calls, recompute)
            return forward(*(_clone_tensors(a) for a in call_args),
                           **{k: _clone_tensors(v) for k, v in call_kwargs.items()})
        return checkpoint(body, use_reentrant=False, preserve_rng_state=False)
    return run


@contextmanager
def _wrapped_forwards(layers: list[nn.Module], wrap) -> Iterator[None]:
    """Each layer with weights runs `wrap(its forward)` inside the block; its own forward is back on exit."""
    patched = []
    try:
        for layer in layers:
            if "forward" in layer.__dict__ or not any(True for _ in layer.parameters()):
                continue
            layer.forward = wrap(layer.forward)
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


def saved_tensor_copies(layers: list[nn.Module]):
    """Each of these layers keeps copies of what it saves for the backward: blocks that add into tensors they saved
    (Flux's add their output into their input in place) stay differentiable without gradient checkpointing."""
    return _wrapped_forwards(layers, _saving_copies)


def _saving_copies(forward):
    def run(*args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(torch.Tensor.clone, _identity):
            return forward(*args, **kwargs)
    return run


@contextmanager
def differentiable_kernels() -> Iterator[None]:
    """ComfyUI's own switch to its autograd-capable kernels (model_management.in_training, ComfyUI 0.33+: e.g. Flux's
    rotary embedding, whose fused kernel has no backward), on for the grad pass only."""
    import comfy.model_management as mm

    previous = getattr(mm, "in_training", None)
    if previous is None:
        yield
        return
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = previous


def gradient_checkpointing(layers: list[nn.Module]):
    """Recompute each of these layers (the backbone's blocks) in the backward instead of keeping its activations."""
    return _wrapped_forwards(layers, _checkpointed)


def skip_clone_patch(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    """`input_block_patch_after_skip`: ControlNet adds into saved skips in place; give the graph its own copy."""
    return h.clone()


BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "middle_block_patch", "output_block_patch")
"""UNet patches that run between blocks (outside checkpointed layers), e.g. FreeU's output_block_patch."""


def _clone_tensors(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _autograd_safe_patch(patch):
    """A block patch that gets its own copies of the tensors and keeps copies of what it saves for the backward:
    patches that edit tensors in place (FreeU_V2 scales half the channels of h in place) then stay differentiable."""
    def run(*args):
        with torch.autograd.graph.saved_tensors_hooks(torch.Tensor.clone, _identity):
            return patch(*(_clone_tensors(a) for a in args))
    return run


def grad_pass_options(transformer_options: dict) -> dict:
    """A copy of transformer_options for the grad pass only: each skip tensor cloned (ControlNet adds into it in
    place) and every block patch made autograd-safe."""
    options = dict(transformer_options)
    patches = dict(options.get("patches", {}))
    for key in BLOCK_PATCHES:
        if key in patches:
            patches[key] = [_autograd_safe_patch(patch) for patch in patches[key]]
    patches["input_block_patch_after_skip"] = list(patches.get("input_block_patch_after_skip", [])) + [skip_clone_patch]
    options["patches"] = patches
    return options
