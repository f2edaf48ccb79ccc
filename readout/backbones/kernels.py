"""ComfyUI's switch between its fused inference kernels and its autograd-capable ones."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def differentiable_kernels() -> Iterator[None]:
    """ComfyUI's own switch to its autograd-capable kernels (model_management.in_training, ComfyUI 0.33+: e.g. Flux's
    rotary embedding, whose fused kernel has no backward; NextDiT's fused norm and rotary, which skip its q_norm and
    k_norm modules): on for the grad pass and for reading attention."""
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
