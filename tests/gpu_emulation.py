"""ComfyUI's GPU memory paths, emulated on the CPU (where its cast returns the parameter itself): weights cast through
a cache made under inference mode (dynamic VRAM's resident weights), through a two-slot cast buffer that later
layers overwrite (offloaded weights), attention kernels without a backward, a device check as strict as CUDA's."""
from __future__ import annotations

from typing import Callable

import torch
from torch.overrides import TorchFunctionMode


def _cast_dtypes(input, dtype, bias_dtype) -> tuple:
    dtype = dtype or (input.dtype if input is not None else None)
    return dtype, bias_dtype or dtype


def _with_functions(s, weight, bias, offloadable: bool):
    """What ComfyUI's cast does after fetching: the layer's weight and bias functions (LoRA on the fly, ours)."""
    for f in s.weight_function:
        weight = f(weight)
    if bias is not None:
        for f in s.bias_function:
            bias = f(bias)
    return (weight, bias, None) if offloadable else (weight, bias)


def cached_under_inference_mode(s, input=None, dtype=None, device=None, bias_dtype=None, offloadable=False, **_):
    """Dynamic VRAM's resident weights: one cast copy per layer, made the first time, under inference mode."""
    dtype, bias_dtype = _cast_dtypes(input, dtype, bias_dtype)
    if getattr(s, "_emulated_cast", None) is None:
        with torch.inference_mode():
            s._emulated_cast = (s.weight.to(dtype, copy=True),
                                None if s.bias is None else s.bias.to(bias_dtype, copy=True))
    weight, bias = s._emulated_cast
    return _with_functions(s, weight, bias, offloadable)


class RotatingCastBuffer:
    """Offloaded weights: each cast writes into the next of two slots and returns views of it, so the cast of the
    layer after next overwrites what an earlier layer's backward would read."""

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = [None, None]
        self.turn = 0

    def _slot(self, numel: int) -> torch.Tensor:
        slot = self.slots[self.turn]
        if slot is None or slot.numel() < numel:
            slot = self.slots[self.turn] = torch.empty(numel)
        self.turn = 1 - self.turn
        return slot

    def __call__(self, s, input=None, dtype=None, device=None, bias_dtype=None, offloadable=False, **_):
        dtype, bias_dtype = _cast_dtypes(input, dtype, bias_dtype)
        weight_numel = s.weight.numel()
        bias_numel = 0 if s.bias is None else s.bias.numel()
        slot = self._slot(weight_numel + bias_numel)
        weight = slot[:weight_numel].view(s.weight.shape)
        weight.copy_(s.weight)
        bias = None
        if s.bias is not None:
            bias = slot[weight_numel:weight_numel + bias_numel].view(s.bias.shape)
            bias.copy_(s.bias)
        return _with_functions(s, weight.to(dtype), None if bias is None else bias.to(bias_dtype), offloadable)


def cast_every_layer(monkeypatch, model_patcher, cast: Callable) -> None:
    """Route every ComfyUI layer of the model's UNet through `cast`, as ComfyUI does for offloaded weights (undone
    by the monkeypatch)."""
    import comfy.ops

    monkeypatch.setattr(comfy.ops, "cast_bias_weight", cast)
    for module in model_patcher.model.diffusion_model.modules():
        if hasattr(module, "comfy_cast_weights"):
            monkeypatch.setattr(module, "comfy_cast_weights", True)
            monkeypatch.setattr(module, "_emulated_cast", None, raising=False)


class _BackwardRefused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return q.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this attention kernel has no backward")


def attention_kernel(kind: str) -> Callable:
    """An attention kernel as ComfyUI registers one (wrapped by wrap_attn): "no_backward" computes attention right
    but raises in the backward (flash attention's custom op); "no_grad" returns it without gradient history
    (sage attention)."""
    import comfy.ldm.modules.attention as attention

    plain = attention.attention_basic.__wrapped__

    def attention_no_grad(q, k, v, heads, *args, **kwargs):
        with torch.no_grad():
            return plain(q, k, v, heads, *args, **kwargs)

    def attention_no_backward(q, k, v, heads, *args, **kwargs):
        with torch.no_grad():
            out = plain(q, k, v, heads, *args, **kwargs)
        return _attach_refusing_backward(out, q, k, v)

    return attention.wrap_attn({"no_grad": attention_no_grad, "no_backward": attention_no_backward}[kind])


def _attach_refusing_backward(out: torch.Tensor, q, k, v) -> torch.Tensor:
    """`out`'s values, with a gradient path to q, k, v whose backward raises."""
    return out + _BackwardRefused.apply(q, k, v).to(out.dtype)


BOUND_ATTENTION = (("comfy.ldm.flux.math", "optimized_attention"), ("comfy.ldm.lumina.model", "optimized_attention_masked"),
                   ("comfy.ldm.qwen_image.model", "optimized_attention_masked"),
                   ("comfy.ldm.krea2.model", "optimized_attention_masked"))
"""DiT modules that bind ComfyUI's attention function at import (those this ComfyUI has)."""


def use_attention_kernel(monkeypatch, kernel: Callable) -> None:
    """Make `kernel` ComfyUI's attention for the UNet and the DiTs, where they bound it at import too."""
    import importlib

    import comfy.ldm.modules.attention as attention

    for name in ("optimized_attention", "optimized_attention_masked"):
        monkeypatch.setattr(attention, name, kernel)
    for module_name, name in BOUND_ATTENTION:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        monkeypatch.setattr(module, name, kernel)


class StrictDevices(TorchFunctionMode):
    """Refuse an op whose tensors sit on different devices, as CUDA does (the CPU lets meta and CPU tensors mix)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        if len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found {sorted(map(str, devices))}")
        return func(*args, **kwargs)
