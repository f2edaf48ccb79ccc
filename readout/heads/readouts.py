"""Readouts: what a head sees in an image (READOUT), and how it is shown as an IMAGE."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .architecture import HeadConfig


@dataclass(frozen=True)
class Readout:
    """A head's raw output for a batch of images, with what is needed to use it as a target."""

    tensor: torch.Tensor
    config: HeadConfig
    head_name: str
    timestep: int
    image_size: tuple[int, int]


def spatial_to_unit(readout: torch.Tensor, control_range: tuple[float, float]) -> torch.Tensor:
    """Map a spatial readout from the head's control range to [0, 1], like a ControlNet control image."""
    low, high = control_range
    return ((readout.float() - low) / (high - low)).clamp(0.0, 1.0)


def pca_colors(features: torch.Tensor) -> torch.Tensor:
    """First three principal components of a (B, C, H, W) feature map, each scaled to [0, 1], as (B, 3, H, W)."""
    b, c, h, w = features.shape
    flat = features.float().permute(0, 2, 3, 1).reshape(-1, c)
    centered = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.pca_lowrank(centered, q=min(3, c, centered.shape[0]), center=False)
    comps = centered @ v
    if comps.shape[1] < 3:
        comps = F.pad(comps, (0, 3 - comps.shape[1]))
    low, high = comps.min(dim=0).values, comps.max(dim=0).values
    comps = (comps - low) / (high - low).clamp_min(1e-8)
    return comps.reshape(b, h, w, 3).permute(0, 3, 1, 2)


def render_readout(readout: Readout) -> torch.Tensor:
    """The readout as a ComfyUI IMAGE (B, H, W, 3) in [0, 1] at the source image's size."""
    tensor = readout.tensor
    unit = spatial_to_unit(tensor, readout.config.control_range) if readout.config.is_spatial else pca_colors(tensor)
    unit = F.interpolate(unit, size=readout.image_size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return unit.permute(0, 2, 3, 1).contiguous().cpu()
