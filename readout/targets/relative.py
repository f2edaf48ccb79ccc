"""Relative targets: compare the edited branch's readout with the reference branch's (drag, appearance, identity)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..heads.head_model import HeadModel
from .points import DragPair
from .reference import InvertedReference
from .base import HeadTarget, Score, StepWindow
from .spatial import check_aspect, masked_mean, resize_map


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity mapped to [0, 1] along the channel dimension."""
    return (F.cosine_similarity(a, b, dim=1) + 1) / 2


def sample_points(features: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear feature vectors (B, C, P) at image-pixel points (P, 2: x, y) of an image of image_size (H, W)."""
    height, width = image_size
    grid = torch.stack([(points[:, 0] + 0.5) / width * 2 - 1, (points[:, 1] + 0.5) / height * 2 - 1], dim=-1)
    grid = grid.to(features).expand(features.shape[0], 1, -1, 2)
    return F.grid_sample(features, grid, mode="bilinear", align_corners=False)[:, :, 0]


def cell_points(features: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Feature vectors (B, C, P) of the cells under image-pixel points (P, 2: x, y), indices floored: how the
    official code reads drag points."""
    height, width = image_size
    rows = (points[:, 1] * features.shape[-2] / height).floor().long()
    cols = (points[:, 0] * features.shape[-1] / width).floor().long()
    return features[:, :, rows, cols]


PointSampler = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]
"""(features (B, C, h, w), points (P, 2: x, y) in image pixels, image size (H, W)) -> vectors (B, C, P)."""


def correspondence_loss(reference: torch.Tensor, edited: torch.Tensor, pairs: list[DragPair],
                        image_size: tuple[int, int], sample: PointSampler = sample_points) -> torch.Tensor:
    """Per sample: -similarity(reference at sources, edited at targets) pulls the content to the targets,
    +similarity(reference at sources, edited at sources) discourages a ghost left behind (half each).
    `sample` reads the feature vectors at the points (bilinear by default)."""
    sources = torch.tensor([p.source for p in pairs], device=edited.device)
    targets = torch.tensor([p.target for p in pairs], device=edited.device)
    anchor = sample(reference, sources, image_size)
    pulled = similarity(anchor, sample(edited, targets, image_size)).mean(dim=1)
    ghost = similarity(anchor, sample(edited, sources, image_size)).mean(dim=1)
    return 0.5 * -pulled + 0.5 * ghost


def _crop_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a (1, 1, h, w) mask's non-zero region; the whole map when empty."""
    ys, xs = torch.nonzero(mask[0, 0] > 0.5, as_tuple=True)
    if len(ys) == 0:
        return 0, mask.shape[-2], 0, mask.shape[-1]
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def _crop(features: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = box
    return F.interpolate(features[:, :, top:bottom, left:right], size=features.shape[-2:], mode="bilinear",
                         align_corners=False)


@dataclass(frozen=True)
class CorrespondenceTarget(HeadTarget):
    """Drag: move what is at each source point of the reference to its target point in the edited image."""

    head: HeadModel
    pairs: tuple[DragPair, ...]
    image_size: tuple[int, int]
    weight: float
    window: StepWindow
    reference: InvertedReference | None = None
    relative = True
    shares_reference_noise = True
    has_official_loss = True

    def drag_points(self) -> tuple[tuple[DragPair, ...], tuple[int, int]]:
        return self.pairs, self.image_size

    @property
    def label(self) -> str:
        return f"drag {len(self.pairs)} point(s) ({self.head.name})"

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    def check_latent_size(self, latent_size: tuple[int, int], latent_scale: int) -> None:
        """The points' image must have the latent's aspect, or the points would land elsewhere than drawn."""
        check_aspect(self.image_size, latent_size, "reference_image", latent_scale)

    def loss(self, edited: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        return correspondence_loss(reference, edited, list(self.pairs), self.image_size)

    def official_loss(self, edited: torch.Tensor, reference: torch.Tensor | None, width: torch.Tensor) -> torch.Tensor:
        """The correspondence loss with each point floored to the feature cell under it."""
        return correspondence_loss(reference, edited, list(self.pairs), self.image_size, sample=cell_points)

    def scores(self, readout: torch.Tensor, reference: torch.Tensor | None) -> list[Score]:
        """Per drag pair: similarity in [0, 1] of the reference's features at the source and the readout's at the
        target."""
        sources = torch.tensor([p.source for p in self.pairs])
        goals = torch.tensor([p.target for p in self.pairs])
        anchor = sample_points(reference.float(), sources, self.image_size)
        moved = sample_points(readout.float(), goals, self.image_size)
        values = similarity(anchor, moved).mean(dim=0).tolist()
        return [Score(f"similarity at target {i + 1}", v, True) for i, v in enumerate(values)]


@dataclass(frozen=True)
class AppearanceTarget(HeadTarget):
    """Keep the reference's appearance: mean cosine distance of the two readouts, pixel by pixel.

    `mask` limits the comparison to a region (and `invert_mask` to outside it); with `crop` the mask's
    bounding box is cut from both readouts and compared at full size (identity on a face region)."""

    head: HeadModel
    weight: float
    window: StepWindow
    mask: torch.Tensor | None = None
    invert_mask: bool = False
    crop: bool = False
    reference: InvertedReference | None = None
    role: str = "appearance"
    shares_reference_noise: bool = False
    mask_input: str = "mask"
    relative = True
    has_official_loss = True

    @property
    def label(self) -> str:
        return f"{self.role} ({self.head.name})"

    def check_latent_size(self, latent_size: tuple[int, int], latent_scale: int) -> None:
        """The mask must have the latent's aspect, or it would mark other regions than painted."""
        if self.mask is not None:
            check_aspect(tuple(self.mask.shape[-2:]), latent_size, self.mask_input, latent_scale)

    def loss(self, edited: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        weights = torch.ones_like(edited[:1, :1])
        if self.mask is not None:
            mask = resize_map(self.mask[:1], edited.shape[-2:]).to(edited)
            if self.crop:
                box = _crop_box(mask)
                edited, reference = _crop(edited, box), _crop(reference, box)
            else:
                weights = 1 - mask if self.invert_mask else mask
        distance = (1 - F.cosine_similarity(edited, reference, dim=1))[:, None]
        return masked_mean(distance, weights)

    def official_loss(self, edited: torch.Tensor, reference: torch.Tensor | None, width: torch.Tensor) -> torch.Tensor:
        """The mean cosine distance times (latent max - latent min)^2."""
        return self.loss(edited, reference) * width ** 2

    def scores(self, readout: torch.Tensor, reference: torch.Tensor | None) -> list[Score]:
        return [Score(f"{self.role} distance", float(self.loss(readout, reference).mean()), False)]
