"""Spatial targets: a pose, depth or edge map the head's readout should become, and the map losses."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..heads.head_model import HeadModel
from .base import HeadTarget, Score, StepWindow

SPATIAL_LOSS_RESCALE = 0.5
"""`loss_rescale` of the official spatial config (appearance and correspondence use 1)."""


@dataclass(frozen=True)
class SpatialTarget(HeadTarget):
    """A pose/depth/edge map (B or 1, 3, H, W) in [0, 1] the spatial head's readout should match."""

    head: HeadModel
    image: torch.Tensor
    weight: float
    window: StepWindow
    mask: torch.Tensor | None = None
    has_official_loss = True

    @property
    def label(self) -> str:
        return f"{self.head.config.kind} ({self.head.name})"

    def check_latent_size(self, latent_size: tuple[int, int], latent_scale: int) -> None:
        """The mask must have the latent's aspect (the target map is resized to any size, as its tooltip says)."""
        if self.mask is not None:
            check_aspect(tuple(self.mask.shape[-2:]), latent_size, "mask", latent_scale)

    def _mask_for(self, readout: torch.Tensor) -> torch.Tensor | None:
        if self.mask is None:
            return None
        return resize_map(per_latent(self.mask, readout.shape[0], "mask"), readout.shape[-2:]).to(readout)

    def loss(self, edited: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        config = self.head.config
        image = per_latent(self.image, edited.shape[0], "target_image")
        return spatial_map_loss(edited, image, config.control_range, config.sparse_loss, self._mask_for(edited))

    def official_loss(self, edited: torch.Tensor, reference: torch.Tensor | None, width: torch.Tensor) -> torch.Tensor:
        """Per sample: 0.5 * ((latent range) / (control range))^2 * plain per-pixel MSE (no balancing of drawn and
        empty pixels), inside the mask if any."""
        low, high = self.head.config.control_range
        image = per_latent(self.image, edited.shape[0], "target_image")
        mse = spatial_map_loss(edited, image, (low, high), sparse=False, mask=self._mask_for(edited))
        return SPATIAL_LOSS_RESCALE * (width / (high - low)) ** 2 * mse

    def scores(self, readout: torch.Tensor, reference: torch.Tensor | None) -> list[Score]:
        return [Score(f"{self.head.config.kind} loss", float(self.loss(readout).mean()), False)]


def per_latent(maps: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """A batch of maps for a batch of latents: one map is shared by every latent, N maps go one per latent."""
    if maps.shape[0] not in (1, batch):
        raise ValueError(f"{name}: {maps.shape[0]} maps for a batch of {batch} latents; connect one map for the "
                         f"whole batch or one per latent ({batch})")
    return maps


def check_aspect(size: tuple[int, int], latent_size: tuple[int, int], name: str, latent_scale: int) -> None:
    """Refuse a (height, width) map whose aspect differs from the latent's by more than one latent cell (the
    rounding of an image to whole cells): resizing it to the latent would stretch it. The message gives the latent
    in pixels, `latent_scale` a cell."""
    height, width = size
    rows, cols = latent_size
    if abs(height * cols / width - rows) <= 1 and abs(width * rows / height - cols) <= 1:
        return
    raise ValueError(f"{name}: it is {width}x{height}, another aspect ratio than the {cols * latent_scale}x"
                     f"{rows * latent_scale} px latent, and would be stretched to it; crop or pad it to the latent's "
                     "aspect, or size the latent like it")


def spatial_map_loss(readout: torch.Tensor, target: torch.Tensor, control_range: tuple[float, float],
                     sparse: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE between a readout and a [0, 1] map brought to the head's control range (inside `mask`);
    sparse maps (pose, edge) weigh empty and drawn pixels equally, as in the paper. Sampler and trainer share it."""
    low, high = control_range
    target = resize_map(target, readout.shape[-2:]).to(readout) * (high - low) + low
    error = (readout - target).pow(2).mean(dim=1, keepdim=True)
    weights = torch.ones_like(error[:1]) if mask is None else mask
    if sparse:
        drawn = (target > low + 0.05 * (high - low)).any(dim=1, keepdim=True).to(readout)
        return 0.5 * masked_mean(error, weights * drawn) + 0.5 * masked_mean(error, weights * (1 - drawn))
    return masked_mean(error, weights)


def resize_map(image: torch.Tensor, size) -> torch.Tensor:
    """Resize a (B, C, H, W) map to the readout's size (area average when shrinking)."""
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    mode = "area" if image.shape[-2] >= size[0] and image.shape[-1] >= size[1] else "bilinear"
    return F.interpolate(image.float(), size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted mean of (B, 1, H, W) values; 0 where the weights are all zero."""
    weights = weights.expand_as(values)
    return (values * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(1e-8)
