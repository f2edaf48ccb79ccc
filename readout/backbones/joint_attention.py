"""Image-query x text-key attention of a DiT's joint attention, captured in a model call for Self-Guidance.

A joint block attends over text and image tokens together; Self-Guidance reads, for each image token, its softmax
over the text tokens alone (how the image position divides its attention among the words, as a UNet's
cross-attention does), from the block's own normalized queries and keys (Flux: after its rotary embedding). Hooks
sit on the modules that produce them (Flux's QKNorm, MMDiT's ln_q / ln_k), which every attention path calls.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .cross_attention import AttentionStore


@dataclass
class AttentionTap:
    """Where one block's image queries and text keys come from.

    `queries` / `keys`: the modules whose outputs hold them, and how to take them from those outputs (B, heads, N or
    tokens, d); `rotary`: the module whose call carries the rotary embedding of the positions, if one applies to
    queries and keys, and `take_pe` how to take it from that call's (args, kwargs) (Flux: the block's `pe` keyword)."""

    queries: nn.Module
    take_queries: Callable
    keys: nn.Module
    take_keys: Callable
    rotary: nn.Module | None = None
    take_pe: Callable[[tuple, dict], torch.Tensor | None] = lambda _args, kwargs: kwargs.get("pe")


class _BlockReading:
    """One block call's pieces, added to the store once both queries and keys have arrived."""

    def __init__(self, tap: AttentionTap, store: AttentionStore, rotate: Callable | None) -> None:
        self.tap, self.store, self.rotate = tap, store, rotate
        self.queries = self.keys = self.pe = None

    def take_pe(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.pe = self.tap.take_pe(args, kwargs)

    def take(self, name: str, output) -> None:
        setattr(self, name, (self.tap.take_queries if name == "queries" else self.tap.take_keys)(output))
        if self.queries is None or self.keys is None:
            return
        queries, keys = self.queries, self.keys
        self.queries = self.keys = None
        if self.rotate is not None and self.pe is not None:
            queries, keys = self.rotate(queries, keys, self.pe)
        self.store.add(queries, keys)


@contextmanager
def capture_joint_attention(taps: list[AttentionTap], token_indices: list[int],
                            rotate: Callable | None = None) -> Iterator[AttentionStore]:
    """Hooks on each tap for one model call (removed on exit); `rotate(queries, keys, pe)` applies the rotary
    embedding of the block's positions."""
    store = AttentionStore(sorted(set(token_indices)))
    handles = []
    try:
        for tap in taps:
            reading = _BlockReading(tap, store, rotate)
            if tap.rotary is not None:
                handles.append(tap.rotary.register_forward_pre_hook(reading.take_pe, with_kwargs=True))
            handles.append(tap.queries.register_forward_hook(
                lambda _m, _a, output, reading=reading: reading.take("queries", output)))
            handles.append(tap.keys.register_forward_hook(
                lambda _m, _a, output, reading=reading: reading.take("keys", output)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def rotated(queries: torch.Tensor, keys: torch.Tensor, positions: tuple[slice, slice],
            pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's rotary embedding on image queries and text keys at their positions in the joint sequence."""
    from comfy.ldm.flux.math import apply_rope1

    image, text = positions
    return apply_rope1(queries, pe[:, :, image]), apply_rope1(keys, pe[:, :, text])
