"""Making one UNet call differentiable inside ComfyUI, and undoing every change afterwards.

ComfyUI runs nodes under `torch.inference_mode()`: weights and inputs are inference tensors, which
autograd cannot save. For the guided call, inputs are cloned outside inference mode. A layer that uses its
parameters as they are gets each inference parameter swapped for a normal tensor sharing its memory (no copy,
the parameter's attributes kept). A layer whose weights come through ComfyUI's cast (offloaded or partially loaded
weights, dynamic VRAM, quantized or LoRA-on-the-fly weights) gets a private copy of what the cast returns: that
may be a cache made under inference mode, or a view of a cast buffer that later layers overwrite before the
backward reads it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ReadoutError

_MISSING = object()


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _copy_if_differentiable(tensor: torch.Tensor) -> torch.Tensor:
    """A saved tensor that autograd tracks, copied: those are the ones a block may later add into in place. Frozen
    weights (and their cast copies) are never written in place and are kept as they are, not duplicated."""
    return tensor.clone() if tensor.requires_grad else tensor


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


def _casts_weights(module: nn.Module, params: list[tuple[str, nn.Parameter]]) -> bool:
    """Whether this ComfyUI layer gets its weights through ComfyUI's cast in this call."""
    return _is_comfy_op(module) and bool(
        module.comfy_cast_weights or module.weight_function or module.bias_function
        or not all(_plain(param) for _, param in params))


def normal_parameter(param: nn.Parameter) -> nn.Parameter:
    """A non-inference parameter on the same memory (a copy for tensor subclasses), with the original's attributes
    (ComfyUI keeps some on weights, e.g. `_model_dtype` under dynamic VRAM)."""
    data = normal_alias(param) if _plain(param) else param.detach().clone()
    alias = nn.Parameter(data, requires_grad=False)
    alias.__dict__.update(param.__dict__)
    return alias


def _private(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.clone()


@contextmanager
def casts_for_backward() -> Iterator[None]:
    """ComfyUI's weight cast, run as ComfyUI runs it (under inference mode: its cast buffers and caches are
    inference tensors), each weight handed to the layer as a private normal copy: what the cast returns may be a
    cache, or a view of a cast buffer that a later layer overwrites before the backward reads it."""
    import comfy.ops

    cast = comfy.ops.cast_bias_weight

    def cast_for_backward(s, *args, **kwargs):
        with torch.inference_mode():
            weight, bias, *rest = cast(s, *args, **kwargs)
        return (_private(weight), _private(bias), *rest)

    comfy.ops.cast_bias_weight = cast_for_backward
    try:
        yield
    finally:
        comfy.ops.cast_bias_weight = cast


@contextmanager
def autograd_safe_weights(model: nn.Module) -> Iterator[None]:
    """Let autograd save this model's weights for one pass; every module is restored on exit. Layers that use their
    parameters get non-inference aliases; layers whose weights ComfyUI casts (or must, for tensor subclasses) get
    private copies from `casts_for_backward`."""
    saved_functions: list[tuple[nn.Module, str, Any]] = []
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for module in model.modules():
            params = list(module.named_parameters(recurse=False))
            if _casts_weights(module, params):
                if not (module.comfy_cast_weights or module.weight_function or module.bias_function):
                    for attr in ("weight_function", "bias_function"):
                        previous = module.__dict__.get(attr, _MISSING)
                        saved_functions.append((module, attr, previous))
                        setattr(module, attr, list(getattr(module, attr)) + [_identity])
                continue
            for name, param in params:
                if param.is_inference():
                    swapped.append((module, name, param))
                    setattr(module, name, normal_parameter(param))
        with casts_for_backward():
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
    """Each of these layers keeps copies of the activations it saves for the backward: blocks that add into tensors
    they saved (Flux's add their output into their input in place) stay differentiable without gradient
    checkpointing; weights are not copied."""
    return _wrapped_forwards(layers, _saving_copies)


def _saving_copies(forward):
    def run(*args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(_copy_if_differentiable, _identity):
            return forward(*args, **kwargs)
    return run


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
        with torch.autograd.graph.saved_tensors_hooks(_copy_if_differentiable, _identity):
            return patch(*(_clone_tensors(a) for a in args))
    return run


class AttentionWithoutGradient(ReadoutError):
    """An attention kernel or patch returned attention that autograd cannot differentiate."""


ATTENTION_WITHOUT_GRADIENT = (
    "guidance: an attention patch on this model ({name}) returns attention without a gradient, so guidance would "
    "silently lose the attention path; remove that attention patch node from the guided model, or apply it after "
    "readout guidance is done")
GRAD_PASS_KERNELS = ("attention_basic", "attention_pytorch", "attention_xformers")
"""Attention kernels the grad pass keeps: they have a backward and compute the same thing again in a recompute.
Any other (sage, flash and other custom kernels without a backward; sub-quadratic and split attention, which size
their chunks from the free memory of the moment) is replaced by torch's scaled-dot-product attention."""


def _tensor_needs_grad(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.requires_grad


def grad_pass_attention(previous=None):
    """ComfyUI's `optimized_attention_override` for the grad pass: a kernel with a backward in place of the
    session's kernel, under any override the model already carries; raises if attention comes back without a
    gradient."""
    def attention(kernel, *args, **kwargs):
        import comfy.ldm.modules.attention as attention_module

        if getattr(kernel, "__name__", "") not in GRAD_PASS_KERNELS:
            kernel = attention_module.attention_pytorch
        out = kernel(*args, **kwargs) if previous is None else previous(kernel, *args, **kwargs)
        if (torch.is_grad_enabled() and isinstance(out, torch.Tensor) and not out.requires_grad
                and any(_tensor_needs_grad(a) for a in args[:3])):
            name = getattr(previous, "__qualname__", repr(previous))
            raise AttentionWithoutGradient(ATTENTION_WITHOUT_GRADIENT.format(name=name))
        return out
    return attention


def grad_pass_options(transformer_options: dict) -> dict:
    """A copy of transformer_options for the grad pass only: each skip tensor cloned (ControlNet adds into it in
    place), every block patch made autograd-safe, attention on a kernel with a backward."""
    options = dict(transformer_options)
    options["optimized_attention_override"] = grad_pass_attention(options.get("optimized_attention_override"))
    patches = dict(options.get("patches", {}))
    for key in BLOCK_PATCHES:
        if key in patches:
            patches[key] = [_autograd_safe_patch(patch) for patch in patches[key]]
    patches["input_block_patch_after_skip"] = list(patches.get("input_block_patch_after_skip", [])) + [skip_clone_patch]
    options["patches"] = patches
    return options
