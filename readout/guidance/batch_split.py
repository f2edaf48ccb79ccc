"""Splitting one UNet call by CFG chunk: chunks that feed the loss run with grad, the others run as before.

A guided step then pays forward plus backward only for the loss branch (about 2x an unguided CFG step
instead of 3x when both halves go through autograd).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PER_CHUNK_OPTIONS = ("cond_or_uncond", "uuids")
PER_ROW_OPTIONS = ("sigmas",)


@dataclass(frozen=True)
class BatchSplit:
    """A batch of `num_chunks` equal CFG chunks, and which of them (by position) need gradients."""

    batch: int
    num_chunks: int
    grad_chunks: tuple[int, ...]

    @property
    def chunk_size(self) -> int:
        return self.batch // self.num_chunks

    @property
    def rest_chunks(self) -> tuple[int, ...]:
        """Chunks that only need the UNet output."""
        return tuple(i for i in range(self.num_chunks) if i not in self.grad_chunks)

    def rows(self, chunks: tuple[int, ...]) -> torch.Tensor:
        """Batch row indices of these chunks, in order."""
        size = self.chunk_size
        return torch.cat([torch.arange(i * size, (i + 1) * size) for i in chunks])

    def take(self, value: Any, chunks: tuple[int, ...]) -> Any:
        """The rows of these chunks from every batch-first tensor in nested dicts/lists/tuples (new containers:
        the UNet pops ControlNet's lists, so each call gets its own); all chunks: the value itself."""
        if chunks == tuple(range(self.num_chunks)):
            return value
        if isinstance(value, torch.Tensor):
            if value.ndim and value.shape[0] == self.batch:
                return value[self.rows(chunks).to(value.device)]
            return value
        if isinstance(value, dict):
            return {key: self.take(item, chunks) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.take(item, chunks) for item in value)
        return value

    def take_options(self, transformer_options: dict, chunks: tuple[int, ...]) -> dict:
        """transformer_options for a call on these chunks: per-chunk roles and per-row sigmas cut to match."""
        options = dict(transformer_options)
        if chunks == tuple(range(self.num_chunks)):
            return options
        for key in PER_CHUNK_OPTIONS:
            if isinstance(options.get(key), list) and len(options[key]) == self.num_chunks:
                options[key] = [options[key][i] for i in chunks]
        for key in PER_ROW_OPTIONS:
            if key in options:
                options[key] = self.take(options[key], chunks)
        return options

    def merge(self, parts: dict[tuple[int, ...], torch.Tensor]) -> torch.Tensor:
        """One output batch from the outputs of calls on disjoint chunk sets."""
        first = next(iter(parts.values()))
        out = first.new_empty((self.batch, *first.shape[1:]))
        for chunks, part in parts.items():
            out[self.rows(chunks).to(out.device)] = part.to(out.dtype)
        return out
