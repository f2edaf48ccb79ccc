"""Cross-attention probabilities for chosen prompt tokens, captured in a model call (the backbone picks the layers).

ComfyUI's attention kernels never return probabilities, so they are recomputed from the layer's own query and
key projections (hooks on `to_q` / `to_k`, which both the plain path and attention replacement patches call);
only the requested token columns are kept, with autograd intact.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class AttentionStore:
    """Per layer: (B, N, K) probabilities of N image positions attending to K chosen tokens (mean over heads); a
    negative token index counts from the conditioning's end."""

    def __init__(self, token_indices: list[int]) -> None:
        self.token_indices = token_indices
        self.maps: list[torch.Tensor] = []
        self._queries: dict[int, torch.Tensor] = {}
        self._grid: torch.Tensor | None = None

    def query_hook(self, module: nn.Module, args, output: torch.Tensor) -> None:
        self._queries[id(module)] = output

    def key_hook(self, attention: nn.Module, output: torch.Tensor) -> None:
        query = self._queries.pop(id(attention.to_q), None)
        if query is None:
            return
        batch, tokens = output.shape[0], output.shape[1]
        heads = attention.heads
        q = query.reshape(query.shape[0], query.shape[1], heads, -1).transpose(1, 2)
        self.add(q, output.reshape(batch, tokens, heads, -1).transpose(1, 2))

    def add(self, queries: torch.Tensor, keys: torch.Tensor) -> None:
        """One layer's maps from its image queries (B, heads, N, d) and text keys (B or 1, heads, tokens, d): each
        position's softmax over the text tokens, the chosen tokens' columns, the mean over heads."""
        outside = [t for t in self.token_indices if not -keys.shape[2] <= t < keys.shape[2]]
        if outside:
            raise ValueError(f"self-guidance: token {outside[0]} is outside the {keys.shape[2]} tokens of the "
                             "conditioning: encode the prompt with the CLIP whose tokens you picked")
        if keys.shape[0] != queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1, -1)
        scores = (queries.float() @ keys.float().transpose(-1, -2)) / math.sqrt(queries.shape[-1])
        probs = scores.softmax(dim=-1)[..., self.token_indices]
        self.maps.append(probs.mean(dim=1))

    def word_maps(self, tokens: tuple[int, ...], height: int, width: int) -> torch.Tensor:
        """(B, 1, h, w): the mean map of these tokens (all captured) for a latent of height x width."""
        if self._grid is None:
            self._grid = self.token_maps(height, width)
        columns = [self.token_indices.index(token) for token in tokens]
        return self._grid[:, columns].mean(dim=1, keepdim=True)

    def token_maps(self, height: int, width: int) -> torch.Tensor:
        """(B, K, h, w): each layer's maps laid out on its grid (aspect of the latent), resized to the largest
        grid and averaged over layers."""
        if not self.maps:
            raise RuntimeError("self-guidance: no cross-attention layer ran in this model call")
        grids = []
        for probs in self.maps:
            scale = math.sqrt(height * width / probs.shape[1])
            rows, cols = round(height / scale), round(width / scale)
            grids.append(probs.transpose(1, 2).reshape(probs.shape[0], probs.shape[2], rows, cols))
        size = max((grid.shape[-2:] for grid in grids), key=lambda hw: hw[0] * hw[1])
        return torch.stack([F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)
                            if grid.shape[-2:] != size else grid for grid in grids]).mean(dim=0)


@contextmanager
def capture_cross_attention(layers: list[nn.Module], token_indices: list[int]) -> Iterator[AttentionStore]:
    """Hooks on each cross-attention layer's query and key projections for one model call; removed on exit."""
    store = AttentionStore(sorted(set(token_indices)))
    handles = []
    try:
        for attention in layers:
            handles.append(attention.to_q.register_forward_hook(store.query_hook))
            handles.append(attention.to_k.register_forward_hook(
                lambda module, args, output, attention=attention: store.key_hook(attention, output)))
        yield store
    finally:
        for handle in handles:
            handle.remove()
