"""The official code's guidance losses, for rule `official`.

Spatial: plain per-pixel MSE (no balancing of drawn and empty pixels), after head output and target are mapped
from the head's control range into the current latent's [min, max], times the spatial loss rescale 0.5.
Appearance: mean cosine distance times (latent max - latent min)^2. Drag: the correspondence loss with each
point floored to the feature cell under it. `width` is the current VP latent's max - min (a detached tensor).
"""
from __future__ import annotations

import torch

from .relative import AppearanceTarget, CorrespondenceTarget, correspondence_loss
from .spatial import SpatialTarget, resize_map, spatial_map_loss

SPATIAL_LOSS_RESCALE = 0.5
"""`loss_rescale` of the official spatial config; appearance and correspondence use 1."""


def cell_points(features: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Feature vectors (B, C, P) of the cells under image-pixel points (P, 2: x, y), indices floored."""
    height, width = image_size
    rows = (points[:, 1] * features.shape[-2] / height).floor().long()
    cols = (points[:, 0] * features.shape[-1] / width).floor().long()
    return features[:, :, rows, cols]


def official_spatial_loss(target: SpatialTarget, readout: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Per sample: 0.5 * ((latent range) / (control range))^2 * plain MSE, inside the target's mask if any."""
    low, high = target.head.config.control_range
    mask = None if target.mask is None else resize_map(target.mask, readout.shape[-2:]).to(readout)
    mse = spatial_map_loss(readout, target.image, (low, high), sparse=False, mask=mask)
    return SPATIAL_LOSS_RESCALE * (width / (high - low)) ** 2 * mse


def official_loss(target, edited: torch.Tensor, reference: torch.Tensor | None, width: torch.Tensor) -> torch.Tensor:
    """The official per-sample loss of one target (edited readout; reference readout for relative targets)."""
    if isinstance(target, SpatialTarget):
        return official_spatial_loss(target, edited, width)
    if isinstance(target, AppearanceTarget):
        return target.loss(edited, reference) * width ** 2
    if isinstance(target, CorrespondenceTarget):
        return correspondence_loss(reference, edited, list(target.pairs), target.image_size, sample=cell_points)
    raise ValueError(f"rule: official has no loss for {target.label}; the official code has only spatial, "
                     "appearance and drag guidance: use rule fast")
