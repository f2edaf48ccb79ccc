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


def pca_colors(features: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """First three principal components of a (B, C, H, W) feature map, each scaled to [0, 1], as (B, 3, H, W);
    with `basis` (features of the same head) its components and range are used, so colours mean the same."""
    b, c, h, w = features.shape
    fit = _pixels(features if basis is None else basis)
    mean = fit.mean(dim=0, keepdim=True)
    _, _, v = torch.pca_lowrank(fit - mean, q=min(3, c, fit.shape[0]), center=False)
    if v.shape[1] < 3:
        v = F.pad(v, (0, 3 - v.shape[1]))
    fitted = (fit - mean) @ v
    low, high = fitted.min(dim=0).values, fitted.max(dim=0).values
    comps = ((_pixels(features) - mean) @ v - low) / (high - low).clamp_min(1e-8)
    return comps.clamp(0.0, 1.0).reshape(b, h, w, 3).permute(0, 3, 1, 2)


def _pixels(features: torch.Tensor) -> torch.Tensor:
    """(B * H * W, C) feature vectors of a (B, C, H, W) map."""
    return features.float().permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def render_readout(readout: Readout, colors_from: Readout | None = None) -> torch.Tensor:
    """The readout as a ComfyUI IMAGE (B, H, W, 3) in [0, 1] at the source image's size; relative readouts are
    coloured by their principal components (those of `colors_from` when given)."""
    tensor = readout.tensor
    if readout.config.is_spatial:
        unit = spatial_to_unit(tensor, readout.config.control_range)
    else:
        unit = pca_colors(tensor, None if colors_from is None else colors_from.tensor.to(tensor.device))
    unit = F.interpolate(unit, size=readout.image_size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return unit.permute(0, 2, 3, 1).contiguous().cpu()
