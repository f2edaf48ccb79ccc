"""Training losses per head kind."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..targets.relative import sample_points

APPEARANCE_MARGIN = 0.5
CORRESPONDENCE_TEMPERATURE = 0.07
"""The official training's temperature (its logit scale starts at 1 / 0.07, as in CLIP)."""


def point_cells(points: torch.Tensor, image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Flat index in an (h, w) feature grid of the cell under each (x, y) image pixel."""
    (height, width), (rows, cols) = image_size, grid
    col = ((points[:, 0] + 0.5) / width * cols).floor().clamp(0, cols - 1)
    row = ((points[:, 1] + 0.5) / height * rows).floor().clamp(0, rows - 1)
    return (row * cols + col).long()


def _match_logits(source: torch.Tensor, points: torch.Tensor, other: torch.Tensor,
                  image_size: tuple[int, int]) -> torch.Tensor:
    """(P, h*w) cosine similarities between the source features at points and every position of `other`."""
    query = F.normalize(sample_points(source[None], points.to(source.device), image_size)[0].T, dim=-1)
    return query @ F.normalize(other.flatten(1), dim=0)


def correspondence_loss(features_a: torch.Tensor, features_b: torch.Tensor, points_a: list[torch.Tensor],
                        points_b: list[torch.Tensor], image_size: tuple[int, int],
                        temperature: float = CORRESPONDENCE_TEMPERATURE) -> torch.Tensor:
    """Symmetric cross entropy: each point's feature in one image should be most similar (softmax over all
    positions of the other image, cosine / temperature) at its matched point's cell."""
    losses = []
    for fa, fb, pa, pb in zip(features_a, features_b, points_a, points_b):
        grid = tuple(fa.shape[-2:])
        cells_a = point_cells(pa, image_size, grid).to(fa.device)
        cells_b = point_cells(pb, image_size, grid).to(fa.device)
        a_to_b = F.cross_entropy(_match_logits(fa, pa, fb, image_size) / temperature, cells_b)
        b_to_a = F.cross_entropy(_match_logits(fb, pb, fa, image_size) / temperature, cells_a)
        losses.append(0.5 * (a_to_b + b_to_a))
    return torch.stack(losses).mean()


def appearance_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over pixels of the cosine distance between two (B, C, H, W) feature maps."""
    return (1 - F.cosine_similarity(a, b, dim=1)).flatten(1).mean(dim=1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = APPEARANCE_MARGIN) -> torch.Tensor:
    """Hinge: the positive must be closer to the anchor than the negative by `margin` (cosine distance), summed
    over the batch as in the official training."""
    return F.relu(appearance_distance(anchor, positive) - appearance_distance(anchor, negative) + margin).sum()
